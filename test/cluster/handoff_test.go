package cluster

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestGracefulStopOfLeaderHandsOver stops the leader with SIGTERM, as a
// rolling restart does, while a client writes through a follower: the leader
// hands leadership to a follower before it exits, as etcd's does, so the
// writes go on with a pause shorter than the election timeout a crash would
// cost (the followers would first have to miss the leader for that long).
func TestGracefulStopOfLeaderHandsOver(t *testing.T) {
	ctx := t.Context()
	c := startCluster(t, 3)
	leader, term := findLeader(t, c)
	via := others(c, leader)[0]
	cli := client(t, via.Endpoint())

	var (
		mu      sync.Mutex
		last    = time.Now()
		longest time.Duration
		writes  int
	)
	wctx, stopWriting := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wctx.Err() == nil {
			pctx, cancel := context.WithTimeout(wctx, 10*time.Second)
			_, err := cli.Put(pctx, "handoff", "v")
			cancel()
			if err != nil {
				continue
			}
			mu.Lock()
			now := time.Now()
			longest = max(longest, now.Sub(last))
			last = now
			writes++
			mu.Unlock()
		}
	}()
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	longest = 0 // the pause of a stop, not of the start
	mu.Unlock()

	if err := leader.Stop(); err != nil {
		t.Fatalf("graceful stop of the leader %s: %v", leader.Name(), err)
	}
	c.Forget(leader)
	newLeader, newTerm := findLeader(t, c)
	time.Sleep(time.Second)
	stopWriting()
	<-done
	// A write that never came back is a pause too.
	longest = max(longest, time.Since(last))
	log, _ := leader.Log()
	if !strings.Contains(log, "handed leadership over before stopping") {
		t.Errorf("the stopped leader %s did not say it handed leadership over (log %s)", leader.Name(), leader.LogPath())
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%s led in term %d; after its stop %s leads in term %d; longest pause between acknowledged writes %v (%d writes)",
		leader.Name(), term, newLeader.Name(), newTerm, longest.Round(time.Millisecond), writes)
	if longest >= electionTimeout {
		t.Errorf("writes paused %v around the leader's graceful stop; want less than the election timeout (%v)", longest.Round(time.Millisecond), electionTimeout)
	}
}
