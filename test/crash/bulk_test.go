package crash

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The recovery tests write in bulk and check each acknowledged put by itself:
// their load is simpler than TestKillNine's, and heavier, so that the work a
// member does when it starts (replaying its log, installing a snapshot,
// resuming a compaction) lasts long enough to be killed in the middle.

// ackedPut is a put whose answer came back.
type ackedPut struct {
	key, value string
	rev        int64
}

// bulk runs writers that put values of a given size, each to keys of its own,
// until ctx ends or their first failed request, and records the acknowledged
// puts.
type bulk struct {
	mu    sync.Mutex // guards the fields below
	acked []ackedPut
	bytes int64
	err   error // the first failure

	wg sync.WaitGroup
}

// bulkValue is the value of key: the key, then letters chosen by seed up to
// size bytes (letters compress little, so images and tables stay large).
func bulkValue(key string, size int, seed uint64) string {
	rng := rand.New(rand.NewPCG(seed, uint64(len(key))))
	b := make([]byte, max(size, len(key)+1))
	n := copy(b, key)
	b[n] = ':'
	for i := n + 1; i < len(b); i++ {
		b[i] = 'a' + byte(rng.IntN(26))
	}
	return string(b)
}

// startBulk starts writers writers, writer w putting prefix/w/<i> for i = 0,
// 1, ... (each key once), with values of size bytes. keys, when above 0,
// makes writer w cycle over keys keys of its own instead, so that each gets
// many versions.
func startBulk(ctx context.Context, cli *clientv3.Client, prefix string, writers, keys, size int) *bulk {
	b := &bulk{}
	for w := range writers {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k := i
				if keys > 0 {
					k = i % keys
				}
				key := fmt.Sprintf("%s/%02d/%06d", prefix, w, k)
				value := bulkValue(key, size, uint64(i))
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				resp, err := cli.Put(octx, key, value)
				cancel()
				b.mu.Lock()
				if err != nil {
					if b.err == nil && ctx.Err() == nil {
						b.err = fmt.Errorf("put %s: %w", key, err)
					}
					b.mu.Unlock()
					return
				}
				b.acked = append(b.acked, ackedPut{key: key, value: value, rev: resp.Header.Revision})
				b.bytes += int64(len(value))
				b.mu.Unlock()
			}
		}()
	}
	return b
}

// wait waits for every writer to return.
func (b *bulk) wait() { b.wg.Wait() }

// progress returns how many puts and bytes were acknowledged so far.
func (b *bulk) progress() (puts int, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.acked), b.bytes
}

// puts returns the acknowledged puts, after wait.
func (b *bulk) puts() []ackedPut {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]ackedPut(nil), b.acked...)
}

// checkPuts reads every acknowledged put back with serializable gets at its
// revision: the key holds the put's value, with that mod revision. A put below
// compactRev reads as compacted instead. It also checks that each key's newest
// version is its newest acknowledged put, unless unacked says the key may have
// been written later without an answer. It returns the violations (at most 40).
func checkPuts(ctx context.Context, cli *clientv3.Client, puts []ackedPut, compactRev int64, unacked map[string]bool) []string {
	var mu sync.Mutex
	var errs []string
	errorf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(errs) < 40 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	newest := map[string]ackedPut{}
	for _, p := range puts {
		if p.rev > newest[p.key].rev {
			newest[p.key] = p
		}
	}
	parallel(len(puts), func(i int) {
		p := puts[i]
		resp, err := cli.Get(ctx, p.key, clientv3.WithRev(p.rev), clientv3.WithSerializable())
		switch {
		case p.rev < compactRev:
			if !errors.Is(err, rpctypes.ErrCompacted) {
				errorf("put %s at revision %d, below the compaction at %d: a read there answered %v, want %v", p.key, p.rev, compactRev, err, rpctypes.ErrCompacted)
			}
		case err != nil:
			errorf("put %s at revision %d: read back: %v", p.key, p.rev, err)
		case len(resp.Kvs) != 1:
			errorf("LOST: put %s at revision %d: the key reads %d keys there", p.key, p.rev, len(resp.Kvs))
		case string(resp.Kvs[0].Value) != p.value || resp.Kvs[0].ModRevision != p.rev:
			errorf("LOST: put %s at revision %d: the key reads mod revision %d, value %.40q..., want value %.40q...", p.key, p.rev, resp.Kvs[0].ModRevision, resp.Kvs[0].Value, p.value)
		}
	})
	keys := make([]string, 0, len(newest))
	for k := range newest {
		if !unacked[k] {
			keys = append(keys, k)
		}
	}
	parallel(len(keys), func(i int) {
		p := newest[keys[i]]
		resp, err := cli.Get(ctx, p.key, clientv3.WithSerializable())
		switch {
		case err != nil:
			errorf("get %s: %v", p.key, err)
		case len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != p.rev || string(resp.Kvs[0].Value) != p.value:
			errorf("%s: its newest acknowledged put is at revision %d, but it reads %d keys, mod revision %v", p.key, p.rev, len(resp.Kvs), modRevs(resp))
		}
	})
	return errs
}

func modRevs(resp *clientv3.GetResponse) []int64 {
	if resp == nil {
		return nil
	}
	var revs []int64
	for _, kv := range resp.Kvs {
		revs = append(revs, kv.ModRevision)
	}
	return revs
}

// waitRevision waits, for 60s at most, until a serializable read through cli
// answers at revision rev or later: the member applied that far.
func waitRevision(ctx context.Context, cli *clientv3.Client, rev int64) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		resp, err := cli.Get(rctx, "crash/barrier", clientv3.WithSerializable())
		rcancel()
		if err == nil && resp.Header.Revision >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not at revision %d after 60s (last answer: %v, %v)", rev, resp, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
