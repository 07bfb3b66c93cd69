package mvcc

import (
	"encoding/binary"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// A stored version is encoded as
//
//	flags (1 byte) | create_revision | mod_revision | version | lease (uvarints) | value bytes
//
// flags bit 0 marks a tombstone: the key was deleted at mod_revision. The key
// itself is not stored in the value; it is the Pebble key's suffix.
const flagTombstone = 1

// record is one version of a key as stored.
type record struct {
	tombstone      bool
	createRevision int64
	modRevision    int64
	version        int64
	lease          int64
	value          []byte
}

func appendRecord(dst []byte, r *record) []byte {
	var flags byte
	if r.tombstone {
		flags |= flagTombstone
	}
	dst = append(dst, flags)
	dst = binary.AppendUvarint(dst, uint64(r.createRevision))
	dst = binary.AppendUvarint(dst, uint64(r.modRevision))
	dst = binary.AppendUvarint(dst, uint64(r.version))
	dst = binary.AppendUvarint(dst, uint64(r.lease))
	return append(dst, r.value...)
}

// decodeRecord decodes v into r. r.value aliases v: copy it if v is reused.
func decodeRecord(v []byte, r *record) error {
	if len(v) < 1 {
		return fmt.Errorf("mvcc: empty record: %w", storage.ErrCorrupt)
	}
	if v[0]&^flagTombstone != 0 {
		return fmt.Errorf("mvcc: record flags 0x%02x: %w", v[0], storage.ErrCorrupt)
	}
	r.tombstone = v[0]&flagTombstone != 0
	rest := v[1:]
	fields := [4]*int64{&r.createRevision, &r.modRevision, &r.version, &r.lease}
	for _, f := range fields {
		x, n := binary.Uvarint(rest)
		if n <= 0 {
			return fmt.Errorf("mvcc: truncated record: %w", storage.ErrCorrupt)
		}
		*f = int64(x)
		rest = rest[n:]
	}
	r.value = rest
	return nil
}

// keyValue builds the wire form of a version. Key and value are copied, so the
// result never aliases Pebble's buffers.
func (r *record) keyValue(key []byte, keysOnly bool) *mvccpb.KeyValue {
	kv := &mvccpb.KeyValue{
		Key:            append([]byte(nil), key...),
		CreateRevision: r.createRevision,
		ModRevision:    r.modRevision,
		Version:        r.version,
		Lease:          r.lease,
	}
	if !keysOnly && len(r.value) > 0 {
		kv.Value = append([]byte(nil), r.value...)
	}
	return kv
}
