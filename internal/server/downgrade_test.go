package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestDowngradeRefused: a downgrade etcd would start (to one minor version
// below the cluster's) is refused with a precondition error that says why
// and what to do instead. Targets etcd itself refuses get etcd's errors, and
// a cancel succeeds with the cluster's version, as etcd's does when no
// downgrade is in progress.
func TestDowngradeRefused(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, action := range []clientv3.DowngradeAction{clientv3.DowngradeValidate, clientv3.DowngradeEnable} {
		for _, target := range []string{"3.5", "3.5.0", "3.5.17"} {
			_, err := cli.Downgrade(ctx, action, target)
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "snapshot") {
				t.Errorf("downgrade %v %s: got %v, want plinth's refusal", action, target, err)
			}
		}
	}
	for target, want := range map[string]error{
		"3.6":   rpctypes.ErrInvalidDowngradeTargetVersion, // the cluster's own version
		"3.4":   rpctypes.ErrInvalidDowngradeTargetVersion,
		"2.5":   rpctypes.ErrInvalidDowngradeTargetVersion,
		"v3.5":  rpctypes.ErrWrongDowngradeVersionFormat,
		"3":     rpctypes.ErrWrongDowngradeVersionFormat,
		"three": rpctypes.ErrWrongDowngradeVersionFormat,
	} {
		if _, err := cli.Downgrade(ctx, clientv3.DowngradeValidate, target); err != want {
			t.Errorf("downgrade validate %s: got %v, want %v", target, err, want)
		}
	}
	resp, err := cli.Downgrade(ctx, clientv3.DowngradeCancel, "")
	if err != nil || resp.Version != "3.6" {
		t.Errorf("downgrade cancel: got %v, %v; want version 3.6", resp, err)
	}
}
