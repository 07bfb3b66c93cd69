// Command floor serves the do-nothing etcd KV API of package floor, for benchmarks.
//
//	floor --listen 127.0.0.1:2379 --value-size 256
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/plinthdb/plinth/bench/floor"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:2379", "address to serve gRPC on")
	valueSize := flag.Int("value-size", 256, "size of the value that Range returns (0: Range returns no key)")
	flag.Parse()

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "floor: %v\n", err)
		os.Exit(1)
	}
	srv := floor.NewServer(floor.NewKV(*valueSize))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintf(os.Stderr, "floor: %v\n", err)
		os.Exit(1)
	}
}
