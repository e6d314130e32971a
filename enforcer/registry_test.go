package enforcer

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

func testSandbox(cid, ip string, ifindex int) api.Sandbox {
	return api.Sandbox{
		Network:     "paddock-test",
		ContainerID: cid,
		IfName:      "eth0",
		HostVeth:    "pdk" + cid[:4],
		HostIfIndex: ifindex,
		IPs:         []netip.Prefix{netip.MustParsePrefix(ip + "/24")},
		Gateway:     netip.MustParseAddr("10.99.0.1"),
		Policy:      "default",
		Created:     time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func TestRegistryPutGetDeleteList(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	r, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v mode %v, want 0700", err, fi.Mode().Perm())
	}
	b := testSandbox("bbbbbbbbbbbbbbbb", "10.99.0.3", 12)
	a := testSandbox("aaaaaaaaaaaaaaaa", "10.99.0.2", 11)
	for _, sb := range []api.Sandbox{b, a} {
		if err := r.Put(sb); err != nil {
			t.Fatal(err)
		}
	}
	got, ok := r.Get(a.Key())
	if !ok || got.HostVeth != a.HostVeth {
		t.Fatalf("Get(a) = %+v, %v", got, ok)
	}
	list := r.List()
	if len(list) != 2 || list[0].ContainerID != a.ContainerID || list[1].ContainerID != b.ContainerID {
		t.Fatalf("List not sorted by container id: %+v", list)
	}
	if sb, ok := r.ByIP(netip.MustParseAddr("10.99.0.3")); !ok || sb.Key() != b.Key() {
		t.Fatalf("ByIP(10.99.0.3) = %v, %v", sb.Key(), ok)
	}
	if sb, ok := r.ByIP(netip.MustParseAddr("::ffff:10.99.0.2")); !ok || sb.Key() != a.Key() {
		t.Fatalf("ByIP(v4-mapped 10.99.0.2) = %v, %v", sb.Key(), ok)
	}
	if _, ok := r.ByIP(netip.MustParseAddr("10.99.0.4")); ok {
		t.Fatal("ByIP found an unregistered address")
	}
	if sb, ok := r.ByIfIndex(11); !ok || sb.Key() != a.Key() {
		t.Fatalf("ByIfIndex(11) = %v, %v", sb.Key(), ok)
	}

	// Replacing a sandbox re-indexes it: the old address is gone.
	a2 := a
	a2.IPs = []netip.Prefix{netip.MustParsePrefix("10.99.0.9/24")}
	if err := r.Put(a2); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.ByIP(netip.MustParseAddr("10.99.0.2")); ok {
		t.Fatal("old address still maps to the replaced sandbox")
	}
	if r.Len() != 2 {
		t.Fatalf("Len = %d after replace, want 2", r.Len())
	}

	old, ok, err := r.Delete(a.Key())
	if err != nil || !ok || old.IPs[0].Addr().String() != "10.99.0.9" {
		t.Fatalf("Delete(a) = %+v, %v, %v", old, ok, err)
	}
	if _, ok, err := r.Delete(a.Key()); ok || err != nil {
		t.Fatalf("second Delete(a) = %v, %v; want not found, no error", ok, err)
	}
	if _, ok := r.ByIfIndex(11); ok {
		t.Fatal("ByIfIndex still finds the deleted sandbox")
	}
	if _, ok := r.Get(a.Key()); ok {
		t.Fatal("Get still finds the deleted sandbox")
	}
}

func TestRegistryRejectsInvalidAndConflicting(t *testing.T) {
	r, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bad := testSandbox("cccccccccccccccc", "10.99.0.5", 5)
	bad.Network = ""
	if err := r.Put(bad); err == nil || !strings.Contains(err.Error(), "network name is empty") {
		t.Fatalf("Put(no network) = %v", err)
	}
	a := testSandbox("aaaaaaaaaaaaaaaa", "10.99.0.2", 11)
	if err := r.Put(a); err != nil {
		t.Fatal(err)
	}
	sameIP := testSandbox("dddddddddddddddd", "10.99.0.2", 20)
	if c := r.Conflicts(sameIP); len(c) != 1 || c[0].Key() != a.Key() {
		t.Fatalf("Conflicts(same IP) = %v", c)
	}
	if err := r.Put(sameIP); err == nil || !strings.Contains(err.Error(), a.Key().String()) {
		t.Fatalf("Put(same IP) = %v, want an error naming %s", err, a.Key())
	}
	sameIndex := testSandbox("eeeeeeeeeeeeeeee", "10.99.0.7", 11)
	if err := r.Put(sameIndex); err == nil {
		t.Fatal("Put(same ifindex) succeeded")
	}
	if r.Len() != 1 {
		t.Fatalf("refused Puts changed the registry: %v", r.List())
	}
	r2, err := OpenRegistry(filepath.Dir(r.Path()))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Len() != 1 {
		t.Fatalf("refused Puts reached the disk: %v", r2.List())
	}
}

func TestRegistryPersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := testSandbox("aaaaaaaaaaaaaaaa", "10.99.0.2", 11)
	a.Args = map[string]string{"K8S_POD_NAME": "agent"}
	b := testSandbox("bbbbbbbbbbbbbbbb", "10.99.0.3", 12)
	for _, sb := range []api.Sandbox{a, b} {
		if err := r.Put(sb); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.Delete(b.Key()); err != nil {
		t.Fatal(err)
	}
	r2, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	list := r2.List()
	if len(list) != 1 {
		t.Fatalf("reopened registry has %d sandboxes, want 1", len(list))
	}
	got := list[0]
	if got.Key() != a.Key() || got.HostIfIndex != 11 || got.Args["K8S_POD_NAME"] != "agent" ||
		!got.Created.Equal(a.Created) || got.Gateway != a.Gateway || got.IPs[0] != a.IPs[0] {
		t.Fatalf("reopened sandbox = %+v, want %+v", got, a)
	}
	if sb, ok := r2.ByIP(netip.MustParseAddr("10.99.0.2")); !ok || sb.Key() != a.Key() {
		t.Fatal("reopened registry lost its address index")
	}
	if fi, err := os.Stat(r2.Path()); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("registry file mode %v (%v): must not be readable by others", fi.Mode().Perm(), err)
	}
}

func TestRegistryLeftoverTempFileAfterCrash(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := testSandbox("aaaaaaaaaaaaaaaa", "10.99.0.2", 11)
	if err := r.Put(a); err != nil {
		t.Fatal(err)
	}
	// A kill -9 between writing the temp file and the rename leaves a
	// half-written temp file beside the intact registry.
	torn := filepath.Join(dir, "."+RegistryFile+".tmp-123456")
	if err := os.WriteFile(torn, []byte(`{"version":1,"sandboxes":[{"netw`), 0o600); err != nil {
		t.Fatal(err)
	}
	r2, err := OpenRegistry(dir)
	if err != nil {
		t.Fatalf("leftover temp file broke the load: %v", err)
	}
	if _, ok := r2.Get(a.Key()); !ok || r2.Len() != 1 {
		t.Fatalf("after crash: %v", r2.List())
	}
	if err := r2.Put(testSandbox("bbbbbbbbbbbbbbbb", "10.99.0.3", 12)); err != nil {
		t.Fatalf("write after crash: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != RegistryFile && e.Name() != filepath.Base(torn) {
			t.Errorf("write left %s behind", e.Name())
		}
	}
}

func TestRegistryCorruptFile(t *testing.T) {
	for name, content := range map[string]string{
		"truncated":   `{"version":1,"sandboxes":[{"network":"n"`,
		"not json":    "garbage\n",
		"bad version": `{"version":7,"sandboxes":[]}`,
		"empty key":   `{"version":1,"sandboxes":[{"network":"n","containerID":"","ifName":"eth0"}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, RegistryFile)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := OpenRegistry(dir)
			if err == nil {
				t.Fatal("corrupt registry loaded without error")
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file %s", err, path)
			}
			// The file is kept for the operator to inspect.
			if b, _ := os.ReadFile(path); string(b) != content {
				t.Fatal("corrupt registry file was modified")
			}
		})
	}
}

func TestRegistryConcurrent(t *testing.T) {
	r, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 5 {
				n := i*5 + j
				sb := testSandbox(fmt.Sprintf("%016d", n), fmt.Sprintf("10.99.1.%d", n+1), 100+n)
				if err := r.Put(sb); err != nil {
					t.Error(err)
					return
				}
				r.ByIP(sb.IPs[0].Addr())
				r.List()
			}
		})
	}
	wg.Wait()
	if r.Len() != 40 {
		t.Fatalf("Len = %d, want 40", r.Len())
	}
	r2, err := OpenRegistry(filepath.Dir(r.Path()))
	if err != nil || r2.Len() != 40 {
		t.Fatalf("reopened: %v, %d sandboxes", err, r2.Len())
	}
}

// BenchmarkRegistryByIP is the per-connection lookup with 1000 sandboxes.
func BenchmarkRegistryByIP(b *testing.B) {
	r, err := OpenRegistry(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	sbs := make([]api.Sandbox, 1000)
	for i := range sbs {
		sbs[i] = testSandbox(fmt.Sprintf("%016d", i), fmt.Sprintf("10.99.%d.%d", i/250, i%250+1), i+1)
	}
	r.index(sbs) // one write instead of 1000
	ip := netip.MustParseAddr("10.99.2.7")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := r.ByIP(ip); !ok {
				b.Fatal("not found")
			}
		}
	})
}
