package harness

import (
	"os/exec"
	"syscall"
)

// killWithParent asks the kernel to SIGKILL cmd's process if benchrun dies first, so
// that a crashed or killed run leaves no server or benchmark tool behind.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
