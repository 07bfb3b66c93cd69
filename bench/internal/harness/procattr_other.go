//go:build !linux

package harness

import "os/exec"

// killWithParent does nothing where the kernel has no parent-death signal.
func killWithParent(*exec.Cmd) {}
