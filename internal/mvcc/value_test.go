package mvcc

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"github.com/plinthdb/plinth/internal/storage"
)

// FuzzRecord checks that records round-trip and that decoding arbitrary bytes
// never panics and fails only with corruption.
func FuzzRecord(f *testing.F) {
	f.Add(false, int64(2), int64(2), int64(1), int64(0), []byte("v"), []byte{})
	f.Add(false, int64(2), int64(9), int64(3), int64(7), []byte{}, []byte{0})
	f.Add(true, int64(0), int64(5), int64(0), int64(0), []byte(nil), []byte{1, 0, 5, 0, 0})
	f.Add(false, int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64), int64(-1), []byte("\x00\xff"), []byte{2, 0, 0, 0, 0})
	f.Add(false, int64(-1), int64(math.MinInt64), int64(1), int64(1), bytes.Repeat([]byte("x"), 300), []byte{0, 0x80, 0x80})
	f.Add(false, int64(1), int64(1), int64(1), int64(1), []byte("v"), []byte{0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add(false, int64(1), int64(1), int64(1), int64(1), []byte("v"), appendRecord(nil, &record{createRevision: 3, modRevision: 4, version: 2, lease: 1, value: []byte("x")}))

	f.Fuzz(func(t *testing.T, tomb bool, create, mod, version, lease int64, value, raw []byte) {
		in := record{tombstone: tomb, createRevision: create, modRevision: mod, version: version, lease: lease, value: value}
		enc := appendRecord([]byte("prefix"), &in)
		if !bytes.HasPrefix(enc, []byte("prefix")) {
			t.Fatalf("appendRecord overwrote dst")
		}
		var out record
		if err := decodeRecord(enc[len("prefix"):], &out); err != nil {
			t.Fatalf("decodeRecord(appendRecord(%+v)): %v", in, err)
		}
		if out.tombstone != in.tombstone || out.createRevision != in.createRevision || out.modRevision != in.modRevision ||
			out.version != in.version || out.lease != in.lease || !bytes.Equal(out.value, in.value) {
			t.Fatalf("record round trip: got %+v, want %+v", out, in)
		}

		var r record
		err := decodeRecord(raw, &r)
		if err != nil {
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("decodeRecord(%x) error %v does not wrap storage.ErrCorrupt", raw, err)
			}
			return
		}
		if len(raw) == 0 || raw[0] > 1 {
			t.Fatalf("decodeRecord(%x) accepted flags byte", raw)
		}
		// A decoded record encodes to something that decodes to it again.
		var again record
		if err := decodeRecord(appendRecord(nil, &r), &again); err != nil {
			t.Fatalf("re-decoding %+v: %v", r, err)
		}
		if again.tombstone != r.tombstone || again.createRevision != r.createRevision || again.modRevision != r.modRevision ||
			again.version != r.version || again.lease != r.lease || !bytes.Equal(again.value, r.value) {
			t.Fatalf("re-encoding: got %+v, want %+v", again, r)
		}
		kv := r.keyValue([]byte("k"), false)
		if !bytes.Equal(kv.Value, r.value) || kv.ModRevision != r.modRevision {
			t.Fatalf("keyValue(%+v) = %v", r, kv)
		}
	})
}
