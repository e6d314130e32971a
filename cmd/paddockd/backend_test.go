package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
)

// fakeEnforcer records what paddockd asked of the data path.
type fakeEnforcer struct {
	mu        sync.Mutex
	attached  map[api.Key]api.Sandbox
	attachErr error
	detachErr error
	reconErr  error
	comps     map[string]string
}

func newFake() *fakeEnforcer {
	return &fakeEnforcer{attached: map[api.Key]api.Sandbox{}, comps: map[string]string{"bpf": "ok", "nftables": "ok"}}
}

func (f *fakeEnforcer) Attach(_ context.Context, sb api.Sandbox) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attachErr != nil {
		return f.attachErr
	}
	f.attached[sb.Key()] = sb
	return nil
}

func (f *fakeEnforcer) Detach(_ context.Context, sb api.Sandbox) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.detachErr != nil {
		return f.detachErr
	}
	delete(f.attached, sb.Key())
	return nil
}

func (f *fakeEnforcer) Check(_ context.Context, sb api.Sandbox) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.attached[sb.Key()]; !ok {
		return errors.New("tcx program missing on " + sb.HostVeth)
	}
	return nil
}

func (f *fakeEnforcer) Reconcile(_ context.Context, sbs []api.Sandbox) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reconErr != nil {
		return f.reconErr
	}
	f.attached = map[api.Key]api.Sandbox{}
	for _, sb := range sbs {
		f.attached[sb.Key()] = sb
	}
	return nil
}

func (f *fakeEnforcer) Components() map[string]string { return f.comps }
func (f *fakeEnforcer) Close() error                  { return nil }

func (f *fakeEnforcer) isAttached(k api.Key) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.attached[k]
	return ok
}

func newTestBackend(t *testing.T) (*backend, *fakeEnforcer, string) {
	t.Helper()
	dir := t.TempDir()
	reg, err := enforcer.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	b := &backend{reg: reg, enf: f, log: slog.New(slog.NewJSONHandler(io.Discard, nil)), redirect: enforcer.RedirectBPF, version: "test"}
	b.serving.Store(true)
	return b, f, dir
}

func sandbox(cid, ip string, ifindex int) api.Sandbox {
	return api.Sandbox{
		Network: "paddock-test", ContainerID: cid, IfName: "eth0",
		HostVeth: "pdk" + cid[:4], HostIfIndex: ifindex,
		IPs: []netip.Prefix{netip.MustParsePrefix(ip + "/24")}, Policy: "default",
	}
}

func TestBackendRegisterValidates(t *testing.T) {
	b, f, _ := newTestBackend(t)
	ctx := t.Context()
	noVeth := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	noVeth.HostVeth = ""
	noIndex := sandbox("aaaaaaaaaaaa", "10.99.0.2", 0)
	v6only := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	v6only.IPs = []netip.Prefix{netip.MustParsePrefix("fd00::2/64")}
	for name, sb := range map[string]api.Sandbox{"no host veth": noVeth, "no ifindex": noIndex, "no IPv4": v6only} {
		if _, err := b.Register(ctx, sb); err == nil {
			t.Errorf("%s: Register succeeded", name)
		}
	}
	if b.reg.Len() != 0 || len(f.attached) != 0 {
		t.Fatalf("rejected registrations left state: registry %v, attached %v", b.reg.List(), f.attached)
	}
}

func TestBackendRegisterUnregister(t *testing.T) {
	b, f, _ := newTestBackend(t)
	ctx := t.Context()
	sb := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	got, err := b.Register(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	if got.Created.IsZero() {
		t.Fatal("Register did not fill Created")
	}
	if !f.isAttached(sb.Key()) {
		t.Fatal("Register did not attach")
	}
	again, err := b.Register(ctx, sb)
	if err != nil || !again.Created.Equal(got.Created) || b.reg.Len() != 1 {
		t.Fatalf("repeated Register = %v, created %v (first %v), %d sandboxes", err, again.Created, got.Created, b.reg.Len())
	}
	st, err := b.Get(ctx, sb.Key())
	if err != nil || st.Enforced != "ok" {
		t.Fatalf("Get = %+v, %v", st, err)
	}
	f.Detach(ctx, sb) // the data path lost it behind paddockd's back
	if st, _ := b.Get(ctx, sb.Key()); st.Enforced != "tcx program missing on pdkaaaa" {
		t.Fatalf("Enforced = %q, want the Check error", st.Enforced)
	}
	if err := b.Unregister(ctx, sb.Key()); err != nil {
		t.Fatal(err)
	}
	if err := b.Unregister(ctx, sb.Key()); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("second Unregister = %v, want ErrNotFound", err)
	}
	if _, err := b.Get(ctx, sb.Key()); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("Get after Unregister = %v", err)
	}
}

func TestBackendAttachFailureLeavesNothing(t *testing.T) {
	b, f, _ := newTestBackend(t)
	f.attachErr = errors.New("tcx attach: no such device")
	if _, err := b.Register(t.Context(), sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)); err == nil {
		t.Fatal("Register succeeded although attach failed")
	}
	if b.reg.Len() != 0 {
		t.Fatalf("registry holds %v after a failed attach", b.reg.List())
	}
}

func TestBackendPersistFailureDetaches(t *testing.T) {
	b, f, dir := newTestBackend(t)
	// Without its directory the registry cannot write.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	sb := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	if _, err := b.Register(t.Context(), sb); err == nil {
		t.Fatal("Register succeeded although the registry could not be written")
	}
	if f.isAttached(sb.Key()) {
		t.Fatal("sandbox stays attached although it was not registered")
	}
	if b.reg.Len() != 0 {
		t.Fatal("registry holds the sandbox in memory")
	}
}

func TestBackendDetachFailureKeepsRegistration(t *testing.T) {
	b, f, _ := newTestBackend(t)
	sb := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	if _, err := b.Register(t.Context(), sb); err != nil {
		t.Fatal(err)
	}
	f.detachErr = errors.New("nft: busy")
	if err := b.Unregister(t.Context(), sb.Key()); err == nil {
		t.Fatal("Unregister succeeded although detach failed")
	}
	if _, ok := b.reg.Get(sb.Key()); !ok {
		t.Fatal("registration forgotten although the data path still holds it: a retry could not clean up")
	}
}

func TestBackendReplacesStaleConflicts(t *testing.T) {
	b, f, _ := newTestBackend(t)
	ctx := t.Context()
	old := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	if _, err := b.Register(ctx, old); err != nil {
		t.Fatal(err)
	}
	// Its DEL never arrived; IPAM handed the address on.
	next := sandbox("bbbbbbbbbbbb", "10.99.0.2", 9)
	if _, err := b.Register(ctx, next); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.reg.Get(old.Key()); ok || f.isAttached(old.Key()) {
		t.Fatal("stale sandbox holding the same address was kept")
	}
	if sb, ok := b.reg.ByIP(netip.MustParseAddr("10.99.0.2")); !ok || sb.Key() != next.Key() {
		t.Fatalf("ByIP = %v, %v", sb.Key(), ok)
	}
	// Same key, new veth (container restarted): the old attachment goes.
	moved := next
	moved.HostVeth, moved.HostIfIndex = "pdkmoved", 10
	if _, err := b.Register(ctx, moved); err != nil {
		t.Fatal(err)
	}
	if sb, _ := b.reg.Get(next.Key()); sb.HostVeth != "pdkmoved" {
		t.Fatalf("re-registration not stored: %+v", sb)
	}
	if _, ok := b.reg.ByIfIndex(9); ok {
		t.Fatal("old ifindex still maps to the sandbox")
	}
}

func TestBackendGC(t *testing.T) {
	b, f, _ := newTestBackend(t)
	ctx := t.Context()
	keep := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	drop := sandbox("bbbbbbbbbbbb", "10.99.0.3", 8)
	otherIf := sandbox("aaaaaaaaaaaa", "10.99.0.4", 9)
	otherIf.IfName = "net1"
	otherNet := sandbox("cccccccccccc", "10.98.0.2", 10)
	otherNet.Network = "other"
	for _, sb := range []api.Sandbox{keep, drop, otherIf, otherNet} {
		if _, err := b.Register(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.GC(ctx, api.GCRequest{}); err == nil {
		t.Fatal("GC without a network succeeded")
	}
	out, err := b.GC(ctx, api.GCRequest{Network: "paddock-test", Valid: []api.Attachment{{ContainerID: keep.ContainerID, IfName: "eth0"}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []api.Key{otherIf.Key(), drop.Key()}
	if !slices.Equal(out.Removed, want) {
		t.Fatalf("GC removed %v, want %v", out.Removed, want)
	}
	var left []api.Key
	for _, sb := range b.reg.List() {
		left = append(left, sb.Key())
	}
	if !slices.Equal(left, []api.Key{otherNet.Key(), keep.Key()}) {
		t.Fatalf("left after GC: %v", left)
	}
	if f.isAttached(drop.Key()) || f.isAttached(otherIf.Key()) {
		t.Fatal("GC did not detach what it removed")
	}
}

func TestBackendStatus(t *testing.T) {
	b, f, _ := newTestBackend(t)
	st := b.Status(t.Context())
	if !st.Ready || st.Redirect != "bpf" || st.Version != "test" || st.Message != "" {
		t.Fatalf("Status = %+v, want ready", st)
	}
	f.comps = map[string]string{"bpf": "ok", "proxy": "not running"}
	st = b.Status(t.Context())
	if st.Ready || st.Message != "proxy: not running" {
		t.Fatalf("Status = %+v, want not ready naming the proxy", st)
	}
	f.comps = map[string]string{"bpf": "ok"}
	f.reconErr = errors.New("veth pdkgone: not found")
	b.reconcile(t.Context())
	if st := b.Status(t.Context()); st.Ready || st.Components["reconcile"] != "veth pdkgone: not found" {
		t.Fatalf("Status after failed reconcile = %+v", st)
	}
	f.reconErr = nil
	if _, err := b.GC(t.Context(), api.GCRequest{Network: "paddock-test"}); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(t.Context()); !st.Ready {
		t.Fatalf("Status after GC re-reconciled = %+v, want ready", st)
	}
	b.serving.Store(false)
	if st := b.Status(t.Context()); st.Ready {
		t.Fatal("ready while the API is not served")
	}
}
