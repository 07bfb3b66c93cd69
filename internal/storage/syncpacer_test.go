package storage

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

func syncedPut(t *testing.T, db *pebble.DB, i int) time.Duration {
	t.Helper()
	start := time.Now()
	if err := db.Set(MetaKey(fmt.Sprintf("test/%d", i)), []byte("v"), pebble.Sync); err != nil {
		t.Fatalf("synced put %d: %v", i, err)
	}
	return time.Since(start)
}

// A hold makes the sync after the next one wait; without a hold, synced
// writes follow each other at the disk's pace.
func TestSyncPacerHoldsTheNextSync(t *testing.T) {
	var pacer SyncPacer
	db, err := Open(t.TempDir(), slog.New(slog.DiscardHandler), &pacer)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()

	// No hold: twenty synced writes take far less than one hold each.
	const hold = 200 * time.Millisecond
	start := time.Now()
	for i := range 20 {
		syncedPut(t, db, i)
	}
	if took := time.Since(start); took >= 10*hold {
		t.Fatalf("20 synced writes without a hold took %v", took)
	}

	pacer.HoldAfterSync(hold)
	syncedPut(t, db, 100) // its sync starts the hold
	if took := syncedPut(t, db, 101); took < hold*3/4 {
		t.Fatalf("the synced write after a held sync took %v, want at least ~%v", took, hold)
	}
	// Lifting the hold takes effect after the hold in force ends.
	pacer.HoldAfterSync(0)
	syncedPut(t, db, 102)
	start = time.Now()
	for i := range 20 {
		syncedPut(t, db, 200+i)
	}
	if took := time.Since(start); took >= 10*hold {
		t.Fatalf("20 synced writes after the hold was lifted took %v", took)
	}
}
