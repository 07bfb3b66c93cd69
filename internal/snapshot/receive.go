package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/plinthdb/plinth/internal/storage"
)

// Receive reads an image streamed by Write from r into a new file in dir on
// the file system fs (dir is created if needed; it must be on the database's
// file system, so that Install can link the file rather than copy it). The
// file and dir are synced before Receive returns. A stream that is cut short or damaged, or is
// not an image, fails with an error wrapping ErrCorrupt, and leaves no file
// behind, nor does any other failure.
func Receive(fsys vfs.FS, r io.Reader, dir string) (img Image, err error) {
	hdrBuf := make([]byte, headerSize)
	if _, err := io.ReadFull(r, hdrBuf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Image{}, fmt.Errorf("%w: stream ends inside the header", ErrCorrupt)
		}
		return Image{}, fmt.Errorf("snapshot: read header: %w", err)
	}
	if string(hdrBuf[:len(magic)]) != magic {
		return Image{}, fmt.Errorf("%w: stream does not start with a snapshot header", ErrCorrupt)
	}
	hdr := decodeHeader(hdrBuf)
	if hdr.version != frameVersion {
		return Image{}, fmt.Errorf("snapshot: image version %d, this member reads version %d", hdr.version, frameVersion)
	}
	if hdr.tableFormat == 0 || hdr.tableFormat > uint32(TableFormat) {
		// Pebble would refuse the table at Install; say why now.
		return Image{}, fmt.Errorf("snapshot: image table format %d, this member writes and ingests up to %d", hdr.tableFormat, TableFormat)
	}

	if err := fsys.MkdirAll(dir, 0o700); err != nil {
		return Image{}, fmt.Errorf("snapshot: create %s: %w", dir, err)
	}
	// Two images of the same entry may arrive at once (a leader retries):
	// a random part keeps their files apart.
	var unique [8]byte
	_, _ = rand.Read(unique[:])
	tmp := fsys.PathJoin(dir, fmt.Sprintf("%s%d-%d-%x%s", filePrefix, hdr.index, hdr.term, unique, partialSuffix))
	f, err := fsys.Create(tmp, "snapshot")
	if err != nil {
		return Image{}, fmt.Errorf("snapshot: create image file: %w", err)
	}
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				_ = f.Close()
			}
			_ = fsys.Remove(tmp)
		}
	}()

	crc := crc32.New(castagnoli)
	_, _ = crc.Write(hdrBuf)
	n, trailer, err := copyHoldingTrailer(f, crc, r)
	if err != nil {
		return Image{}, err
	}
	wantN := binary.BigEndian.Uint64(trailer)
	wantCRC := binary.BigEndian.Uint32(trailer[8:])
	switch {
	case string(trailer[12:]) != trailerMagic || wantN != n:
		return Image{}, fmt.Errorf("%w: stream cut short or padded: no trailer for a table of %d bytes", ErrCorrupt, n)
	case crc.Sum32() != wantCRC:
		return Image{}, fmt.Errorf("%w: checksum %08x, trailer says %08x", ErrCorrupt, crc.Sum32(), wantCRC)
	}

	if err := f.Sync(); err != nil {
		return Image{}, fmt.Errorf("snapshot: sync %s: %w", tmp, err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return Image{}, fmt.Errorf("snapshot: close %s: %w", tmp, err)
	}
	path := strings.TrimSuffix(tmp, partialSuffix) + fileSuffix
	if err := fsys.Rename(tmp, path); err != nil {
		return Image{}, fmt.Errorf("snapshot: rename %s: %w", tmp, err)
	}
	if err := syncDir(fsys, dir); err != nil {
		_ = fsys.Remove(path)
		return Image{}, err
	}
	return Image{Path: path, Index: hdr.index, Term: hdr.term}, nil
}

// copyHoldingTrailer copies r to w and crc, but for its last trailerSize
// bytes, which it returns with the number of bytes copied.
func copyHoldingTrailer(w io.Writer, crc io.Writer, r io.Reader) (n uint64, trailer []byte, err error) {
	buf := make([]byte, trailerSize+64<<10)
	held := 0 // bytes at the start of buf not written yet
	for {
		m, rerr := r.Read(buf[held:])
		held += m
		if out := held - trailerSize; out > 0 {
			// The checksum first: a file may scribble over what it
			// was given to write (Pebble's in-memory files do, under
			// its invariant checks).
			_, _ = crc.Write(buf[:out])
			if _, err := w.Write(buf[:out]); err != nil {
				return 0, nil, fmt.Errorf("snapshot: write image file: %w", err)
			}
			n += uint64(out)
			held = copy(buf, buf[out:held])
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return 0, nil, fmt.Errorf("snapshot: read stream: %w", rerr)
		}
	}
	if held < trailerSize {
		return 0, nil, fmt.Errorf("%w: stream ends before its trailer", ErrCorrupt)
	}
	return n, buf[:trailerSize], nil
}

func syncDir(fsys vfs.FS, dir string) error {
	d, err := fsys.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("snapshot: open %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("snapshot: sync %s: %w", dir, err)
	}
	return nil
}

// Install ingests img into db, in one atomic and durable step, and consumes
// its file. On return without error:
//
//   - the state machine (storage.StateMachineSpans and StateMachineMeta) is
//     the image's, key for key: nothing of the previous one is left;
//   - the applied index is img.Index, and the log's truncation mark is
//     (img.Index, img.Term);
//   - the Raft log is empty, so the log resumes at img.Index+1;
//   - the member's hard state, cluster ID and member ID are untouched.
//
// The caller must then reload every in-memory copy of that state. Run Install
// through apply.Applier.Restore, on the apply goroutine, which stops the
// store's background work around it and reloads mvcc and the applied index,
// and reload the log store (storage.LogStore.Reload) before raft reads it
// again. On an error the database holds either the old state or the image's,
// never a mix (Pebble's ingestion is atomic); the member must stop if it
// cannot tell which.
func Install(db *pebble.DB, img Image) error {
	if err := db.Ingest(context.Background(), []string{img.Path}); err != nil {
		return fmt.Errorf("snapshot: ingest %s: %w", img.Path, err)
	}
	applied, err := storage.GetMetaUint64(db, storage.MetaAppliedIndex)
	if err != nil {
		return fmt.Errorf("snapshot: check installed image: %w", err)
	}
	if applied != img.Index {
		return fmt.Errorf("snapshot: installed image has applied index %d, want %d", applied, img.Index)
	}
	return nil
}

// Remove discards an image on fs that will not be installed.
func Remove(fsys vfs.FS, img Image) error {
	if err := fsys.Remove(img.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("snapshot: remove %s: %w", img.Path, err)
	}
	return nil
}

// Cleanup removes every image file in dir, complete or partial: those a
// crash left behind. Call it on startup, before receiving. A missing dir is
// fine.
func Cleanup(fsys vfs.FS, dir string) error {
	names, err := fsys.List(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshot: list %s: %w", dir, err)
	}
	var errs []error
	for _, name := range names {
		if !strings.HasPrefix(name, filePrefix) ||
			!(strings.HasSuffix(name, fileSuffix) || strings.HasSuffix(name, partialSuffix)) {
			continue
		}
		if st, err := fsys.Stat(fsys.PathJoin(dir, name)); err == nil && st.IsDir() {
			continue
		}
		if err := fsys.Remove(fsys.PathJoin(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("snapshot: remove %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
