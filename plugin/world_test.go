package plugin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/testutil"
)

// This file is the test world for the integration tests: the compiled
// plugin and host-local in a CNI_PATH dir, a "node" netns where the plugin
// runs (as under a runtime), sandbox netnses, and a fake paddockd serving
// the real API over a Unix socket.

var bins = testutil.Binaries{Pattern: "paddock-cni-bin-", Bins: []testutil.Bin{
	{Name: "paddock", Pkg: "github.com/paddock-sandbox/paddock/cmd/paddock-cni"},
	{Name: "host-local", Pkg: "github.com/containernetworking/plugins/plugins/ipam/host-local"},
	{Name: "ptp", Pkg: "github.com/containernetworking/plugins/plugins/main/ptp"},
	{Name: "bridge", Pkg: "github.com/containernetworking/plugins/plugins/main/bridge"},
	{Name: "macvlan", Pkg: "github.com/containernetworking/plugins/plugins/main/macvlan"},
}}

// cniBins builds paddock, host-local and the primaries of the chained
// tests once per test binary.
func cniBins(t *testing.T) string {
	t.Helper()
	return bins.Dir(t)
}

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth pairs")
	}
}

func randSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newNetns creates a named netns and removes it when the test ends.
func newNetns(t *testing.T, prefix string) string {
	t.Helper()
	name := prefix + "-" + randSuffix(t)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/var/run/netns/" + name
}

// inNS runs f on a locked OS thread inside the netns at path; processes f
// starts (the plugin) inherit that netns.
func inNS(t *testing.T, path string, f func() error) error {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return f() })
}

// fakeDaemon is an in-memory paddockd backend.
type fakeDaemon struct {
	mu          sync.Mutex
	sandboxes   map[api.Key]api.Sandbox
	ready       bool
	enforced    string
	registerErr error
	// policies, when set, are the only policy names paddockd knows, as
	// paddockd knows the files of its policy dir.
	policies map[string]bool
}

func (f *fakeDaemon) Register(_ context.Context, sb api.Sandbox) (api.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.registerErr != nil {
		return api.Sandbox{}, f.registerErr
	}
	if f.policies != nil && !f.policies[sb.Policy] {
		return api.Sandbox{}, fmt.Errorf("%w %q: no %s.yaml in the policy dir", api.ErrUnknownPolicy, sb.Policy, sb.Policy)
	}
	f.sandboxes[sb.Key()] = sb
	return sb, nil
}

func (f *fakeDaemon) Unregister(_ context.Context, k api.Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sandboxes[k]; !ok {
		return api.ErrNotFound
	}
	delete(f.sandboxes, k)
	return nil
}

func (f *fakeDaemon) Get(_ context.Context, k api.Key) (api.SandboxStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sb, ok := f.sandboxes[k]
	if !ok {
		return api.SandboxStatus{}, api.ErrNotFound
	}
	return api.SandboxStatus{Sandbox: sb, Enforced: f.enforced}, nil
}

func (f *fakeDaemon) List(context.Context) ([]api.SandboxStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.SandboxStatus
	for _, sb := range f.sandboxes {
		out = append(out, api.SandboxStatus{Sandbox: sb, Enforced: f.enforced})
	}
	return out, nil
}

func (f *fakeDaemon) Status(context.Context) api.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return api.Status{Ready: f.ready, Version: "fake", Sandboxes: len(f.sandboxes), Message: "fake paddockd"}
}

func (f *fakeDaemon) GC(_ context.Context, req api.GCRequest) (api.GCResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	valid := map[api.Attachment]bool{}
	for _, a := range req.Valid {
		valid[a] = true
	}
	resp := api.GCResponse{Removed: []api.Key{}}
	for k := range f.sandboxes {
		if k.Network == req.Network && !valid[api.Attachment{ContainerID: k.ContainerID, IfName: k.IfName}] {
			delete(f.sandboxes, k)
			resp.Removed = append(resp.Removed, k)
		}
	}
	return resp, nil
}

func (f *fakeDaemon) set(fn func(*fakeDaemon)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeDaemon) registered(k api.Key) (api.Sandbox, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sb, ok := f.sandboxes[k]
	return sb, ok
}

// world is one test's node: netns, fake paddockd, CNI config and dirs.
type world struct {
	t       *testing.T
	node    string // netns path where the plugin runs
	socket  string
	daemon  *fakeDaemon
	srv     *http.Server
	dataDir string // host-local's
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	network string
	version string
}

// newWorld builds a node for one spec version; ipamRanges replaces the
// default host-local range, extra adds fields to the plugin's config.
func newWorld(t *testing.T, version, ipamRanges string, extra ...string) *world {
	t.Helper()
	requireRoot(t)
	bins := cniBins(t)
	dir := t.TempDir()
	w := &world{
		t:       t,
		node:    newNetns(t, "node"),
		socket:  filepath.Join(dir, "paddockd.sock"),
		daemon:  &fakeDaemon{sandboxes: map[api.Key]api.Sandbox{}, ready: true},
		dataDir: filepath.Join(dir, "ipam"),
		network: "pdktest-" + randSuffix(t),
		version: version,
	}
	w.startDaemon()
	t.Cleanup(w.stopDaemon)
	if ipamRanges == "" {
		ipamRanges = `[[{"subnet": "10.208.0.0/24"}]]`
	}
	conflist := fmt.Sprintf(`{
		"cniVersion": %q, "name": %q,
		"plugins": [{
			"type": "paddock", "policy": "agents", "daemonSocket": %q,%s
			"ipam": {"type": "host-local", "ranges": %s, "dataDir": %q}
		}]}`, version, w.network, w.socket, strings.Join(extra, ""), ipamRanges, w.dataDir)
	list, err := libcni.ConfListFromBytes([]byte(conflist))
	if err != nil {
		t.Fatal(err)
	}
	w.list = list
	w.cni = libcni.NewCNIConfigWithCacheDir([]string{bins}, filepath.Join(dir, "cache"), nil)
	return w
}

func (w *world) startDaemon() {
	w.t.Helper()
	_ = os.Remove(w.socket)
	l, err := net.Listen("unix", w.socket)
	if err != nil {
		w.t.Fatal(err)
	}
	srv := &http.Server{Handler: api.Handler(w.daemon), ReadHeaderTimeout: 5 * time.Second}
	w.srv = srv
	go func() { _ = srv.Serve(l) }()
}

func (w *world) stopDaemon() {
	if w.srv != nil {
		_ = w.srv.Close()
		w.srv = nil
	}
}

// sandbox is one attachment's runtime parameters.
func (w *world) sandbox(prefix string) *libcni.RuntimeConf {
	w.t.Helper()
	return &libcni.RuntimeConf{
		ContainerID: prefix + "-" + randSuffix(w.t),
		NetNS:       newNetns(w.t, "sb"),
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "agents"}, {"K8S_POD_NAME", "claude-1"}},
	}
}

func (w *world) key(rt *libcni.RuntimeConf) api.Key {
	return api.Key{Network: w.network, ContainerID: rt.ContainerID, IfName: rt.IfName}
}

func (w *world) add(rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := inNS(w.t, w.node, func() error {
		var err error
		res, err = w.cni.AddNetworkList(context.Background(), w.list, rt)
		return err
	})
	return res, err
}

func (w *world) check(rt *libcni.RuntimeConf) error {
	return inNS(w.t, w.node, func() error { return w.cni.CheckNetworkList(context.Background(), w.list, rt) })
}

func (w *world) del(rt *libcni.RuntimeConf) error {
	return inNS(w.t, w.node, func() error { return w.cni.DelNetworkList(context.Background(), w.list, rt) })
}

func (w *world) status() error {
	return inNS(w.t, w.node, func() error { return w.cni.GetStatusNetworkList(context.Background(), w.list) })
}

func (w *world) gc(args *libcni.GCArgs) error {
	return inNS(w.t, w.node, func() error { return w.cni.GCNetworkList(context.Background(), w.list, args) })
}

// leases lists host-local's reservation files for the network.
func (w *world) leases() []string {
	w.t.Helper()
	entries, err := os.ReadDir(filepath.Join(w.dataDir, w.network))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if ip := net.ParseIP(e.Name()); ip != nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// nodeLinks returns the names of paddock's host veths in the node netns.
func (w *world) nodeLinks() []string {
	w.t.Helper()
	var names []string
	err := inNS(w.t, w.node, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			if len(i.Name) > 3 && i.Name[:3] == hostVethPrefix {
				names = append(names, i.Name)
			}
		}
		return err
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return names
}

// cniCode returns the CNI error code carried by err, or 0.
func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
