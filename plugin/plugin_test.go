package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// versions are the spec versions the plugin supports; every test that
// applies to a version runs once per version, named after it.
var versions = []string{"0.4.0", "1.0.0", "1.1.0"}

func forVersions(t *testing.T, min string, f func(t *testing.T, version string)) {
	for _, v := range versions {
		if v < min {
			continue
		}
		t.Run("spec-"+v, func(t *testing.T) { f(t, v) })
	}
}

// TestAddCheckDel covers ADD (interfaces, addresses, routes, result,
// registration), CHECK, DEL and a second DEL.
func TestAddCheckDel(t *testing.T) {
	forVersions(t, "0.4.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "")
		rt := w.sandbox("ctr")
		r, err := w.add(rt)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if r.Version() != v {
			t.Errorf("result version %s, want %s", r.Version(), v)
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			t.Fatal(err)
		}
		k := w.key(rt)
		hostName := HostVethName(k)

		// Result: host veth and sandbox interface, one IPv4, gateway as DNS.
		if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostName || res.Interfaces[0].Mac == "" ||
			res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != rt.NetNS || res.Interfaces[1].Mac == "" {
			t.Fatalf("result interfaces: %s", mustJSON(t, res.Interfaces))
		}
		if len(res.IPs) != 1 || !strings.HasPrefix(res.IPs[0].Address.String(), "10.208.0.") || res.IPs[0].Gateway.String() != "10.208.0.1" {
			t.Fatalf("result IPs: %s", mustJSON(t, res.IPs))
		}
		if !slices.Equal(res.DNS.Nameservers, []string{"10.208.0.1"}) {
			t.Errorf("result DNS nameservers %v, want [10.208.0.1]", res.DNS.Nameservers)
		}
		sandboxIP := res.IPs[0].Address.IP

		// Sandbox netns: address, gateway /32 on-link, default via gateway.
		err = ns.WithNetNSPath(rt.NetNS, func(ns.NetNS) error {
			link, err := netlinksafe.LinkByName("eth0")
			if err != nil {
				return err
			}
			if link.Attrs().MTU != DefaultMTU || link.Attrs().HardwareAddr.String() != res.Interfaces[1].Mac {
				return fmt.Errorf("eth0: mtu %d mac %s", link.Attrs().MTU, link.Attrs().HardwareAddr)
			}
			addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V4)
			if err != nil || len(addrs) != 1 || !addrs[0].IP.Equal(sandboxIP) {
				return fmt.Errorf("eth0 addresses %v (%v), want %s", addrs, err, sandboxIP)
			}
			routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			var gwLink, dflt, onlinkSubnet bool
			for _, r := range routes {
				switch {
				case r.Dst != nil && r.Dst.String() == "10.208.0.1/32" && r.Scope == netlink.SCOPE_LINK:
					gwLink = true
				case (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(net.ParseIP("10.208.0.1")):
					dflt = true
				case r.Dst != nil && r.Dst.String() == "10.208.0.0/24" && r.Gw == nil:
					onlinkSubnet = true
				}
			}
			if !gwLink || !dflt || onlinkSubnet {
				return fmt.Errorf("sandbox routes %v: gateway/32 %v, default via gateway %v, on-link subnet %v", routes, gwLink, dflt, onlinkSubnet)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		// Node netns: host veth with alias, gateway /32 and a /32 route to the sandbox.
		err = inNS(t, w.node, func() error {
			link, err := netlinksafe.LinkByName(hostName)
			if err != nil {
				return err
			}
			if link.Attrs().Alias != "paddock:"+k.String() {
				return fmt.Errorf("alias %q", link.Attrs().Alias)
			}
			if err := checkHost(hostName, res); err != nil {
				return err
			}
			routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Dst != nil && r.Dst.IP.Equal(sandboxIP) {
					if ones, _ := r.Dst.Mask.Size(); ones == 32 {
						return nil
					}
				}
			}
			return fmt.Errorf("no /32 route to %s on %s: %v", sandboxIP, hostName, routes)
		})
		if err != nil {
			t.Fatal(err)
		}

		// Registration as paddockd received it.
		sb, ok := w.daemon.registered(k)
		if !ok {
			t.Fatalf("sandbox %s not registered", k)
		}
		if sb.HostVeth != hostName || sb.HostIfIndex == 0 || sb.HostMAC != res.Interfaces[0].Mac || sb.SandboxMAC != res.Interfaces[1].Mac ||
			sb.Netns != rt.NetNS || sb.Policy != "agents" || sb.Gateway != netip.MustParseAddr("10.208.0.1") ||
			len(sb.IPs) != 1 || sb.IPs[0].Addr().String() != sandboxIP.String() || sb.IPs[0].Bits() != 24 ||
			sb.Args["K8S_POD_NAME"] != "claude-1" || sb.Args["K8S_POD_NAMESPACE"] != "agents" || sb.Created.IsZero() {
			t.Fatalf("registration: %s", mustJSON(t, sb))
		}
		if got := w.leases(); len(got) != 1 || got[0] != sandboxIP.String() {
			t.Fatalf("leases %v, want [%s]", got, sandboxIP)
		}

		// The layout carries traffic: the sandbox reaches its gateway.
		if out, err := exec.Command("ip", "netns", "exec", filepath.Base(rt.NetNS), "ping", "-c1", "-W2", "10.208.0.1").CombinedOutput(); err != nil {
			t.Fatalf("ping gateway from sandbox: %v\n%s", err, out)
		}

		if err := w.check(rt); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.enforced = "ok" })
		if err := w.check(rt); err != nil {
			t.Fatalf("CHECK with enforced=ok: %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.enforced = "tcx program not attached" })
		if err := w.check(rt); err == nil || !strings.Contains(err.Error(), "tcx program not attached") {
			t.Fatalf("CHECK with enforcement missing: %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.enforced = "ok" })

		if err := w.del(rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if l := w.nodeLinks(); len(l) != 0 {
			t.Errorf("host veths left after DEL: %v", l)
		}
		if l := w.leases(); len(l) != 0 {
			t.Errorf("leases left after DEL: %v", l)
		}
		if _, ok := w.daemon.registered(k); ok {
			t.Error("registration left after DEL")
		}
		if err := w.del(rt); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
	})
}

// TestCheckFindsDamage breaks an attachment piece by piece and expects
// CHECK to name what is missing.
func TestCheckFindsDamage(t *testing.T) {
	forVersions(t, "0.4.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "")
		rt := w.sandbox("ctr")
		if _, err := w.add(rt); err != nil {
			t.Fatal(err)
		}
		k := w.key(rt)
		w.daemon.set(func(f *fakeDaemon) { delete(f.sandboxes, k) })
		if err := w.check(rt); err == nil || !strings.Contains(err.Error(), "not registered") {
			t.Errorf("CHECK without registration: %v", err)
		}
		w.stopDaemon()
		if err := w.check(rt); cniCode(err) != types.ErrTryAgainLater {
			t.Errorf("CHECK with paddockd down: want code 11, got %v", err)
		}
		// Removing the default route inside the sandbox must be noticed.
		if out, err := exec.Command("ip", "netns", "exec", filepath.Base(rt.NetNS), "ip", "route", "del", "default").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if err := w.check(rt); err == nil || !strings.Contains(err.Error(), "routes") {
			t.Errorf("CHECK without default route: %v", err)
		}
		// Deleting the veth is noticed too.
		if err := inNS(t, w.node, func() error { return deleteHostVeth(HostVethName(k)) }); err != nil {
			t.Fatal(err)
		}
		if err := w.check(rt); err == nil || !strings.Contains(err.Error(), "eth0") {
			t.Errorf("CHECK without interface: %v", err)
		}
	})
}

// TestMTU: the configured MTU is set on both ends of the pair.
func TestMTU(t *testing.T) {
	forVersions(t, "1.0.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "", `"mtu": 9000,`)
		rt := w.sandbox("ctr")
		if _, err := w.add(rt); err != nil {
			t.Fatal(err)
		}
		var hostMTU, sandboxMTU int
		if err := inNS(t, w.node, func() error {
			l, err := netlinksafe.LinkByName(HostVethName(w.key(rt)))
			if err == nil {
				hostMTU = l.Attrs().MTU
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := ns.WithNetNSPath(rt.NetNS, func(ns.NetNS) error {
			l, err := netlinksafe.LinkByName("eth0")
			if err == nil {
				sandboxMTU = l.Attrs().MTU
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if hostMTU != 9000 || sandboxMTU != 9000 {
			t.Fatalf("MTU host %d sandbox %d, want 9000 on both", hostMTU, sandboxMTU)
		}
	})
}

// TestDelWhileDaemonDown: DEL cleans up the node while paddockd is down.
func TestDelWhileDaemonDown(t *testing.T) {
	forVersions(t, "0.4.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "")
		rt := w.sandbox("ctr")
		if _, err := w.add(rt); err != nil {
			t.Fatal(err)
		}
		w.stopDaemon()
		if err := w.del(rt); err != nil {
			t.Fatalf("DEL with paddockd down: %v", err)
		}
		if l := w.nodeLinks(); len(l) != 0 {
			t.Errorf("host veths left: %v", l)
		}
		if l := w.leases(); len(l) != 0 {
			t.Errorf("leases left: %v", l)
		}
	})
}

// TestDelEmptyNetns: containerd's second DEL has no netns and no prevResult.
func TestDelEmptyNetns(t *testing.T) {
	forVersions(t, "0.4.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "")
		rt := w.sandbox("ctr")
		if _, err := w.add(rt); err != nil {
			t.Fatal(err)
		}
		noNS := *rt
		noNS.NetNS = ""
		// A fresh cache dir: libcni sends no prevResult, as containerd's rmp.
		w.cni = libcni.NewCNIConfigWithCacheDir(w.cni.Path, t.TempDir(), nil)
		if err := w.del(&noNS); err != nil {
			t.Fatalf("DEL with empty netns: %v", err)
		}
		if l := w.nodeLinks(); len(l) != 0 {
			t.Errorf("host veths left: %v", l)
		}
		if l := w.leases(); len(l) != 0 {
			t.Errorf("leases left: %v", l)
		}
		if _, ok := w.daemon.registered(w.key(rt)); ok {
			t.Error("registration left")
		}
		if err := w.del(&noNS); err != nil {
			t.Fatalf("second DEL with empty netns: %v", err)
		}
	})
}

// TestAddFailsClosed: whenever ADD cannot end with an enforced sandbox it
// fails with a clear code and leaves no veth, lease or registration.
func TestAddFailsClosed(t *testing.T) {
	forVersions(t, "0.4.0", func(t *testing.T, v string) {
		t.Run("paddockd down", func(t *testing.T) {
			w := newWorld(t, v, "")
			w.stopDaemon()
			_, err := w.add(w.sandbox("ctr"))
			t.Logf("ADD: %v", err)
			if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), w.socket) {
				t.Fatalf("want code 11 naming %s, got %v", w.socket, err)
			}
			w.assertNothingLeft()
		})
		t.Run("paddockd not ready", func(t *testing.T) {
			w := newWorld(t, v, "")
			w.daemon.set(func(f *fakeDaemon) { f.ready = false })
			if _, err := w.add(w.sandbox("ctr")); cniCode(err) != types.ErrTryAgainLater {
				t.Fatalf("want code 11, got %v", err)
			}
			w.assertNothingLeft()
		})
		t.Run("registration refused", func(t *testing.T) {
			w := newWorld(t, v, "")
			w.daemon.set(func(f *fakeDaemon) { f.registerErr = errors.New("policy agents does not exist") })
			_, err := w.add(w.sandbox("ctr"))
			if err == nil || !strings.Contains(err.Error(), "policy agents does not exist") {
				t.Fatalf("want paddockd's reason, got %v", err)
			}
			w.assertNothingLeft()
		})
		t.Run("ifname exists", func(t *testing.T) {
			w := newWorld(t, v, "")
			first := w.sandbox("ctr")
			if _, err := w.add(first); err != nil {
				t.Fatal(err)
			}
			second := w.sandbox("other")
			second.NetNS = first.NetNS
			_, err := w.add(second)
			t.Logf("ADD: %v", err)
			if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `"eth0"`) {
				t.Fatalf("want code 7 naming eth0, got %v", err)
			}
			if l := w.nodeLinks(); len(l) != 1 {
				t.Errorf("host veths %v, want only the first attachment's", l)
			}
			if l := w.leases(); len(l) != 1 {
				t.Errorf("leases %v, want only the first attachment's", l)
			}
			if _, ok := w.daemon.registered(w.key(second)); ok {
				t.Error("second attachment registered")
			}
		})
		t.Run("host veth exists", func(t *testing.T) {
			w := newWorld(t, v, "")
			rt := w.sandbox("ctr")
			name := HostVethName(w.key(rt))
			if out, err := exec.Command("ip", "-n", filepath.Base(w.node), "link", "add", name, "type", "veth", "peer", "name", "other"+randSuffix(t)[:4]).CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			_, err := w.add(rt)
			t.Logf("ADD: %v", err)
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("want an error naming %s, got %v", name, err)
			}
			if l := w.nodeLinks(); !slices.Equal(l, []string{name}) {
				t.Errorf("the pre-existing veth must survive the failed ADD: links %v", l)
			}
			if l := w.leases(); len(l) != 0 {
				t.Errorf("leases left: %v", l)
			}
		})
		t.Run("ipv6 from ipam", func(t *testing.T) {
			w := newWorld(t, v, `[[{"subnet": "10.208.0.0/24"}], [{"subnet": "2001:db8::/64"}]]`)
			_, err := w.add(w.sandbox("ctr"))
			t.Logf("ADD: %v", err)
			if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "IPv6") {
				t.Fatalf("want code 7 about IPv6, got %v", err)
			}
			w.assertNothingLeft()
		})
		t.Run("prevResult with ipam", func(t *testing.T) {
			w := newWorld(t, v, "")
			rt := w.sandbox("ctr")
			stdin := fmt.Sprintf(`{"cniVersion": %q, "name": %q, "type": "paddock", "daemonSocket": %q,
				"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.208.0.0/24"}]], "dataDir": %q},
				"prevResult": {"cniVersion": %q, "interfaces": [{"name": "eth0", "sandbox": %q}], "ips": [{"address": "10.9.0.2/24", "interface": 0}]}}`,
				v, w.network, w.socket, w.dataDir, v, rt.NetNS)
			err := inNS(t, w.node, func() error {
				_, err := invoke.ExecPluginWithResult(context.Background(), filepath.Join(cniBins(t), "paddock"), []byte(stdin),
					&invoke.Args{Command: "ADD", ContainerID: rt.ContainerID, NetNS: rt.NetNS, IfName: "eth0", Path: cniBins(t)}, nil)
				return err
			})
			t.Logf("ADD: %v", err)
			if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "remove it, the primary plugin allocates") {
				t.Fatalf("want code 7 asking to remove ipam, got %v", err)
			}
			w.assertNothingLeft()
		})
	})
}

func (w *world) assertNothingLeft() {
	w.t.Helper()
	if l := w.nodeLinks(); len(l) != 0 {
		w.t.Errorf("host veths left: %v", l)
	}
	if l := w.leases(); len(l) != 0 {
		w.t.Errorf("leases left: %v", l)
	}
	w.daemon.mu.Lock()
	defer w.daemon.mu.Unlock()
	if len(w.daemon.sandboxes) != 0 {
		w.t.Errorf("registrations left: %v", w.daemon.sandboxes)
	}
}

// TestStatus (1.1.0): ready, not ready, unreachable.
func TestStatus(t *testing.T) {
	forVersions(t, "1.1.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "")
		if err := w.status(); err != nil {
			t.Fatalf("STATUS with paddockd ready: %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.ready = false })
		if err := w.status(); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), w.socket) {
			t.Fatalf("STATUS with paddockd not ready: want code 50 naming the socket, got %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.ready = true })
		w.stopDaemon()
		if err := w.status(); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), w.socket) {
			t.Fatalf("STATUS with paddockd down: want code 50 naming the socket, got %v", err)
		}
	})
}

// TestGC (1.1.0): an attachment the runtime forgot (no DEL ever came) is
// removed — veth, lease, registration — and a valid one is kept.
func TestGC(t *testing.T) {
	forVersions(t, "1.1.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "")
		keep := w.sandbox("keep")
		if _, err := w.add(keep); err != nil {
			t.Fatal(err)
		}
		// The stale attachment is added through another cache dir, so
		// libcni's GC cannot DEL it itself: only the plugin's GC can.
		stale := w.sandbox("stale")
		main := w.cni
		w.cni = libcni.NewCNIConfigWithCacheDir(main.Path, t.TempDir(), nil)
		if _, err := w.add(stale); err != nil {
			t.Fatal(err)
		}
		w.cni = main
		if l := w.leases(); len(l) != 2 {
			t.Fatalf("leases before GC: %v", l)
		}

		// Without cni.dev/valid-attachments nothing may be removed. (With
		// its cache, libcni itself would DEL everything cached first.)
		err := w.gcUncached(nil)
		t.Logf("GC: %v", err)
		if err != nil {
			t.Fatalf("GC without valid attachments: want success that removes nothing, got %v", err)
		}
		if l := w.nodeLinks(); len(l) != 2 {
			t.Fatalf("GC without a list removed veths: %v left", l)
		}
		if l := w.leases(); len(l) != 2 {
			t.Fatalf("GC without a list removed leases: %v left", l)
		}

		err = w.gc(&libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: keep.IfName}}})
		if err != nil {
			t.Fatalf("GC: %v", err)
		}
		if l := w.nodeLinks(); !slices.Equal(l, []string{HostVethName(w.key(keep))}) {
			t.Errorf("host veths after GC %v, want only %s", l, HostVethName(w.key(keep)))
		}
		if l := w.leases(); len(l) != 1 {
			t.Errorf("leases after GC: %v, want one", l)
		}
		if _, ok := w.daemon.registered(w.key(stale)); ok {
			t.Error("stale registration survived GC")
		}
		if _, ok := w.daemon.registered(w.key(keep)); !ok {
			t.Error("valid registration removed by GC")
		}
		if err := w.check(keep); err != nil {
			t.Errorf("CHECK of the kept attachment after GC: %v", err)
		}

		// A veth whose registration paddockd lost is found by its alias.
		w.daemon.set(func(f *fakeDaemon) { f.sandboxes = map[api.Key]api.Sandbox{} })
		if err := w.gcUncached(&libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
			t.Fatalf("GC with empty list: %v", err)
		}
		w.assertNothingLeft()
	})
}

// gcUncached runs GC through a libcni with an empty cache, so that only the
// plugin's GC (not libcni's DEL of cached attachments) removes anything.
func (w *world) gcUncached(args *libcni.GCArgs) error {
	c := libcni.NewCNIConfigWithCacheDir(w.cni.Path, w.t.TempDir(), nil)
	return inNS(w.t, w.node, func() error { return c.GCNetworkList(context.Background(), w.list, args) })
}
