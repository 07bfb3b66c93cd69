// Package lockelect serves etcd's Lock (v3lockpb) and Election
// (v3electionpb) gRPC services on every member, so that etcdctl lock and
// elect, and etcd's gRPC clients of these services, work against plinth.
//
// Both are etcd's client-side recipes (client/v3/concurrency's Mutex and
// Election) run inside the member, as etcd runs them: a lock or a candidacy
// is a key under the name's prefix ("name/" + the lease ID in hex) attached
// to the caller's lease; the holder (the leader) is the key with the lowest
// create revision, and a waiter waits for the key created just before its
// own to be deleted. The key's create revision is a fencing token: a
// transaction comparing it refuses a write from a holder whose key is gone.
//
// The services go through the member's KV and Lease services (so requests
// are validated, replicated and answered as any client's) and wait on the
// member's watch hub; they hold no state of their own between requests, and
// must never change state but through those services.
package lockelect

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinthdb/plinth/internal/watch"
)

// KV is the member's KV service (api.KV).
type KV interface {
	Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error)
	DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error)
	Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error)
}

// Leases is the member's Lease service (api.Lease).
type Leases interface {
	LeaseGrant(ctx context.Context, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error)
}

// Config is what the services are built on.
type Config struct {
	KV     KV
	Leases Leases
	// Hub is the member's watch hub, which waits are made on.
	Hub *watch.Hub
	// FillHeader completes the header of a watch response (ids and term),
	// as the Watch service does.
	FillHeader func(h *pb.ResponseHeader)
}

// defaultSessionTTL is the TTL, in seconds, of the lease granted for a
// request that names none (lease 0), as etcd's concurrency.Session grants.
const defaultSessionTTL = 60

// Errors as etcd's recipes word them. etcd's services answer them, and the
// etcd errors of the KV requests they make, with code Unknown: they reach the
// service through a client, which turns them into plain errors.
var (
	errSessionExpired = errors.New("mutex: session is expired")
	errNotLeader      = errors.New("election: not leader")
	errNoLeader       = errors.New("election: no leader")
	errMissingLeader  = errors.New(`"leader" field must be provided`)
	errLostWatcher    = errors.New("lost watcher waiting for delete")
)

// core holds what both services share.
type core struct{ cfg Config }

// asEtcd turns an error of the KV or Lease service into what etcd's services
// answer for it: an etcd error (rpctypes) keeps its message under code
// Unknown, a cancellation or deadline keeps its code, and any other status
// error is answered as it is.
func asEtcd(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	// The status error itself, without what wraps it.
	var grpcErr interface {
		error
		GRPCStatus() *status.Status
	}
	if errors.As(err, &grpcErr) {
		err = grpcErr
	}
	if e, ok := rpctypes.Error(err).(rpctypes.EtcdError); ok {
		return status.Error(codes.Unknown, e.Error())
	}
	return err
}

// lease returns the lease a request holds its key with: id, or for 0 a
// new lease of defaultSessionTTL, as etcd grants one for such a request.
func (c *core) lease(ctx context.Context, id int64) (int64, error) {
	if id != 0 {
		return id, nil
	}
	resp, err := c.cfg.Leases.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: defaultSessionTTL})
	if err != nil {
		return 0, fmt.Errorf("lockelect: grant a session lease: %w", err)
	}
	return resp.ID, nil
}

// candidateKey is the key a lease holds under prefix.
func candidateKey(prefix []byte, lease int64) []byte {
	return fmt.Appendf(bytes.Clone(prefix), "%x", lease)
}

// prefixEnd is the end of the range of keys that start with prefix.
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0} // every key from prefix on
}

// oldest is the range of the key under prefix with the lowest create
// revision: the holder, or the leader.
func oldest(prefix []byte) *pb.RangeRequest {
	return &pb.RangeRequest{Key: prefix, RangeEnd: prefixEnd(prefix), Limit: 1,
		SortOrder: pb.RangeRequest_ASCEND, SortTarget: pb.RangeRequest_CREATE}
}

func putOp(key, value []byte, lease int64) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: key, Value: value, Lease: lease}}}
}

func rangeOp(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func deleteOp(key []byte) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: key}}}
}

// createdAt compares key's create revision with rev (0: key does not exist).
func createdAt(key []byte, rev int64) *pb.Compare {
	return &pb.Compare{Key: key, Target: pb.Compare_CREATE, Result: pb.Compare_EQUAL,
		TargetUnion: &pb.Compare_CreateRevision{CreateRevision: rev}}
}

// waitPredecessors returns once no key under prefix with a create revision
// at most maxRev is left: each time, it waits for the deletion of the
// youngest of them, the one whose deletion hands over to the caller.
func (c *core) waitPredecessors(ctx context.Context, prefix []byte, maxRev int64) error {
	for {
		resp, err := c.cfg.KV.Range(ctx, &pb.RangeRequest{Key: prefix, RangeEnd: prefixEnd(prefix), Limit: 1,
			SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_CREATE, MaxCreateRevision: maxRev})
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		err = c.watch(ctx, resp.Kvs[0].Key, nil, resp.Header.Revision, func(_ *pb.ResponseHeader, evs []*mvccpb.Event) (bool, error) {
			for _, ev := range evs {
				if ev.Type == mvccpb.DELETE {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return err
		}
	}
}

// errWatchDone stops a watch that its callback is done with.
var errWatchDone = errors.New("lockelect: watch done")

// watch watches [key, end) (just key for a nil end) from revision rev on
// the member's hub and calls each with every response's events, in revision
// order, until each says it is done, fails, or ctx ends. The header each gets
// is filled as the Watch service fills it.
func (c *core) watch(ctx context.Context, key, end []byte, rev int64, each func(h *pb.ResponseHeader, evs []*mvccpb.Event) (done bool, err error)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws := c.cfg.Hub.NewStream()
	defer ws.Close()
	// The request channel is buffered: the create waits there for Run.
	ws.Requests() <- &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
		CreateRequest: &pb.WatchCreateRequest{Key: key, RangeEnd: end, StartRevision: rev}}}
	err := ws.Run(ctx, func(resp *pb.WatchResponse) error {
		switch {
		case resp.Canceled && resp.CompactRevision != 0:
			return rpctypes.ErrGRPCCompacted
		case resp.Canceled:
			return errLostWatcher
		case len(resp.Events) == 0:
			return nil
		}
		rev := resp.Header.Revision
		if c.cfg.FillHeader != nil {
			c.cfg.FillHeader(resp.Header)
		}
		resp.Header.Revision = rev
		done, err := each(resp.Header, resp.Events)
		if err == nil && done {
			err = errWatchDone
		}
		return err
	})
	switch {
	case errors.Is(err, errWatchDone):
		return nil
	case errors.Is(err, watch.ErrStopped):
		return rpctypes.ErrGRPCStopped
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return status.FromContextError(err).Err()
	}
	return err
}
