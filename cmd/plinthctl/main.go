// Command plinthctl is the command-line client of plinth.
//
// plinth speaks the etcd v3 API, so plinthctl is built on the real etcd client
// (go.etcd.io/etcd/client/v3) and takes etcdctl's command names, flags, input
// formats, output formats and exit codes: what a hand or a script does with
// etcdctl get/put/del/txn/compaction, endpoint status/health, member
// list/add/remove/update/promote, alarm list/disarm, lock, elect and version
// works the same with plinthctl. Where the two differ it is written down beside the command.
//
// plinthctl never changes the data it prints: keys and values are printed as
// the server sent them (raw bytes in simple output, base64 in JSON, \x escapes
// with --hex). It never retries a write on its own.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
