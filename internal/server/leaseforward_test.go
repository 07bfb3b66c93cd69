package server

import (
	"errors"
	"testing"

	"github.com/plinthdb/plinth/internal/api"
)

// A renewal forwarded to a leader that does not answer fails with etcd's
// timeout once it waited more than the request timeout's worth of sweeps,
// and not before; younger renewals of the same lease keep waiting, in order.
func TestForwardedRenewalsExpire(t *testing.T) {
	f := &leaseForwarder{}
	link := &keepAliveLink{waiting: map[int64][]renewWaiter{}}
	f.link = link
	queue := func() chan renewAnswer {
		ch := make(chan renewAnswer, 1)
		link.mu.Lock()
		link.waiting[7] = append(link.waiting[7], renewWaiter{ch: ch, since: f.ticks.Load()})
		link.mu.Unlock()
		return ch
	}
	answered := func(ch chan renewAnswer) (renewAnswer, bool) {
		select {
		case a := <-ch:
			return a, true
		default:
			return renewAnswer{}, false
		}
	}
	const maxAge = 2
	older := queue()
	f.expire(maxAge)
	younger := queue()
	if n := f.expire(maxAge); n != 0 {
		t.Fatalf("%d renewals expired after 2 sweeps, want none", n)
	}
	if n := f.expire(maxAge); n != 1 {
		t.Fatalf("%d renewals expired after 3 sweeps, want the older one", n)
	}
	if a, ok := answered(older); !ok || !errors.Is(a.err, api.ErrTimeout) {
		t.Fatalf("the older renewal: answered %v, %+v; want api.ErrTimeout", ok, a)
	}
	if _, ok := answered(younger); ok {
		t.Fatal("the younger renewal was answered early")
	}
	if q := link.waiting[7]; len(q) != 1 || q[0].ch != younger {
		t.Fatalf("waiting for lease 7: %v, want only the younger renewal", q)
	}
	f.expire(maxAge)
	if a, ok := answered(younger); !ok || !errors.Is(a.err, api.ErrTimeout) {
		t.Fatalf("the younger renewal: answered %v, %+v; want api.ErrTimeout", ok, a)
	}
	if len(link.waiting) != 0 {
		t.Fatalf("still waiting: %v", link.waiting)
	}
}
