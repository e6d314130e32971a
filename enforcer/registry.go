package enforcer

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// RegistryFile is the name of the registry inside paddockd's state dir.
const RegistryFile = "sandboxes.json"

// registryVersion is written into the file so a future format change can be
// recognised instead of misread.
const registryVersion = 1

// Registry is paddockd's persisted list of sandboxes. Every change is written
// to disk before it is visible, so a restarted paddockd (even after kill -9)
// reconciles the data path against exactly what it had promised to enforce.
// The in-memory indexes by source IPv4 and by host interface index serve the
// per-connection lookups of the proxy and the NFLOG reader.
type Registry struct {
	path string

	mu      sync.RWMutex
	byKey   map[api.Key]api.Sandbox
	byIP    map[netip.Addr]api.Sandbox
	byIndex map[int]api.Sandbox
}

type registryFile struct {
	Version   int           `json:"version"`
	Sandboxes []api.Sandbox `json:"sandboxes"`
}

// OpenRegistry loads <stateDir>/sandboxes.json, creating stateDir (0700) if
// needed. A missing file is an empty registry; an unreadable or corrupt one is
// an error, because silently starting empty would stop enforcing nothing but
// would also forget every sandbox that still holds pinned state.
func OpenRegistry(stateDir string) (*Registry, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	r := &Registry{path: filepath.Join(stateDir, RegistryFile)}
	data, err := os.ReadFile(r.path)
	var sbs []api.Sandbox
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read sandbox registry: %w", err)
	default:
		var f registryFile
		if err := json.Unmarshal(data, &f); err != nil {
			return nil, fmt.Errorf("sandbox registry %s is corrupt (%v): repair or move it away; paddockd then starts empty and pinned state of the lost sandboxes stays until they are removed", r.path, err)
		}
		if f.Version != registryVersion {
			return nil, fmt.Errorf("sandbox registry %s has version %d, this paddockd reads version %d", r.path, f.Version, registryVersion)
		}
		for _, sb := range f.Sandboxes {
			if err := sb.Key().Validate(); err != nil {
				return nil, fmt.Errorf("sandbox registry %s is corrupt: entry %q: %w", r.path, sb.Key(), err)
			}
		}
		sbs = f.Sandboxes
	}
	r.index(sbs)
	return r, nil
}

// Path is the file the registry persists to.
func (r *Registry) Path() string { return r.path }

// index rebuilds every map from sbs; the caller holds mu (or owns r).
func (r *Registry) index(sbs []api.Sandbox) {
	r.byKey = make(map[api.Key]api.Sandbox, len(sbs))
	r.byIP = make(map[netip.Addr]api.Sandbox, len(sbs))
	r.byIndex = make(map[int]api.Sandbox, len(sbs))
	for _, sb := range sbs {
		r.byKey[sb.Key()] = sb
		for _, p := range sb.IPs {
			r.byIP[p.Addr().Unmap()] = sb
		}
		if sb.HostIfIndex > 0 {
			r.byIndex[sb.HostIfIndex] = sb
		}
	}
}

// Put adds or replaces sb. It is on disk when Put returns nil; on error the
// registry is unchanged. An address or host interface index held by another
// sandbox is refused: the data path identifies sandboxes by them, so two
// owners would let one sandbox act under the other's policy.
func (r *Registry) Put(sb api.Sandbox) error {
	if err := sb.Key().Validate(); err != nil {
		return fmt.Errorf("put sandbox: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.conflicts(sb); len(c) > 0 {
		return fmt.Errorf("put sandbox %s: address or host interface already registered to %s; remove that sandbox first", sb.Key(), c[0].Key())
	}
	next := make([]api.Sandbox, 0, len(r.byKey)+1)
	for k, old := range r.byKey {
		if k != sb.Key() {
			next = append(next, old)
		}
	}
	next = append(next, sb)
	return r.commit(next)
}

// Conflicts returns the other sandboxes that hold one of sb's addresses or
// its host interface index (stale registrations whose DEL never reached
// paddockd), sorted.
func (r *Registry) Conflicts(sb api.Sandbox) []api.Sandbox {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.conflicts(sb)
}

func (r *Registry) conflicts(sb api.Sandbox) []api.Sandbox {
	seen := map[api.Key]api.Sandbox{}
	add := func(o api.Sandbox, ok bool) {
		if ok && o.Key() != sb.Key() {
			seen[o.Key()] = o
		}
	}
	for _, p := range sb.IPs {
		o, ok := r.byIP[p.Addr().Unmap()]
		add(o, ok)
	}
	if sb.HostIfIndex > 0 {
		o, ok := r.byIndex[sb.HostIfIndex]
		add(o, ok)
	}
	out := make([]api.Sandbox, 0, len(seen))
	for _, o := range seen {
		out = append(out, o)
	}
	sortSandboxes(out)
	return out
}

// Delete removes the sandbox with key k and returns what was stored.
func (r *Registry) Delete(k api.Key) (api.Sandbox, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.byKey[k]
	if !ok {
		return api.Sandbox{}, false, nil
	}
	next := make([]api.Sandbox, 0, len(r.byKey))
	for key, sb := range r.byKey {
		if key != k {
			next = append(next, sb)
		}
	}
	if err := r.commit(next); err != nil {
		return api.Sandbox{}, false, err
	}
	return old, true, nil
}

// commit persists sbs and then swaps the indexes; the caller holds mu.
func (r *Registry) commit(sbs []api.Sandbox) error {
	sortSandboxes(sbs)
	if err := r.write(sbs); err != nil {
		return err
	}
	r.index(sbs)
	return nil
}

// write replaces the file atomically: a reader (or a restart after a crash)
// sees either the old or the new registry, never a torn one.
func (r *Registry) write(sbs []api.Sandbox) error {
	data, err := json.MarshalIndent(registryFile{Version: registryVersion, Sandboxes: sbs}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode sandbox registry: %w", err)
	}
	dir := filepath.Dir(r.path)
	tmp, err := os.CreateTemp(dir, "."+RegistryFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("write sandbox registry: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write sandbox registry: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync sandbox registry: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write sandbox registry: %w", err)
	}
	if err := os.Rename(tmp.Name(), r.path); err != nil {
		return fmt.Errorf("replace sandbox registry: %w", err)
	}
	// The rename is durable only once the directory entry is.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	return nil
}

// Get returns the sandbox with key k.
func (r *Registry) Get(k api.Key) (api.Sandbox, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	sb, ok := r.byKey[k]
	return sb, ok
}

// List returns every sandbox, sorted by network, container id, interface.
func (r *Registry) List() []api.Sandbox {
	r.mu.RLock()
	out := make([]api.Sandbox, 0, len(r.byKey))
	for _, sb := range r.byKey {
		out = append(out, sb)
	}
	r.mu.RUnlock()
	sortSandboxes(out)
	return out
}

// Len is the number of registered sandboxes.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byKey)
}

// ByIP returns the sandbox that owns source address ip. It matches the
// signature of Lookup.
func (r *Registry) ByIP(ip netip.Addr) (api.Sandbox, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	sb, ok := r.byIP[ip.Unmap()]
	return sb, ok
}

// ByIfIndex returns the sandbox whose host-side veth has index ifindex.
func (r *Registry) ByIfIndex(ifindex int) (api.Sandbox, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	sb, ok := r.byIndex[ifindex]
	return sb, ok
}

func sortSandboxes(sbs []api.Sandbox) {
	slices.SortFunc(sbs, func(a, b api.Sandbox) int {
		return cmp.Or(
			cmp.Compare(a.Network, b.Network),
			cmp.Compare(a.ContainerID, b.ContainerID),
			cmp.Compare(a.IfName, b.IfName),
		)
	})
}
