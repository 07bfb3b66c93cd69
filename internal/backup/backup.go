// Package backup writes and reads plinth's backup files (what `plinthctl
// snapshot save` stores and Maintenance.Snapshot streams), and restores one
// into the data dir of a member of a new cluster.
//
// A backup file is
//
//	image   (n bytes)   the state machine image of package snapshot: one sstable, framed and CRC-checked
//	padding (p bytes)   zeros
//	footer  (64 bytes)  magic "PLNTBKUP", version (4), reserved (4), n (8), revision (8),
//	                    compact revision (8), live keys (8), hash (4), reserved (4), created (8, Unix ns)
//	sha256  (32 bytes)  of everything before it
//
// with integers big endian. The padding makes everything before the checksum
// a multiple of 512 bytes, as an etcd backend is: etcd's client (etcdctl
// snapshot save) takes the last 32 bytes of a stream for a SHA-256 only when
// the stream is 512k+32 bytes long, and refuses any other, so plinth's
// stream has that shape too.
//
// The footer's hash is mvcc's HashKV of the store at the backup's revision,
// so a backup can be compared with a live member (etcdctl endpoint hashkv
// --rev). backup never changes a live member's database: Write reads a
// consistent view, Restore builds a new data dir.
package backup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/plinthdb/plinth/internal/etcdsnap"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/snapshot"
)

const (
	footerMagic   = "PLNTBKUP"
	formatVersion = 1
	footerSize    = 64
	sectorSize    = 512
	checksumSize  = sha256.Size
)

// ErrCorrupt marks a file that is not a whole, undamaged backup.
var ErrCorrupt = errors.New("backup: not a whole plinth backup")

// Info describes a backup, as its footer records it.
type Info struct {
	Revision        int64
	CompactRevision int64 // -1 if the store was never compacted
	Keys            int64 // live keys
	Hash            uint32
	Created         time.Time
	ImageSize       int64 // bytes of the state machine image
	Size            int64 // bytes of the whole file
	// Etcd describes the etcd snapshot a restore read, nil for a plinth
	// backup.
	Etcd *etcdsnap.Info
}

// Write writes a backup of the state machine in snap, a consistent view of a
// member's database whose applied index is index, the entry of term term.
func Write(w io.Writer, snap pebble.Reader, index, term uint64, created time.Time) (Info, error) {
	h, err := mvcc.HashOf(snap)
	if err != nil {
		return Info{}, fmt.Errorf("backup: hash the store: %w", err)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	cw := &countingWriter{w: bw, sum: sha256.New()}
	if err := snapshot.Write(cw, snap, index, term); err != nil {
		return Info{}, fmt.Errorf("backup: %w", err)
	}
	info := Info{Revision: h.Revision, CompactRevision: h.CompactRevision, Keys: h.Keys, Hash: h.Hash, Created: created, ImageSize: cw.n}
	pad := (sectorSize - (cw.n+footerSize)%sectorSize) % sectorSize
	if _, err := cw.Write(make([]byte, pad)); err != nil {
		return Info{}, fmt.Errorf("backup: write padding: %w", err)
	}
	if _, err := cw.Write(info.footer()); err != nil {
		return Info{}, fmt.Errorf("backup: write footer: %w", err)
	}
	if _, err := bw.Write(cw.sum.Sum(nil)); err != nil {
		return Info{}, fmt.Errorf("backup: write checksum: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return Info{}, fmt.Errorf("backup: write: %w", err)
	}
	info.Size = cw.n + checksumSize
	return info, nil
}

func (i Info) footer() []byte {
	b := make([]byte, 0, footerSize)
	b = append(b, footerMagic...)
	b = binary.BigEndian.AppendUint32(b, formatVersion)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(i.ImageSize))
	b = binary.BigEndian.AppendUint64(b, uint64(i.Revision))
	b = binary.BigEndian.AppendUint64(b, uint64(i.CompactRevision))
	b = binary.BigEndian.AppendUint64(b, uint64(i.Keys))
	b = binary.BigEndian.AppendUint32(b, i.Hash)
	b = binary.BigEndian.AppendUint32(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(i.Created.UnixNano()))
}

// Verify checks that the file at path is a whole, undamaged backup (its
// SHA-256 and footer; Restore checks the image's own framing and CRC too) and
// returns what its footer says.
func Verify(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("backup: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Info{}, fmt.Errorf("backup: %w", err)
	}
	size := st.Size()
	if size < footerSize+checksumSize || (size-checksumSize)%sectorSize != 0 {
		return Info{}, fmt.Errorf("%w: %s is %d bytes, not 512k+32 (cut short?)", ErrCorrupt, path, size)
	}
	sum := sha256.New()
	body := size - checksumSize
	if _, err := io.CopyN(sum, f, body-footerSize); err != nil {
		return Info{}, fmt.Errorf("backup: read %s: %w", path, err)
	}
	tail := make([]byte, footerSize+checksumSize)
	if _, err := io.ReadFull(f, tail); err != nil {
		return Info{}, fmt.Errorf("backup: read %s: %w", path, err)
	}
	sum.Write(tail[:footerSize])
	if !bytes.Equal(sum.Sum(nil), tail[footerSize:]) {
		return Info{}, fmt.Errorf("%w: %s: SHA-256 mismatch (damaged or cut short)", ErrCorrupt, path)
	}
	info, err := decodeFooter(tail[:footerSize])
	if err != nil {
		return Info{}, fmt.Errorf("%s: %w", path, err)
	}
	if info.ImageSize <= 0 || info.ImageSize > body-footerSize || body-footerSize-info.ImageSize >= sectorSize {
		return Info{}, fmt.Errorf("%w: %s: footer gives an image of %d bytes in a file of %d", ErrCorrupt, path, info.ImageSize, size)
	}
	info.Size = size
	return info, nil
}

func decodeFooter(b []byte) (Info, error) {
	if string(b[:len(footerMagic)]) != footerMagic {
		return Info{}, fmt.Errorf("%w: no plinth backup footer (an etcd snapshot? snapshot restore reads those)", ErrCorrupt)
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != formatVersion {
		return Info{}, fmt.Errorf("backup: format version %d, this build reads version %d", v, formatVersion)
	}
	return Info{
		ImageSize:       int64(binary.BigEndian.Uint64(b[16:])),
		Revision:        int64(binary.BigEndian.Uint64(b[24:])),
		CompactRevision: int64(binary.BigEndian.Uint64(b[32:])),
		Keys:            int64(binary.BigEndian.Uint64(b[40:])),
		Hash:            binary.BigEndian.Uint32(b[48:]),
		Created:         time.Unix(0, int64(binary.BigEndian.Uint64(b[56:]))),
	}, nil
}

// countingWriter passes writes on, counting and hashing them.
type countingWriter struct {
	w   io.Writer
	sum hash.Hash
	n   int64
}

// Write hashes p before passing it on: a writer may scribble over the slice
// it is given (Pebble's vfs files may).
func (c *countingWriter) Write(p []byte) (int, error) {
	c.sum.Write(p)
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}
