// Package etcdsnap reads etcd's snapshot files (the bbolt database that
// `etcdctl snapshot save` writes, followed by its SHA-256) and loads one into
// plinth's state machine: the migration from etcd.
//
// What it reads, from etcd v3's backend schema:
//
//	bucket "key":   main revision (8) '_' sub-revision (8) [+ 't' for a deletion], big endian
//	                -> mvccpb.KeyValue (a deletion's names the key alone)
//	bucket "meta":  "scheduledCompactRev", "finishedCompactRev" (a revision as above),
//	                "consistent_index", "term" (8 bytes, big endian)
//	bucket "lease": lease ID (8, big endian) -> leasepb.Lease {ID, TTL, RemainingTTL}
//
// Every version etcd holds becomes a version of plinth's store with the same
// key, value, create and mod revisions, version and lease; deletions become
// delete events; the revision and compaction revision are etcd's; leases keep
// their IDs, TTLs and remaining TTLs, with the keys attached to them. etcd's
// membership, alarms and auth are not read: the restored cluster has its own
// members, and plinth has no auth yet (Info says whether etcd had any).
// Load also computes etcd's own HashKV of the file, which an operator
// compares with etcdctl endpoint hashkv on the member that saved it.
//
// etcdsnap only ever reads the snapshot file, and writes only the database it
// is given, which the caller builds in a data dir that nothing serves yet.
package etcdsnap

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"

	"github.com/cockroachdb/pebble/v2"
	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/lease"
	"github.com/plinthdb/plinth/internal/mvcc"
)

// ErrCorrupt marks a file that is not a whole, undamaged etcd snapshot.
var ErrCorrupt = errors.New("etcdsnap: not a whole etcd snapshot")

// bolt's meta page: a 16-byte page header, then the magic number, in the
// byte order of the machine that wrote it.
const (
	boltMagic       = 0xED0CDAED
	boltMagicOffset = 16
	// A snapshot that etcd streams is its database, a whole number of
	// pages, followed by the SHA-256 of it; etcd's client tells that a
	// stream carries the checksum by its length, 512k+32 bytes.
	sectorSize   = 512
	checksumSize = sha256.Size
)

// Looks reports whether head, the first bytes of a file, begin like a bbolt
// database: an etcd snapshot (or an etcd member's db file).
func Looks(head []byte) bool {
	if len(head) < boltMagicOffset+4 {
		return false
	}
	m := head[boltMagicOffset : boltMagicOffset+4]
	return binary.LittleEndian.Uint32(m) == boltMagic || binary.BigEndian.Uint32(m) == boltMagic
}

// Info describes a loaded snapshot.
type Info struct {
	Revision        int64
	CompactRevision int64 // -1 if etcd never compacted
	Keys            int64 // live keys
	Versions        int64 // versions and deletions loaded
	Leases          int
	// Index and Term are etcd's consistent index and the term of its last
	// applied entry (0 if the file predates etcd recording it).
	Index, Term uint64
	// AuthEnabled and AuthUsers say what etcd's auth held, which is not
	// restored.
	AuthEnabled bool
	AuthUsers   int
	Checksum    bool // the file carried a SHA-256 and it matched
	// EtcdHash is what etcd's HashKV answers at Revision for the state the
	// file holds (etcdctl endpoint hashkv --rev=Revision on the member that
	// saved it), computed as etcd computes it.
	EtcdHash uint32
	Size     int64
}

// Load checks the etcd snapshot at path and loads it into db, an empty
// database. scratch is a path where Load keeps a copy of the bbolt database
// while it reads it (bbolt reads a file of its own, and the snapshot's
// trailing checksum is not part of it); Load removes it.
//
// A file whose length says it carries a SHA-256 must match it. A file
// without one (an etcd member's db file copied by hand) is refused unless
// skipHashCheck, as etcdutl refuses it.
func Load(path, scratch string, db *pebble.DB, skipHashCheck bool) (info Info, err error) {
	checked, size, err := copyChecked(path, scratch, skipHashCheck)
	defer func() {
		if rerr := os.Remove(scratch); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = fmt.Errorf("etcdsnap: remove %s: %w", scratch, rerr)
		}
	}()
	if err != nil {
		return Info{}, err
	}
	bdb, err := bolt.Open(scratch, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return Info{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	defer func() { _ = bdb.Close() }()
	err = bdb.View(func(tx *bolt.Tx) (err error) {
		// bbolt panics on some damage to its pages: a damaged file is an
		// error here, never a crash.
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
			}
		}()
		info, err = load(tx, db)
		return err
	})
	if err != nil {
		return Info{}, err
	}
	info.Checksum, info.Size = checked, size
	return info, nil
}

// copyChecked copies the bbolt database of the snapshot at path to dst,
// checking its SHA-256 on the way.
func copyChecked(path, dst string, skipHashCheck bool) (checked bool, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, 0, fmt.Errorf("etcdsnap: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, 0, fmt.Errorf("etcdsnap: %w", err)
	}
	size = st.Size()
	body := size
	if size%sectorSize == checksumSize {
		body = size - checksumSize
	} else if !skipHashCheck {
		return false, size, fmt.Errorf("%w: %s is %d bytes, not 512k+32: it carries no SHA-256 (cut short? a member's db file needs --skip-hash-check)", ErrCorrupt, path, size)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, size, fmt.Errorf("etcdsnap: %w", err)
	}
	defer out.Close()
	sum := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(out, sum), f, body); err != nil {
		return false, size, fmt.Errorf("etcdsnap: copy %s: %w", path, err)
	}
	if err := out.Close(); err != nil {
		return false, size, fmt.Errorf("etcdsnap: copy %s: %w", path, err)
	}
	if body == size {
		return false, size, nil
	}
	want := make([]byte, checksumSize)
	if _, err := io.ReadFull(f, want); err != nil {
		return false, size, fmt.Errorf("etcdsnap: read %s: %w", path, err)
	}
	if !bytes.Equal(sum.Sum(nil), want) {
		return false, size, fmt.Errorf("%w: %s: SHA-256 mismatch (damaged or cut short)", ErrCorrupt, path)
	}
	return true, size, nil
}

var (
	keyBucket   = []byte("key")
	metaBucket  = []byte("meta")
	leaseBucket = []byte("lease")
	authBucket  = []byte("auth")
	usersBucket = []byte("authUsers")
)

// Revisions as etcd stores them: main (8) '_' sub (8), big endian, and a
// trailing 't' on the key of a deletion.
const (
	revLen        = 8 + 1 + 8
	markedRevLen  = revLen + 1
	tombstoneMark = 't'
)

func decodeRev(b []byte) (main, sub int64, tombstone bool, err error) {
	if (len(b) != revLen && len(b) != markedRevLen) || b[8] != '_' {
		return 0, 0, false, fmt.Errorf("%w: revision key %x", ErrCorrupt, b)
	}
	if len(b) == markedRevLen && b[revLen] != tombstoneMark {
		return 0, 0, false, fmt.Errorf("%w: revision key %x has mark %q", ErrCorrupt, b, b[revLen])
	}
	main, sub = int64(binary.BigEndian.Uint64(b)), int64(binary.BigEndian.Uint64(b[9:]))
	if main < 0 || sub < 0 {
		return 0, 0, false, fmt.Errorf("%w: negative revision %d_%d", ErrCorrupt, main, sub)
	}
	return main, sub, len(b) == markedRevLen, nil
}

func load(tx *bolt.Tx, db *pebble.DB) (Info, error) {
	keys, meta := tx.Bucket(keyBucket), tx.Bucket(metaBucket)
	if keys == nil || meta == nil {
		return Info{}, fmt.Errorf("%w: no %q or %q bucket (not an etcd v3 database)", ErrCorrupt, keyBucket, metaBucket)
	}
	info := Info{CompactRevision: -1}
	var scheduled, finished int64 = -1, -1
	for name, dst := range map[string]*int64{"scheduledCompactRev": &scheduled, "finishedCompactRev": &finished} {
		if v := meta.Get([]byte(name)); v != nil {
			main, _, _, err := decodeRev(v)
			if err != nil {
				return Info{}, fmt.Errorf("meta %s: %w", name, err)
			}
			*dst = main
		}
	}
	// A compaction etcd scheduled but had not finished holds for reads
	// (etcd finishes it when it opens the database): plinth's compactor
	// finishes it here.
	info.CompactRevision = max(scheduled, finished)
	for name, dst := range map[string]*uint64{"consistent_index": &info.Index, "term": &info.Term} {
		if v := meta.Get([]byte(name)); v != nil {
			if len(v) != 8 {
				return Info{}, fmt.Errorf("%w: meta %s is %d bytes, want 8", ErrCorrupt, name, len(v))
			}
			*dst = binary.BigEndian.Uint64(v)
		}
	}
	if a := tx.Bucket(authBucket); a != nil {
		v := a.Get([]byte("authEnabled"))
		info.AuthEnabled = len(v) == 1 && v[0] == 1
	}
	if u := tx.Bucket(usersBucket); u != nil {
		info.AuthUsers = u.Stats().KeyN
	}

	l := mvcc.NewLoader(db, info.CompactRevision)
	c := keys.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		main, sub, tombstone, err := decodeRev(k)
		if err != nil {
			return Info{}, err
		}
		kv := &mvccpb.KeyValue{}
		if err := proto.Unmarshal(v, kv); err != nil {
			return Info{}, fmt.Errorf("%w: version %d_%d: %w", ErrCorrupt, main, sub, err)
		}
		if err := l.Add(mvcc.Change{Rev: main, Sub: sub, Tombstone: tombstone, KV: kv}); err != nil {
			return Info{}, fmt.Errorf("etcdsnap: version %d_%d: %w", main, sub, err)
		}
		info.Versions++
	}
	rev, live, err := l.Finish(info.CompactRevision, max(finished, 0))
	if err != nil {
		return Info{}, fmt.Errorf("etcdsnap: %w", err)
	}
	info.Revision, info.Keys = rev, int64(len(live))
	if info.EtcdHash, err = etcdHashKV(keys, info.CompactRevision, live); err != nil {
		return Info{}, err
	}

	attached := map[int64][][]byte{}
	for _, k := range live {
		if k.Lease != 0 {
			attached[k.Lease] = append(attached[k.Lease], k.Key)
		}
	}
	b := db.NewBatch()
	defer func() { _ = b.Close() }()
	if lb := tx.Bucket(leaseBucket); lb != nil {
		err := lb.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return fmt.Errorf("%w: lease key %x", ErrCorrupt, k)
			}
			rec, err := decodeLease(v)
			if err != nil {
				return fmt.Errorf("%w: lease %x: %w", ErrCorrupt, k, err)
			}
			if id := int64(binary.BigEndian.Uint64(k)); rec.ID != id {
				return fmt.Errorf("%w: lease %x records ID %x", ErrCorrupt, k, rec.ID)
			}
			// etcd starts a lease that was never checkpointed at its full TTL.
			remaining := rec.RemainingTTL
			if remaining <= 0 {
				remaining = rec.TTL
			}
			if err := lease.Load(b, rec.ID, rec.TTL, time.Duration(remaining)*time.Second, attached[rec.ID]); err != nil {
				return fmt.Errorf("etcdsnap: %w", err)
			}
			info.Leases++
			return nil
		})
		if err != nil {
			return Info{}, err
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return Info{}, fmt.Errorf("etcdsnap: write leases: %w", err)
	}
	return info, nil
}

// etcdHashKV computes etcd's HashKV at the current revision of the key
// bucket keys, whose compaction revision is compactRev and whose live keys
// are live: a CRC-32C of the bucket's name, then of each entry's key and
// value in bucket order, but for entries at or below the compaction revision
// that are not the live version of their key (etcd hashes those only if its
// index would keep them at the revision hashed, and at the current revision
// it keeps each live key's newest version alone). A second pass over the
// bucket: which entries count is known only once every later one was seen.
func etcdHashKV(keys *bolt.Bucket, compactRev int64, live []mvcc.LoadedKey) (uint32, error) {
	oldLive := map[string]int64{}
	for _, k := range live {
		if k.Rev <= compactRev {
			oldLive[string(k.Key)] = k.Rev
		}
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	h.Write(keyBucket)
	c := keys.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		main, _, tombstone, err := decodeRev(k)
		if err != nil {
			return 0, err
		}
		if main == compactRev && tombstone {
			continue // etcd keeps it, or not, by version; its hash never counts it
		}
		if main <= compactRev && len(live) > 0 {
			if tombstone {
				continue
			}
			kv := &mvccpb.KeyValue{}
			if err := proto.Unmarshal(v, kv); err != nil {
				return 0, fmt.Errorf("%w: version %d: %w", ErrCorrupt, main, err)
			}
			if rev, ok := oldLive[string(kv.Key)]; !ok || rev != main {
				continue
			}
		}
		h.Write(k)
		h.Write(v)
	}
	return h.Sum32(), nil
}
