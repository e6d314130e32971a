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
	"sync/atomic"

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
// The in-memory indexes by source address and by host interface index serve
// the per-connection lookups of the proxy and the NFLOG reader; they are an
// immutable snapshot swapped on each change, so lookups take no lock. The
// sandboxes handed out share their IPs and Args with that snapshot: read them,
// do not modify them.
type Registry struct {
	path string

	mu       sync.Mutex // serialises writers
	snap     atomic.Pointer[registrySnapshot]
	onChange func([]api.Sandbox)
}

// OnChange makes fn receive the full sandbox list after every committed
// change (and once now), under the writers' lock so calls arrive in order.
// The proxy process is fed this way.
func (r *Registry) OnChange(fn func([]api.Sandbox)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onChange = fn
	fn(slices.Clone(r.snap.Load().list))
}

type registrySnapshot struct {
	list    []api.Sandbox // sorted
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
// an error naming the file: starting empty instead would forget every sandbox
// whose pinned state still enforces, and nothing would ever clean that up.
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

// index publishes a snapshot of sbs; the caller holds mu (or owns r).
func (r *Registry) index(sbs []api.Sandbox) {
	sortSandboxes(sbs)
	s := &registrySnapshot{
		list:    sbs,
		byKey:   make(map[api.Key]api.Sandbox, len(sbs)),
		byIP:    make(map[netip.Addr]api.Sandbox, len(sbs)),
		byIndex: make(map[int]api.Sandbox, len(sbs)),
	}
	for _, sb := range sbs {
		s.byKey[sb.Key()] = sb
		for _, p := range sb.IPs {
			s.byIP[p.Addr().Unmap()] = sb
		}
		if sb.HostIfIndex > 0 {
			s.byIndex[sb.HostIfIndex] = sb
		}
	}
	r.snap.Store(s)
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
	cur := r.snap.Load()
	if c := cur.conflicts(sb); len(c) > 0 {
		return fmt.Errorf("put sandbox %s: address or host interface already registered to %s; remove that sandbox first", sb.Key(), c[0].Key())
	}
	next := make([]api.Sandbox, 0, len(cur.list)+1)
	for _, old := range cur.list {
		if old.Key() != sb.Key() {
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
	return r.snap.Load().conflicts(sb)
}

func (s *registrySnapshot) conflicts(sb api.Sandbox) []api.Sandbox {
	seen := map[api.Key]api.Sandbox{}
	add := func(o api.Sandbox, ok bool) {
		if ok && o.Key() != sb.Key() {
			seen[o.Key()] = o
		}
	}
	for _, p := range sb.IPs {
		o, ok := s.byIP[p.Addr().Unmap()]
		add(o, ok)
	}
	if sb.HostIfIndex > 0 {
		o, ok := s.byIndex[sb.HostIfIndex]
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
	cur := r.snap.Load()
	old, ok := cur.byKey[k]
	if !ok {
		return api.Sandbox{}, false, nil
	}
	next := make([]api.Sandbox, 0, len(cur.list))
	for _, sb := range cur.list {
		if sb.Key() != k {
			next = append(next, sb)
		}
	}
	if err := r.commit(next); err != nil {
		return api.Sandbox{}, false, err
	}
	return old, true, nil
}

// commit persists sbs and then swaps the snapshot; the caller holds mu.
func (r *Registry) commit(sbs []api.Sandbox) error {
	sortSandboxes(sbs)
	if err := r.write(sbs); err != nil {
		return err
	}
	r.index(sbs)
	if r.onChange != nil {
		r.onChange(slices.Clone(sbs))
	}
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
	sb, ok := r.snap.Load().byKey[k]
	return sb, ok
}

// List returns every sandbox, sorted by network, container id, interface.
func (r *Registry) List() []api.Sandbox {
	return slices.Clone(r.snap.Load().list)
}

// Len is the number of registered sandboxes.
func (r *Registry) Len() int {
	return len(r.snap.Load().list)
}

// ByIP returns the sandbox that owns source address ip. It matches the
// signature of Lookup.
func (r *Registry) ByIP(ip netip.Addr) (api.Sandbox, bool) {
	sb, ok := r.snap.Load().byIP[ip.Unmap()]
	return sb, ok
}

// ByIfIndex returns the sandbox whose host-side veth has index ifindex.
func (r *Registry) ByIfIndex(ifindex int) (api.Sandbox, bool) {
	sb, ok := r.snap.Load().byIndex[ifindex]
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
