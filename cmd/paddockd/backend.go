package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
)

// changeTimeout bounds one attach or detach. Changes run detached from the
// caller's context: a CNI plugin that gives up half-way must not leave a
// sandbox attached but unregistered.
const changeTimeout = 30 * time.Second

// backend implements api.Backend over the registry and the enforcer.
type backend struct {
	reg      *enforcer.Registry
	enf      enforcer.Enforcer
	log      *slog.Logger
	redirect enforcer.RedirectMode
	version  string
	started  time.Time
	// policyDir holds one NAME.yaml per policy; Register refuses a sandbox
	// whose policy has no file there. Empty skips the check (unit tests).
	policyDir string
	// vethGone tells whether a sandbox's host veth has disappeared; reconcile
	// prunes those registrations first. Nil (unit tests with made-up veths)
	// prunes nothing.
	vethGone func(api.Sandbox) (bool, error)

	// mu serialises changes so that "attach then persist" (and its undo)
	// is atomic with respect to every other change.
	mu           sync.Mutex
	serving      atomic.Bool
	reconcileErr atomic.Pointer[string]
}

var _ api.Backend = (*backend)(nil)

func validateSandbox(sb api.Sandbox) error {
	if err := sb.Key().Validate(); err != nil {
		return err
	}
	if sb.HostVeth == "" {
		return fmt.Errorf("sandbox %s: hostVeth is empty: the plugin must name the node-side veth", sb.Key())
	}
	if sb.HostIfIndex <= 0 {
		return fmt.Errorf("sandbox %s: hostIfIndex %d: want the node-side veth's interface index", sb.Key(), sb.HostIfIndex)
	}
	if _, ok := sb.IPv4(); !ok {
		return fmt.Errorf("sandbox %s: no IPv4 address in ips %v: the data path identifies sandboxes by IPv4 source", sb.Key(), sb.IPs)
	}
	for _, p := range sb.IPs {
		if !p.IsValid() {
			return fmt.Errorf("sandbox %s: invalid address %v in ips", sb.Key(), p)
		}
	}
	return nil
}

func (b *backend) Register(ctx context.Context, sb api.Sandbox) (api.Sandbox, error) {
	if err := validateSandbox(sb); err != nil {
		return api.Sandbox{}, err
	}
	if err := b.checkPolicy(sb.Policy); err != nil {
		return api.Sandbox{}, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	b.mu.Lock()
	defer b.mu.Unlock()

	// A re-registration whose interface or addresses changed is a new
	// attachment: the old one goes first so nothing keeps enforcing on a
	// veth the sandbox no longer owns. A repeated one (an ADD retried)
	// keeps its creation time.
	if old, ok := b.reg.Get(sb.Key()); ok {
		if !sameAttachment(old, sb) {
			if err := b.remove(ctx, old, "replaced"); err != nil {
				return api.Sandbox{}, err
			}
		} else if sb.Created.IsZero() {
			sb.Created = old.Created
		}
	}
	if sb.Created.IsZero() {
		sb.Created = time.Now().UTC()
	}
	// Another sandbox still holding this address or interface index is a
	// registration whose DEL never reached paddockd; IPAM or the kernel has
	// handed its address or index on, so it is stale.
	for _, stale := range b.reg.Conflicts(sb) {
		if err := b.remove(ctx, stale, "address or interface reused by "+sb.ShortID()); err != nil {
			return api.Sandbox{}, err
		}
	}
	if err := b.enf.Attach(ctx, sb); err != nil {
		b.log.Error("attach failed", "sandbox", sb.ShortID(), "network", sb.Network, "host_veth", sb.HostVeth, "reason", err.Error())
		return api.Sandbox{}, fmt.Errorf("attach sandbox %s to %s: %w", sb.ShortID(), sb.HostVeth, err)
	}
	if err := b.reg.Put(sb); err != nil {
		if derr := b.enf.Detach(ctx, sb); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo attach: %w", derr))
		}
		b.log.Error("register failed", "sandbox", sb.ShortID(), "network", sb.Network, "reason", err.Error())
		return api.Sandbox{}, fmt.Errorf("register sandbox %s: %w", sb.ShortID(), err)
	}
	b.log.Info("sandbox registered", "sandbox", sb.ShortID(), "network", sb.Network, "ifname", sb.IfName,
		"host_veth", sb.HostVeth, "ips", sb.IPs, "policy", sb.Policy)
	return sb, nil
}

// checkPolicy refuses a policy paddockd has no file for: the CNI plugin
// runs in the runtime's mount namespace and cannot look for itself, and a
// sandbox registered under a missing policy would only ever be denied.
func (b *backend) checkPolicy(name string) error {
	if b.policyDir == "" {
		return nil
	}
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("%w %q: not a policy name", api.ErrUnknownPolicy, name)
	}
	file := filepath.Join(b.policyDir, name+".yaml")
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w %q: %s does not exist", api.ErrUnknownPolicy, name, file)
	} else if err != nil {
		return fmt.Errorf("policy %q: %w", name, err)
	}
	return nil
}

func sameAttachment(a, b api.Sandbox) bool {
	return a.HostVeth == b.HostVeth && a.HostIfIndex == b.HostIfIndex && slices.Equal(a.IPs, b.IPs)
}

// remove detaches sb, then forgets it; if the detach fails the registration
// stays so that a retry (DEL, GC) still knows what to remove. The caller
// holds mu.
func (b *backend) remove(ctx context.Context, sb api.Sandbox, why string) error {
	if err := b.enf.Detach(ctx, sb); err != nil {
		b.log.Error("detach failed", "sandbox", sb.ShortID(), "network", sb.Network, "host_veth", sb.HostVeth, "reason", err.Error())
		return fmt.Errorf("detach sandbox %s from %s: %w", sb.ShortID(), sb.HostVeth, err)
	}
	if _, _, err := b.reg.Delete(sb.Key()); err != nil {
		return fmt.Errorf("unregister sandbox %s: %w", sb.ShortID(), err)
	}
	b.log.Info("sandbox removed", "sandbox", sb.ShortID(), "network", sb.Network, "ifname", sb.IfName, "reason", why)
	return nil
}

func (b *backend) Unregister(ctx context.Context, k api.Key) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	sb, ok := b.reg.Get(k)
	if !ok {
		return api.ErrNotFound
	}
	return b.remove(ctx, sb, "unregistered")
}

func (b *backend) status(ctx context.Context, sb api.Sandbox) api.SandboxStatus {
	st := api.SandboxStatus{Sandbox: sb, Enforced: "ok"}
	if err := b.enf.Check(ctx, sb); err != nil {
		st.Enforced = err.Error()
	}
	return st
}

func (b *backend) Get(ctx context.Context, k api.Key) (api.SandboxStatus, error) {
	sb, ok := b.reg.Get(k)
	if !ok {
		return api.SandboxStatus{}, api.ErrNotFound
	}
	return b.status(ctx, sb), nil
}

func (b *backend) List(ctx context.Context) ([]api.SandboxStatus, error) {
	sbs := b.reg.List()
	out := make([]api.SandboxStatus, 0, len(sbs))
	for _, sb := range sbs {
		out = append(out, b.status(ctx, sb))
	}
	return out, nil
}

func (b *backend) Status(context.Context) api.Status {
	comps := maps.Clone(b.enf.Components())
	if comps == nil {
		comps = map[string]string{}
	}
	if e := b.reconcileErr.Load(); e != nil {
		comps["reconcile"] = *e
	}
	st := api.Status{
		Version:    b.version,
		Started:    b.started,
		Redirect:   string(b.redirect),
		Sandboxes:  b.reg.Len(),
		Components: comps,
	}
	var wrong []string
	if !b.serving.Load() {
		wrong = append(wrong, "api: not serving")
	}
	for _, name := range slices.Sorted(maps.Keys(comps)) {
		if comps[name] != "ok" {
			wrong = append(wrong, name+": "+comps[name])
		}
	}
	st.Ready = len(wrong) == 0
	st.Message = strings.Join(wrong, "; ")
	return st
}

func (b *backend) GC(ctx context.Context, req api.GCRequest) (api.GCResponse, error) {
	if req.Network == "" {
		return api.GCResponse{}, errors.New("gc: network name is empty")
	}
	valid := make(map[api.Attachment]bool, len(req.Valid))
	for _, a := range req.Valid {
		valid[a] = true
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	out := api.GCResponse{Removed: []api.Key{}}
	var errs []error
	for _, sb := range b.reg.List() {
		if sb.Network != req.Network || valid[api.Attachment{ContainerID: sb.ContainerID, IfName: sb.IfName}] {
			continue
		}
		if err := b.remove(ctx, sb, "gc"); err != nil {
			errs = append(errs, err)
			continue
		}
		out.Removed = append(out.Removed, sb.Key())
	}
	// A start-up reconcile that failed (typically on a sandbox that is gone)
	// gets another chance once GC has cleaned up.
	if b.reconcileErr.Load() != nil && len(errs) == 0 {
		b.reconcile(ctx)
	}
	return out, errors.Join(errs...)
}

// reconcile makes the data path match the registry and records the outcome
// for Status.
func (b *backend) reconcile(ctx context.Context) {
	b.pruneGone(ctx)
	sbs := b.reg.List()
	if err := b.enf.Reconcile(ctx, sbs); err != nil {
		msg := err.Error()
		b.reconcileErr.Store(&msg)
		b.log.Error("reconcile failed", "sandboxes", len(sbs), "reason", msg)
		return
	}
	b.reconcileErr.Store(nil)
	b.log.Info("reconciled", "sandboxes", len(sbs))
}
