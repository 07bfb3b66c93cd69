// Command etcd is the reference etcd server (the version pinned in bench/go.mod), built
// from the Go module so that benchmarks race plinth against a known release. It does
// nothing but hand its command line to etcdmain.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
