package election

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCheckStates covers the states of Check that the tests against a
// server cannot bring about on demand: a renew loop stuck for longer than
// the lease while leading.
func TestCheckStates(t *testing.T) {
	cfg := Config{Name: "n", LeaseDuration: 15 * time.Second}
	now := time.Now()
	for _, tc := range []struct {
		name string
		e    *Elector
		want string // "" for healthy
	}{
		{"waiting", &Elector{cfg: cfg}, ""},
		{"leading, renewed", &Elector{cfg: cfg, lead: &Leadership{}, callbacks: 1, renewed: now.Add(-5 * time.Second)}, ""},
		{"leading, renew loop stuck", &Elector{cfg: cfg, lead: &Leadership{}, callbacks: 1, renewed: now.Add(-20 * time.Second)},
			"last renewed"},
		{"lost, work still running", &Elector{cfg: cfg, callbacks: 1, lostAt: now, lostWhy: errors.New("why")},
			"OnStartedLeading has not returned"},
		{"given up on cancel, work winding down", &Elector{cfg: cfg, callbacks: 1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.e.Check()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Check: %v, want %q", err, tc.want)
			}
		})
	}
}
