package testmember

import (
	"context"
	"testing"
	"time"
)

// TestPauseResumeRestart runs one member through the harness's faults: a
// paused member answers nothing, a resumed one answers again, a killed one
// restarts on its data, and a member left paused is still stopped at the end.
func TestPauseResumeRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs plinth")
	}
	bin, err := Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	m := New(t, bin)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := m.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}

	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = cli.Get(pctx, "k")
	cancel()
	if err == nil {
		t.Fatal("a paused member answered a read")
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctx, "k"); err != nil {
		t.Fatalf("read after resume: %v", err)
	}

	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("read after kill and restart: %v %v", resp, err)
	}
	// Left paused: the cleanup must resume it before SIGTERM, or wait 10s
	// and fail.
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
}
