package compat

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Lease service comparisons: the same grants, puts with leases, time-to-live
// questions, keep-alives, lists and revokes against the reference etcd and
// plinth, the answers compared after normalising what must differ:
//
//   - the header's ids and term, as for KV answers (checkHeader);
//   - the ID of a lease the server chose (any positive ID; shown as 1, in
//     keys too);
//   - a remaining TTL, which moves with time: within 2s below the granted
//     TTL it shows as the granted TTL;
//   - the order of a lease's keys and of the lease list, which etcd takes
//     from a map and sorts by expiry: both are sorted.

// leaseSide is one server of a lease comparison.
type leaseSide struct {
	s      *server
	lease  pb.LeaseClient
	chosen int64 // the ID this server chose for a grant of ID 0
}

// id maps the ID steps use for the lease the server chose (1) to it.
func (side *leaseSide) id(id int64) int64 {
	if id == 1 {
		return side.chosen
	}
	return id
}

// leaseStep is one request, sent to each side.
type leaseStep = sideStep[*leaseSide]

// startLeasePair starts a reference etcd and a target whose minimum lease
// TTL equals the reference's (one second: 1.5 election timeouts of 100ms,
// rounded up; the cluster's 250ms timeout rounds up to the same).
func startLeasePair(t *testing.T, topo topology) (ref, tgt *leaseSide) {
	t.Helper()
	refSrv := startEmbedded(t, "etcd")
	var tgtSrv *server
	switch {
	case topo == threeMembers && selftest:
		tgtSrv = startCluster(t, "etcd-selftest", "")
	case topo == threeMembers:
		tgtSrv = startCluster(t, "plinth", targetBin)
	case selftest:
		tgtSrv = startEmbedded(t, "etcd-selftest")
	default:
		tgtSrv = startBinary(t, "plinth", targetBin, "--heartbeat-interval", "10", "--election-timeout", "100")
	}
	side := func(s *server) *leaseSide {
		conn, err := grpc.NewClient("passthrough:///"+s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return &leaseSide{s: s, lease: pb.NewLeaseClient(conn)}
	}
	return side(refSrv), side(tgtSrv)
}

func TestLeases(t *testing.T) { runLeaseSteps(t, oneMember) }

func TestLeasesOnAFollower(t *testing.T) { runLeaseSteps(t, threeMembers) }

func runLeaseSteps(t *testing.T, topo topology) {
	ref, tgt := startLeasePair(t, topo)
	runSideSteps(t, ref, tgt, ref.s.name, tgt.s.name, leaseSteps(), normaliseLease)
}

// normaliseLease renders an answer after normalising it (see the top of the
// file).
func normaliseLease(side *leaseSide, resp proto.Message, err error) (string, []string) {
	if err != nil {
		st := status.Convert(err)
		return fmt.Sprintf("error %s: %s", st.Code(), st.Message()), nil
	}
	resp = proto.Clone(resp)
	var header *pb.ResponseHeader
	switch r := resp.(type) {
	case *pb.LeaseGrantResponse:
		header = r.Header
		if r.ID != 0 && r.ID == side.chosen {
			r.ID = 1
		}
	case *pb.LeaseRevokeResponse:
		header = r.Header
	case *pb.LeaseKeepAliveResponse:
		header = r.Header
	case *pb.LeaseTimeToLiveResponse:
		header = r.Header
		slices.SortFunc(r.Keys, func(a, b []byte) int { return strings.Compare(string(a), string(b)) })
		if r.TTL > 0 && r.TTL <= r.GrantedTTL && r.TTL >= r.GrantedTTL-2 {
			r.TTL = r.GrantedTTL
		}
		if r.ID == side.chosen {
			r.ID = 1
		}
	case *pb.LeaseLeasesResponse:
		header = r.Header
		for _, l := range r.Leases {
			if l.ID == side.chosen {
				l.ID = 1
			}
		}
		slices.SortFunc(r.Leases, func(a, b *pb.LeaseStatus) int {
			switch {
			case a.ID < b.ID:
				return -1
			case a.ID > b.ID:
				return 1
			}
			return 0
		})
	case *pb.RangeResponse:
		header = r.Header
		for _, kv := range r.Kvs {
			if kv.Lease == side.chosen {
				kv.Lease = 1
			}
		}
	case *pb.PutResponse:
		header = r.Header
	case *pb.DeleteRangeResponse:
		header = r.Header
	case *pb.TxnResponse:
		header = r.Header
	}
	var problems []string
	if header == nil {
		problems = append(problems, side.s.name+": response has no header")
	} else {
		problems = side.s.checkHeader(header, true)
	}
	return renderOutcome(outcome{resp: resp}), problems
}

func leaseSteps() []leaseStep {
	grant := func(id, ttl int64) func(ctx context.Context, side *leaseSide) (proto.Message, error) {
		return func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			return side.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl})
		}
	}
	put := func(key string, id int64) func(ctx context.Context, side *leaseSide) (proto.Message, error) {
		return func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			return side.s.kv.Put(ctx, &pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: side.id(id)})
		}
	}
	ttl := func(id int64, keys bool) func(ctx context.Context, side *leaseSide) (proto.Message, error) {
		return func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			return side.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: side.id(id), Keys: keys})
		}
	}
	revoke := func(id int64) func(ctx context.Context, side *leaseSide) (proto.Message, error) {
		return func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			return side.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: side.id(id)})
		}
	}
	keepAlive := func(id int64) func(ctx context.Context, side *leaseSide) (proto.Message, error) {
		return func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			stream, err := side.lease.LeaseKeepAlive(ctx)
			if err != nil {
				return nil, err
			}
			if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				return nil, err
			}
			resp, err := stream.Recv()
			_ = stream.CloseSend()
			return resp, err
		}
	}
	all := func(ctx context.Context, side *leaseSide) (proto.Message, error) {
		return side.s.kv.Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
	}
	list := func(ctx context.Context, side *leaseSide) (proto.Message, error) {
		return side.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	}
	return []leaseStep{
		{"grant 100", "ok", grant(100, 60)},
		{"grant 100 again", "lease already exists", grant(100, 60)},
		{"grant over the maximum TTL", "too large lease TTL", grant(101, 9_000_000_001)},
		{"grant at the maximum TTL", "ok", grant(103, 9_000_000_000)},
		{"grant with a negative ID", "ok", grant(-5, 30)},
		{"grant with a negative TTL", "ok", grant(104, -7)},
		{"revoke 104", "ok", revoke(104)},
		{"grant with an ID the server chooses", "ok", func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			resp, err := side.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 30})
			if err == nil {
				side.chosen = resp.ID
			}
			return resp, err
		}},
		{"put a on 100", "ok", put("a", 100)},
		{"put b on 100", "ok", put("b", 100)},
		{"put c on -5", "ok", put("c", -5)},
		{"put e on the chosen lease", "ok", put("e", 1)},
		{"put on an unknown lease", "requested lease not found", put("d", 999)},
		{"txn put on an unknown lease", "requested lease not found", func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			return side.s.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("d"), Lease: 998}}},
			}})
		}},
		{"time to live of 100 with keys", "ok", ttl(100, true)},
		{"time to live of 100 without keys", "ok", ttl(100, false)},
		{"time to live of an unknown lease", "ok", ttl(999, true)},
		{"time to live of lease 0", "ok", ttl(0, false)},
		{"time to live of the chosen lease", "ok", ttl(1, true)},
		{"b leaves its lease", "ok", put("b", 0)},
		{"a moves to -5 in a txn", "ok", func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			return side.s.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), Value: []byte("w"), Lease: -5}}},
			}})
		}},
		{"keys of 100 after the moves", "ok", ttl(100, true)},
		{"keys of -5 after the moves", "ok", ttl(-5, true)},
		{"keep-alive of 100", "ok", keepAlive(100)},
		{"keep-alive of an unknown lease", "ok", keepAlive(999)},
		{"list", "ok", list},
		{"revoke -5", "ok", revoke(-5)},
		{"keys after revoking -5", "ok", all},
		{"revoke -5 again", "requested lease not found", revoke(-5)},
		{"revoke lease 0", "requested lease not found", revoke(0)},
		{"revoke a lease without keys", "ok", revoke(103)},
		{"delete e", "ok", func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			return side.s.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("e")})
		}},
		{"keys of the chosen lease after the delete", "ok", ttl(1, true)},
		{"revoke the chosen lease", "ok", revoke(1)},
		{"list after the revokes", "ok", list},
		{"keys after the revokes", "ok", all},
		{"grant with TTL 0 gets the minimum", "ok", grant(102, 0)},
		{"put f on 102", "ok", put("f", 102)},
		{"wait for 102 to expire", "ok", func(ctx context.Context, side *leaseSide) (proto.Message, error) {
			for {
				resp, err := side.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: 102})
				if err != nil || resp.TTL == -1 {
					return resp, err
				}
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(50 * time.Millisecond):
				}
			}
		}},
		{"keys after the expiry", "ok", all},
		{"keep-alive of the expired lease", "ok", keepAlive(102)},
		{"revoke of the expired lease", "requested lease not found", revoke(102)},
	}
}
