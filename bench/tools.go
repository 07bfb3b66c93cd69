//go:build tools

// This file keeps the etcd benchmark tool in go.mod so that benchrun can build it
// with the versions pinned here. It is never compiled into anything.
package bench

import (
	_ "go.etcd.io/etcd/v3/tools/benchmark"
)
