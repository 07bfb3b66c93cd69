// Package snapshot builds, ships and installs the image of the state machine
// that a Raft snapshot carries: when a follower is too far behind the
// leader's log, the leader sends it the state machine at an applied index
// instead of the entries.
//
// An image is ONE Pebble sstable. Write streams it from a consistent Pebble
// snapshot of the sender; Receive stores it in a file on the receiver and
// checks that nothing was lost or damaged on the way; Install ingests the
// file into the receiver's database in one atomic step. The table holds, in
// key order:
//
//   - a range deletion of the whole Raft log space;
//   - the state machine's meta values (storage.StateMachineMeta), each set to
//     the sender's value or deleted when the sender has none, and the log's
//     truncation mark set to the snapshot's (index, term);
//   - for each state-machine key space (storage.StateMachineSpans), a range
//     deletion of the whole space followed by every key the sender holds in
//     it;
//   - for each of the member's notes about its state (storage.LocalSpans), a
//     range deletion of the whole space, and none of the sender's keys.
//
// Pebble gives every key of an ingested table one sequence number, and a
// range deletion removes only keys with a lower one: those of the receiver,
// never the points of the same table. Ingesting the table therefore replaces
// the state machine wholesale and empties the log, atomically, while the
// member's own state (storage.MemberMeta: hard state, cluster and member ID)
// is in no range the table deletes, and stays. A test checks this behaviour
// of Pebble rather than assume it.
//
// The stream is framed so that the receiver detects truncation and
// corruption:
//
//	header  (32 bytes): magic "PLNTSNAP", version (4), table format (4), index (8), term (8)
//	table   (n bytes):  the sstable
//	trailer (16 bytes): n (8), CRC-32C of header and table (4), magic "PEND"
//
// All integers are big endian. The sender does not know n before the table is
// written, so the length comes last; the receiver holds back the last 16
// bytes it read until the stream ends.
//
// snapshot never writes to a database except in Install, and never reads the
// member's own state. It knows nothing of the network or the raft loop: the
// caller takes the Pebble snapshot, moves the bytes, and, after Install,
// reloads every in-memory copy of the state (apply.Applier.Restore,
// storage.LogStore.Reload).
package snapshot

import (
	"encoding/binary"
	"errors"
	"hash/crc32"

	"github.com/cockroachdb/pebble/v2/sstable"
)

// TableFormat is the sstable format of an image. The receiver can ingest only
// a table format its database's format major version accepts, and the sender
// cannot know that version. storage.Open leaves it at Pebble's default, the
// oldest version Pebble v2 supports (FormatFlushableIngest), which accepts
// table formats Pebblev1 to Pebblev3; every newer format major version
// accepts Pebblev3 too. So Pebblev3 is the newest format any member accepts;
// raise it only together with a ratchet of every member's format major
// version. Install checks it against the database before ingesting.
const TableFormat = sstable.TableFormatPebblev3

// Frame constants, see the package comment.
const (
	magic         = "PLNTSNAP"
	trailerMagic  = "PEND"
	frameVersion  = 1
	headerSize    = 8 + 4 + 4 + 8 + 8
	trailerSize   = 8 + 4 + 4
	fileSuffix    = ".sst"
	partialSuffix = ".tmp"
	filePrefix    = "snapshot-"
)

// ErrCorrupt marks a stream that was cut short or damaged on the way, or that
// is not a snapshot image at all. Test for it with errors.Is.
var ErrCorrupt = errors.New("snapshot: corrupt image")

// Image is a received snapshot image, checked and durable in a file.
type Image struct {
	Path  string // the sstable; Install consumes it, Remove discards it
	Index uint64 // the applied index of the state machine it holds
	Term  uint64 // the term of the entry at Index
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type header struct {
	version     uint32
	tableFormat uint32
	index, term uint64
}

func (h header) encode() []byte {
	b := make([]byte, 0, headerSize)
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint32(b, h.version)
	b = binary.BigEndian.AppendUint32(b, h.tableFormat)
	b = binary.BigEndian.AppendUint64(b, h.index)
	return binary.BigEndian.AppendUint64(b, h.term)
}

func decodeHeader(b []byte) header {
	return header{
		version:     binary.BigEndian.Uint32(b[8:]),
		tableFormat: binary.BigEndian.Uint32(b[12:]),
		index:       binary.BigEndian.Uint64(b[16:]),
		term:        binary.BigEndian.Uint64(b[24:]),
	}
}

func encodeTrailer(n uint64, crc uint32) []byte {
	b := make([]byte, 0, trailerSize)
	b = binary.BigEndian.AppendUint64(b, n)
	b = binary.BigEndian.AppendUint32(b, crc)
	return append(b, trailerMagic...)
}
