package floor

import (
	"context"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestFloorWithEtcdClient checks the floor through the real etcd client: puts bump the
// revision, a get returns the key asked for with the fixed value, and what the floor
// does not serve answers Unimplemented.
func TestFloorWithEtcdClient(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(NewKV(16))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{lis.Addr().String()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var last int64
	for i := range 3 {
		resp, err := cli.Put(ctx, "k", "v")
		if err != nil {
			t.Fatal(err)
		}
		if rev := resp.Header.Revision; rev <= last {
			t.Fatalf("put %d: revision %d after %d", i, rev, last)
		}
		last = resp.Header.Revision
		if resp.Header.ClusterId != ClusterID || resp.Header.MemberId != MemberID {
			t.Fatalf("header %v", resp.Header)
		}
	}

	get, err := cli.Get(ctx, "some-key", clientv3.WithSerializable())
	if err != nil {
		t.Fatal(err)
	}
	if get.Header.Revision != last || len(get.Kvs) != 1 || string(get.Kvs[0].Key) != "some-key" || len(get.Kvs[0].Value) != 16 {
		t.Fatalf("get = %+v", get)
	}

	txn, err := cli.Txn(ctx).Then(clientv3.OpPut("a", "1"), clientv3.OpPut("b", "2"), clientv3.OpGet("c")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if !txn.Succeeded || txn.Header.Revision != last+1 || len(txn.Responses) != 3 ||
		txn.Responses[0].GetResponsePut() == nil || len(txn.Responses[2].GetResponseRange().GetKvs()) != 1 {
		t.Fatalf("txn = %+v", txn)
	}
	_, err = cli.Txn(ctx).Then(clientv3.OpDelete("a")).Commit()
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("txn delete: err = %v, want Unimplemented", err)
	}

	_, err = cli.Delete(ctx, "k")
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("delete: err = %v, want Unimplemented", err)
	}

	// What the benchmark tool's lease-keepalive load sends: a grant, then
	// keep-alives each on a stream of its own.
	grant, err := cli.Grant(ctx, 100)
	if err != nil || grant.ID == 0 || grant.TTL != 100 {
		t.Fatalf("grant = %+v, %v", grant, err)
	}
	for range 2 {
		ka, err := cli.KeepAliveOnce(ctx, grant.ID)
		if err != nil || ka.ID != grant.ID || ka.TTL != KeepAliveTTL {
			t.Fatalf("keep-alive = %+v, %v", ka, err)
		}
	}
}

func TestFloorEmptyRange(t *testing.T) {
	kv := NewKV(0)
	resp, err := kv.Range(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 || resp.Count != 0 || resp.Header.Revision != 1 {
		t.Fatalf("range = %+v", resp)
	}
}
