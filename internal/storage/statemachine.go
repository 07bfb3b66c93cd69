package storage

import "encoding/binary"

// Span is the key range [Start, End) of the Pebble database.
type Span struct {
	Start, End []byte
}

// PrefixSpan returns the span of every key that starts with prefix.
func PrefixSpan(prefix byte) Span {
	return Span{Start: []byte{prefix}, End: []byte{prefix + 1}}
}

// What a Raft snapshot carries, and what it must never touch.
//
// The database holds three kinds of state:
//
//   - the state machine: what applying the committed log produced. Every
//     member holds the same state machine at the same applied index, so a
//     snapshot ships it to a member that is too far behind, and installing one
//     replaces it wholesale: StateMachineSpans (each cleared and refilled) and
//     StateMachineMeta (each set, or deleted when the sender lacks it);
//   - the Raft log (PrefixRaftLog) and its truncation mark (MetaLogTruncated):
//     installing a snapshot at (index, term) empties the log and sets the mark
//     to (index, term), so that the log resumes right after the snapshot;
//   - this member's own state, MemberMeta: its Raft hard state (its vote and
//     term, which it must never forget) and its identity. A snapshot neither
//     carries nor overwrites them;
//   - this member's notes about its copy of the state machine, LocalSpans
//     (when it wrote each lease's remaining TTL, on its own clock). A
//     snapshot does not carry them but clears them, with the state they
//     described.
//
// Any new key space or meta value that the state machine writes (leases, auth,
// ...) must be added to StateMachineSpans or StateMachineMeta: snapshots copy
// only what these lists name, and would silently lose anything else. A test
// of this package fails when a Prefix* or Meta* constant is in none of the
// lists.
var (
	// StateMachineSpans are the key spaces of the state machine, in key order.
	StateMachineSpans = []Span{
		PrefixSpan(PrefixMembers),
		PrefixSpan(PrefixAlarms),
		PrefixSpan(PrefixLatest),
		PrefixSpan(PrefixHistory),
		PrefixSpan(PrefixEvents),
		PrefixSpan(PrefixLeases),
		PrefixSpan(PrefixLeaseKeys),
	}
	// StateMachineMeta are the meta values of the state machine.
	StateMachineMeta = []string{
		MetaAppliedIndex,
		MetaRevision,
		MetaCompacted,
		MetaCompactDone,
		MetaConfState,
	}
	// MemberMeta are the meta values that belong to this member alone: a
	// snapshot never carries nor overwrites them.
	MemberMeta = []string{
		MetaHardState,
		MetaClusterID,
		MetaMemberID,
		MetaJoined,
	}
	// LocalSpans are key spaces that describe this member's copy of the
	// state machine (when it wrote what, on its own clock). A snapshot
	// never carries them, and clears them: what they described was
	// replaced.
	LocalSpans = []Span{
		PrefixSpan(PrefixLeaseClock),
	}
)

// RaftLogSpan is the key space of the Raft log.
func RaftLogSpan() Span { return PrefixSpan(PrefixRaftLog) }

// TruncationMark encodes the value of MetaLogTruncated: the index and term of
// the last entry removed from the log, 8 bytes each, big endian.
func TruncationMark(index, term uint64) []byte {
	var mark [16]byte
	binary.BigEndian.PutUint64(mark[:], index)
	binary.BigEndian.PutUint64(mark[8:], term)
	return mark[:]
}
