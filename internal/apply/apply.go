// Package apply is plinth's deterministic state machine: it turns committed
// Raft entries into changes of the MVCC store (and, as they arrive, of leases,
// auth and membership), one Pebble batch per group of entries, committed
// together with the applied index. A crash at any point therefore replays
// exactly the entries whose effects were not committed: nothing is applied
// twice and nothing is lost.
//
// apply must stay deterministic: the same entries on the same state give the
// same state and the same answers on every member. What it writes and answers
// never depends on the clock (lease expiry reaches it as revokes the leader
// proposed; the lease table restarts its in-memory countdowns as it applies
// grants and checkpoints, and those never reach the state); it never consults
// local configuration, and never calls out to the network.
package apply

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/alarm"
	"github.com/plinthdb/plinth/internal/entry"
	"github.com/plinthdb/plinth/internal/lease"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/storage"
)

// ErrUnknownRequest stops a member that meets a committed request it cannot
// read.
var ErrUnknownRequest = errors.New("apply: committed entry holds a request this member does not know")

// Answers to requests that active alarms refuse, as etcd's appliers refuse
// them: every member applies the same refusal at the same entry.
var (
	// ErrNoSpace refuses a put, or a txn that writes, while a NOSPACE
	// alarm is active. Reads, deletes and compactions go on, so that an
	// operator can free space.
	ErrNoSpace = errors.New("apply: database space exceeded")
	// ErrCorrupt refuses reads and writes through the log while a CORRUPT
	// alarm is active.
	ErrCorrupt = errors.New("apply: corrupt cluster")
)

// Result is the outcome of one applied request.
type Result struct {
	ID   uint64        // the request's ID, which its proposer waits on
	Resp proto.Message // nil when Err is set
	Err  error         // a request error (mvcc.ErrCompacted, ...), never an I/O error
	// Done, when not nil, is closed once work the request started in the
	// background has finished (a physical compaction).
	Done <-chan struct{}
}

// Applier applies committed entries. Its methods are called from one
// goroutine, the apply loop.
type Applier struct {
	db      *pebble.DB
	kv      *mvcc.Store
	alarms  *alarm.Table
	leases  *lease.Table
	logger  *slog.Logger
	applied uint64
	// req is reused to decode each entry into: nothing an entry's answer
	// holds points into it.
	req pb.InternalRaftRequest
	// leaseTimes is set while the batch being applied writes a lease's
	// remaining TTL (a grant, a checkpoint): see syncLeaseTimes.
	leaseTimes       bool
	commitSeconds    prometheus.Histogram // see metrics.go
	slowApplies      prometheus.Counter
	snapshotApplying prometheus.Gauge
}

// New returns an Applier that resumes after the applied index stored in db,
// with the lease table stored there. The lease table's deadlines run on the
// clock (see package lease); what apply writes never depends on it.
func New(db *pebble.DB, kv *mvcc.Store, logger *slog.Logger) (*Applier, error) {
	applied, err := storage.GetMetaUint64(db, storage.MetaAppliedIndex)
	if err != nil {
		return nil, err
	}
	alarms, err := alarm.Load(db)
	if err != nil {
		return nil, err
	}
	leases, err := lease.Open(db, time.Now)
	if err != nil {
		return nil, err
	}
	return &Applier{db: db, kv: kv, alarms: alarms, leases: leases, logger: logger, applied: applied,
		commitSeconds: newBackendCommitHistogram(), slowApplies: newSlowApplyCounter(), snapshotApplying: newSnapshotApplyGauge()}, nil
}

// Alarms is the table of active alarms, as of the last applied entry.
func (a *Applier) Alarms() *alarm.Table { return a.alarms }

// AppliedIndex returns the index of the last applied entry.
func (a *Applier) AppliedIndex() uint64 { return a.applied }

// Restore replaces the state machine with the one install writes into the
// database (a Raft snapshot's installation, see package snapshot) and reloads
// every in-memory copy of it: the MVCC store's (see mvcc.Store.Restore) and
// the applied index. It runs on the apply goroutine, in order with committed
// entries: the next entry applied must follow the installed applied index.
// An error means the member's memory and database may disagree: it must stop.
func (a *Applier) Restore(install func() error) error {
	a.snapshotApplying.Set(1)
	defer a.snapshotApplying.Set(0)
	err := a.kv.Restore(install)
	if rerr := a.Reload(); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// Reload reloads the applied index and the lease table from the database,
// after its contents were replaced underneath the Applier. Restore is the
// whole sequence.
func (a *Applier) Reload() error {
	applied, err := storage.GetMetaUint64(a.db, storage.MetaAppliedIndex)
	if err != nil {
		return fmt.Errorf("apply: reload applied index: %w", err)
	}
	a.applied = applied
	if err := a.alarms.Reload(a.db); err != nil {
		return fmt.Errorf("apply: reload alarms: %w", err)
	}
	return a.leases.Reload()
}

// Apply applies ents in order and commits their effects, the applied index and
// cs (when not nil, the configuration after them) in one batch. Entries at or
// below the applied index are skipped. It returns the result of each entry that
// carries a request; an error means the state could not be written, and the
// member must stop.
func (a *Applier) Apply(ents []*raftpb.Entry, cs *raftpb.ConfState) ([]Result, error) {
	b := a.kv.NewBatch()
	a.indexLeases(b)
	a.leaseTimes = false
	results := make([]Result, 0, len(ents))
	last := a.applied
	for _, e := range ents {
		if e.GetIndex() <= last {
			continue
		}
		if e.GetIndex() != last+1 {
			b.Abort()
			return nil, fmt.Errorf("apply: entry %d follows applied index %d", e.GetIndex(), last)
		}
		last = e.GetIndex()
		if e.GetType() != raftpb.EntryType_EntryNormal {
			// Raft learns of the change in the raft loop; cs carries
			// its result. The member records change here.
			id, err := applyConfChange(b.Writer(), e)
			if err != nil {
				b.Abort()
				return nil, fmt.Errorf("apply entry %d: %w", e.GetIndex(), err)
			}
			if id != 0 {
				results = append(results, Result{ID: id})
			}
			continue
		}
		if len(e.GetData()) == 0 {
			continue // a new leader's empty entry
		}
		start := time.Now()
		res, err := a.applyRequest(b, e)
		a.observeApply(start)
		if err != nil {
			b.Abort()
			return nil, fmt.Errorf("apply entry %d: %w", e.GetIndex(), err)
		}
		results = append(results, res)
	}
	if last == a.applied && cs == nil {
		b.Abort()
		return results, nil
	}
	if err := storage.PutMetaUint64(b.Writer(), storage.MetaAppliedIndex, last); err != nil {
		b.Abort()
		return nil, err
	}
	if cs != nil {
		if err := storage.SaveConfState(b.Writer(), cs); err != nil {
			b.Abort()
			return nil, err
		}
	}
	start := time.Now()
	if err := b.Commit(); err != nil {
		return nil, fmt.Errorf("apply entries up to %d: %w", last, err)
	}
	a.observeCommit(start)
	a.applied = last
	if err := a.syncLeaseTimes(); err != nil {
		return nil, fmt.Errorf("apply entries up to %d: %w", last, err)
	}
	return results, nil
}

// syncLeaseTimes makes a batch that wrote remaining TTLs durable before its
// answers go out. Applied batches are not synced (the Raft log holds their
// entries), so after a crash the entries of the last ones are applied again:
// a grant or checkpoint applied again at the restart would count the lease's
// time from then, and give it back the time since the first apply (and the
// time the member was down). Synced, a batch is applied once, and the lease's
// clock record keeps when (see package lease).
func (a *Applier) syncLeaseTimes() error {
	if !a.leaseTimes {
		return nil
	}
	a.leaseTimes = false
	if err := a.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("sync lease times: %w", err)
	}
	return nil
}

func (a *Applier) applyRequest(b *mvcc.Batch, e *raftpb.Entry) (Result, error) {
	req := &a.req
	req.Reset()
	if err := entry.Decode(e.GetData(), req); err != nil {
		return Result{}, err
	}
	res := Result{ID: req.ID}
	if err := a.refusedByAlarm(req); err != nil {
		res.Err = err
		return res, nil
	}
	var err error
	switch {
	case req.Alarm != nil:
		res.Resp, err = a.applyAlarm(b.Writer(), req.Alarm)
	case req.Put != nil:
		res.Resp, err = b.Put(req.Put, a.leases.Exists)
	case req.DeleteRange != nil:
		res.Resp, err = b.DeleteRange(req.DeleteRange)
	case req.Txn != nil:
		res.Resp, err = b.Txn(req.Txn, a.leases.Exists)
	case req.Range != nil:
		res.Resp, err = b.Range(req.Range)
	case req.Compaction != nil:
		var done <-chan struct{}
		res.Resp, done, err = b.Compact(req.Compaction.Revision)
		if err == nil && req.Compaction.Physical {
			res.Done = done
		}
	case req.LeaseGrant != nil:
		res.Resp, err = a.grantLease(b, req.LeaseGrant)
		a.leaseTimes = true
	case req.LeaseRevoke != nil:
		res.Resp, err = a.revokeLease(b, req.LeaseRevoke.ID)
	case req.LeaseCheckpoint != nil:
		err = a.leases.Checkpoint(b.Writer(), req.LeaseCheckpoint.Checkpoints, e.GetTerm())
		a.leaseTimes = true
		res.Resp = &pb.LeaseCheckpointResponse{Header: &pb.ResponseHeader{}}
	case req.ClusterMemberAttrSet != nil:
		err = setMemberAttributes(b.Writer(), req.ClusterMemberAttrSet)
		res.Resp = &pb.MemberUpdateResponse{}
	default:
		// A request this member cannot read, from a newer member:
		// applying the rest without it would make this member's state
		// diverge. Stop instead.
		return Result{}, fmt.Errorf("%w (fields unknown to this version: %d bytes); upgrade this member", ErrUnknownRequest, len(req.ProtoReflect().GetUnknown()))
	}
	if err != nil {
		if !isRequestError(err) {
			return Result{}, err
		}
		res.Resp, res.Err = nil, err
	}
	return res, nil
}

// refusedByAlarm answers the requests that the active alarms refuse.
func (a *Applier) refusedByAlarm(req *pb.InternalRaftRequest) error {
	if a.alarms.Corrupt() && (req.Put != nil || req.DeleteRange != nil || req.Txn != nil || req.Range != nil ||
		req.Compaction != nil || req.LeaseGrant != nil || req.LeaseRevoke != nil) {
		return ErrCorrupt
	}
	if a.alarms.NoSpace() && (req.Put != nil || req.Txn != nil && !mvcc.IsReadOnly(req.Txn) || req.LeaseGrant != nil) {
		return ErrNoSpace
	}
	return nil
}

// applyAlarm activates or deactivates an alarm, as a member raising one or
// an operator's `alarm disarm` asked.
func (a *Applier) applyAlarm(w pebble.Writer, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{}}
	switch req.Action {
	case pb.AlarmRequest_GET:
		for _, m := range a.alarms.List() {
			if req.Alarm == pb.AlarmType_NONE || m.Alarm == req.Alarm {
				resp.Alarms = append(resp.Alarms, m)
			}
		}
	case pb.AlarmRequest_ACTIVATE:
		if req.Alarm == pb.AlarmType_NONE {
			break
		}
		m, err := a.alarms.Activate(w, req.MemberID, req.Alarm)
		if err != nil {
			return nil, err
		}
		a.logger.Warn("alarm raised", "alarm", req.Alarm.String(), "member", fmt.Sprintf("%x", req.MemberID))
		resp.Alarms = append(resp.Alarms, m)
	case pb.AlarmRequest_DEACTIVATE:
		m, err := a.alarms.Deactivate(w, req.MemberID, req.Alarm)
		if err != nil {
			return nil, err
		}
		if m != nil {
			a.logger.Info("alarm cleared", "alarm", req.Alarm.String(), "member", fmt.Sprintf("%x", req.MemberID))
			resp.Alarms = append(resp.Alarms, m)
		}
	}
	return resp, nil
}

// isRequestError tells the errors that are a request's answer, and leave the
// state untouched, from failures to read or write the state.
func isRequestError(err error) bool {
	for _, re := range []error{mvcc.ErrCompacted, mvcc.ErrFutureRev, mvcc.ErrKeyNotFound, mvcc.ErrLeaseNotFound, mvcc.ErrDeleteTooLarge,
		lease.ErrNotFound, lease.ErrExists, lease.ErrTTLTooLarge, ErrNoSpace, ErrCorrupt} {
		if errors.Is(err, re) {
			return true
		}
	}
	return false
}
