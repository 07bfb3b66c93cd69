package snapshot

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"

	"github.com/plinthdb/plinth/internal/storage"
)

// Write streams the image of the state machine in src, a consistent view (a
// *pebble.Snapshot), at applied index index whose entry has term term, to w.
// Memory stays bounded by a few sstable blocks, however large the state: the
// table is written to w as it is built.
//
// src's applied index must be index: the caller reads it from the same Pebble
// snapshot it passes, so that the image and its index agree. On an error,
// what was written to w is not a valid image, and a receiver rejects it.
func Write(w io.Writer, src pebble.Reader, index, term uint64) error {
	applied, err := storage.GetMetaUint64(src, storage.MetaAppliedIndex)
	if err != nil {
		return fmt.Errorf("snapshot: read applied index: %w", err)
	}
	if applied != index {
		return fmt.Errorf("snapshot: source's applied index is %d, not the snapshot's index %d", applied, index)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	out := &streamWritable{w: bw, crc: crc32.New(castagnoli)}
	hdr := header{version: frameVersion, tableFormat: uint32(TableFormat), index: index, term: term}.encode()
	if err := out.Write(hdr); err != nil {
		return fmt.Errorf("snapshot: write header: %w", err)
	}
	out.n = 0 // the trailer's length counts the table alone

	tw := sstable.NewWriter(out, storage.TableWriterOptions(TableFormat))
	if err := writeTable(tw, src, index, term); err != nil {
		_ = tw.Close() // the table is abandoned: no trailer follows it
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("snapshot: finish table: %w", err)
	}
	if out.err != nil {
		return fmt.Errorf("snapshot: write table: %w", out.err)
	}
	if _, err := bw.Write(encodeTrailer(out.n, out.crc.Sum32())); err != nil {
		return fmt.Errorf("snapshot: write trailer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("snapshot: write trailer: %w", err)
	}
	return nil
}

// writeTable writes the image's keys, in key order (see the package comment).
func writeTable(tw *sstable.Writer, src pebble.Reader, index, term uint64) error {
	log := storage.RaftLogSpan()
	if err := tw.DeleteRange(log.Start, log.End); err != nil {
		return fmt.Errorf("snapshot: clear raft log: %w", err)
	}

	names := append(slices.Clone(storage.StateMachineMeta), storage.MetaLogTruncated)
	slices.SortFunc(names, func(a, b string) int { return bytes.Compare(storage.MetaKey(a), storage.MetaKey(b)) })
	for _, name := range names {
		key := storage.MetaKey(name)
		if name == storage.MetaLogTruncated {
			if err := tw.Set(key, storage.TruncationMark(index, term)); err != nil {
				return fmt.Errorf("snapshot: write %s: %w", name, err)
			}
			continue
		}
		v, found, err := storage.GetMeta(src, name)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		if found {
			err = tw.Set(key, v)
		} else {
			err = tw.Delete(key)
		}
		if err != nil {
			return fmt.Errorf("snapshot: write %s: %w", name, err)
		}
	}

	for _, span := range storage.StateMachineSpans {
		if err := tw.DeleteRange(span.Start, span.End); err != nil {
			return fmt.Errorf("snapshot: clear span [%x,%x): %w", span.Start, span.End, err)
		}
		if err := copySpan(tw, src, span); err != nil {
			return err
		}
	}
	// The receiver's notes about the state this image replaces go with it;
	// the sender's own are about its copy, on its clock, and stay home.
	for _, span := range storage.LocalSpans {
		if err := tw.DeleteRange(span.Start, span.End); err != nil {
			return fmt.Errorf("snapshot: clear span [%x,%x): %w", span.Start, span.End, err)
		}
	}
	return nil
}

func copySpan(tw *sstable.Writer, src pebble.Reader, span storage.Span) error {
	iter, err := src.NewIter(&pebble.IterOptions{LowerBound: span.Start, UpperBound: span.End})
	if err != nil {
		return fmt.Errorf("snapshot: scan span [%x,%x): %w", span.Start, span.End, err)
	}
	for valid := iter.First(); valid; valid = iter.Next() {
		v, err := iter.ValueAndErr()
		if err == nil {
			err = tw.Set(iter.Key(), v)
		}
		if err != nil {
			_ = iter.Close()
			return fmt.Errorf("snapshot: copy key %x: %w", iter.Key(), err)
		}
	}
	if err := iter.Close(); err != nil {
		return fmt.Errorf("snapshot: scan span [%x,%x): %w", span.Start, span.End, err)
	}
	return nil
}

// streamWritable is the sstable writer's output: it passes the table on to
// the stream as it is built, counting its bytes and checksumming them with
// the header's.
type streamWritable struct {
	w   io.Writer
	crc hash.Hash32
	n   uint64
	err error // the first write error; later writes are dropped
}

// Write implements objstorage.Writable.
func (s *streamWritable) Write(p []byte) error {
	if s.err != nil {
		return s.err
	}
	if _, err := s.w.Write(p); err != nil {
		s.err = err
		return err
	}
	_, _ = s.crc.Write(p)
	s.n += uint64(len(p))
	return nil
}

// Finish implements objstorage.Writable. The stream's durability is the
// receiver's business (Receive syncs its file).
func (s *streamWritable) Finish() error { return s.err }

// Abort implements objstorage.Writable.
func (s *streamWritable) Abort() {
	if s.err == nil {
		s.err = errors.New("snapshot: table abandoned")
	}
}
