package main

import (
	"errors"
	"testing"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// A registration whose host veth is gone is detached and forgotten before
// the reconcile; one whose lookup fails, or whose veth is there, stays.
func TestReconcilePrunesGoneVeths(t *testing.T) {
	b, f, _ := newTestBackend(t)
	ctx := t.Context()
	gone := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	there := sandbox("bbbbbbbbbbbb", "10.99.0.3", 8)
	unsure := sandbox("cccccccccccc", "10.99.0.4", 9)
	for _, sb := range []api.Sandbox{gone, there, unsure} {
		if _, err := b.Register(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	b.vethGone = func(sb api.Sandbox) (bool, error) {
		switch sb.HostVeth {
		case gone.HostVeth:
			return true, nil
		case unsure.HostVeth:
			return false, errors.New("netlink: resource temporarily unavailable")
		}
		return false, nil
	}
	b.reconcile(ctx)
	if _, ok := b.reg.Get(gone.Key()); ok || f.isAttached(gone.Key()) {
		t.Error("registration with a missing host veth survived the reconcile")
	}
	for _, sb := range []api.Sandbox{there, unsure} {
		if _, ok := b.reg.Get(sb.Key()); !ok || !f.isAttached(sb.Key()) {
			t.Errorf("%s was pruned", sb.HostVeth)
		}
	}
	if st := b.Status(ctx); !st.Ready {
		t.Errorf("Status after pruning = %+v, want ready", st)
	}
}
