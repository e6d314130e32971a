package plugin

import (
	"context"
	"fmt"
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
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// chain turns w into a node whose network runs primary (a plugin config
// without ipam) first and paddock (without ipam) after it.
func (w *world) chain(primary string) {
	w.t.Helper()
	ipam := fmt.Sprintf(`"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.209.0.0/24"}]], "dataDir": %q}`, w.dataDir)
	conflist := fmt.Sprintf(`{"cniVersion": %q, "name": %q, "plugins": [
		{%s, %s},
		{"type": "paddock", "policy": "agents", "daemonSocket": %q}]}`, w.version, w.network, primary, ipam, w.socket)
	list, err := libcni.ConfListFromBytes([]byte(conflist))
	if err != nil {
		w.t.Fatal(err)
	}
	w.list = list
}

// paddockOnly runs one verb of the paddock entry alone, as a runtime would
// for the last plugin of the list, with prevResult (nil: none) and netns.
func (w *world) paddockOnly(verb string, rt *libcni.RuntimeConf, netns string, prev types.Result) error {
	w.t.Helper()
	net, err := libcni.InjectConf(w.list.Plugins[len(w.list.Plugins)-1], map[string]any{"name": w.network, "cniVersion": w.version})
	if err != nil {
		w.t.Fatal(err)
	}
	if prev != nil {
		if net, err = libcni.InjectConf(net, map[string]any{"prevResult": prev}); err != nil {
			w.t.Fatal(err)
		}
	}
	return inNS(w.t, w.node, func() error {
		return invoke.ExecPluginWithoutResult(context.Background(), filepath.Join(cniBins(w.t), "paddock"), net.Bytes,
			&invoke.Args{Command: verb, ContainerID: rt.ContainerID, NetNS: netns, IfName: rt.IfName, Path: cniBins(w.t)}, nil)
	})
}

// nodeLink returns the link called name in the node netns, or nil.
func (w *world) nodeLink(name string) netlink.Link {
	w.t.Helper()
	var l netlink.Link
	_ = inNS(w.t, w.node, func() error {
		l, _ = netlinksafe.LinkByName(name)
		return nil
	})
	return l
}

// TestChainedPTP: [ptp, paddock]. paddock registers ptp's host veth,
// returns ptp's result with the gateway as nameserver, CHECKs the
// attachment, and its DEL and GC remove the registration only.
func TestChainedPTP(t *testing.T) {
	forVersions(t, "0.4.0", func(t *testing.T, v string) {
		w := newWorld(t, v, "")
		w.chain(`"type": "ptp", "ipMasq": false, "mtu": 1400`)
		rt := w.sandbox("ctr")
		k := w.key(rt)
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
		t.Logf("result: %s", mustJSON(t, res))
		if len(res.Interfaces) != 2 || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != rt.NetNS || len(res.IPs) != 1 {
			t.Fatalf("result is not ptp's: %s", mustJSON(t, res))
		}
		hostName, gw := res.Interfaces[0].Name, res.IPs[0].Gateway.String()
		if !slices.Equal(res.DNS.Nameservers, []string{gw}) {
			t.Errorf("result nameservers %v, want the gateway [%s]", res.DNS.Nameservers, gw)
		}
		host := w.nodeLink(hostName)
		if host == nil {
			t.Fatalf("ptp's host veth %s is not in the node netns", hostName)
		}

		sb, ok := w.daemon.registered(k)
		if !ok {
			t.Fatalf("sandbox %s not registered", k)
		}
		if sb.HostVeth != hostName || sb.HostIfIndex != host.Attrs().Index || sb.HostMAC != host.Attrs().HardwareAddr.String() ||
			sb.SandboxMAC != res.Interfaces[1].Mac || sb.Gateway != netip.MustParseAddr(gw) || sb.Netns != rt.NetNS ||
			len(sb.IPs) != 1 || sb.IPs[0].String() != res.IPs[0].Address.String() || sb.Policy != "agents" ||
			sb.Args["K8S_POD_NAME"] != "claude-1" || sb.Args["IgnoreUnknown"] != "" {
			t.Fatalf("registration %s does not match ptp's interfaces %s", mustJSON(t, sb), mustJSON(t, res.Interfaces))
		}
		if out, err := exec.Command("ip", "netns", "exec", filepath.Base(rt.NetNS), "ping", "-c1", "-W2", gw).CombinedOutput(); err != nil {
			t.Fatalf("ping gateway from sandbox: %v\n%s", err, out)
		}

		// CHECK: whole, then enforcement missing, then registration lost.
		w.daemon.set(func(f *fakeDaemon) { f.enforced = "ok" })
		if err := w.check(rt); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.enforced = "tcx program not attached" })
		if err := w.check(rt); err == nil || !strings.Contains(err.Error(), "tcx program not attached") {
			t.Fatalf("CHECK with enforcement missing: %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.enforced = "ok"; delete(f.sandboxes, k) })
		if err := w.check(rt); err == nil || !strings.Contains(err.Error(), "not registered") {
			t.Fatalf("CHECK without registration: %v", err)
		}
		moved := sb
		moved.HostVeth, moved.HostIfIndex = "elsewhere0", 9999
		w.daemon.set(func(f *fakeDaemon) { f.sandboxes[k] = moved })
		if err := w.check(rt); err == nil || !strings.Contains(err.Error(), "elsewhere0") {
			t.Fatalf("CHECK with registration on another interface: %v", err)
		}
		w.daemon.set(func(f *fakeDaemon) { f.sandboxes[k] = sb })

		// paddock's own DEL, with and without netns and prevResult (as
		// containerd's rmp sends it), removes the registration and
		// nothing of ptp's.
		leases := w.leases()
		for _, netns := range []string{rt.NetNS, ""} {
			prev := r
			if netns == "" {
				prev = nil
			}
			if err := w.paddockOnly("DEL", rt, netns, prev); err != nil {
				t.Fatalf("paddock DEL (netns %q): %v", netns, err)
			}
			if _, ok := w.daemon.registered(k); ok {
				t.Fatal("registration left after paddock's DEL")
			}
			if w.nodeLink(hostName) == nil || !slices.Equal(w.leases(), leases) {
				t.Fatalf("paddock's DEL removed ptp's veth or lease: veth %v, leases %v (before %v)", w.nodeLink(hostName) != nil, w.leases(), leases)
			}
		}

		if v >= "1.1.0" {
			// STATUS asks paddockd, not an IPAM paddock does not have.
			if err := w.status(); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			w.daemon.set(func(f *fakeDaemon) { f.ready = false })
			if err := w.status(); cniCode(err) != types.ErrPluginNotAvailable {
				t.Fatalf("STATUS with paddockd not ready: want code 50, got %v", err)
			}
			w.daemon.set(func(f *fakeDaemon) { f.ready = true })

			// GC: valid keeps the registration; a forgotten attachment
			// loses it, and the veth stays (ptp's GC leaves veths alone,
			// paddock's must too).
			w.daemon.set(func(f *fakeDaemon) { f.sandboxes[k] = sb })
			if err := w.gcUncached(&libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: rt.ContainerID, IfName: rt.IfName}}}); err != nil {
				t.Fatalf("GC keeping the attachment: %v", err)
			}
			if _, ok := w.daemon.registered(k); !ok {
				t.Fatal("GC removed a valid registration")
			}
			if err := w.gcUncached(&libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if _, ok := w.daemon.registered(k); ok {
				t.Fatal("GC kept a stale registration")
			}
			if w.nodeLink(hostName) == nil {
				t.Fatal("GC removed ptp's host veth")
			}
		}

		if err := w.del(rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if w.nodeLink(hostName) != nil || len(w.leases()) != 0 {
			t.Errorf("ptp's DEL left its veth or lease: %v", w.leases())
		}
		if err := w.del(rt); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
		w.assertNothingLeft()
	})
}

// TestChainedUnsupportedPrimary: a bridge port, a macvlan and a prevResult
// naming an interface that is not there are refused with code 7 naming what
// the primary made; paddock registers nothing, and the runtime's DEL
// (which follows a failed ADD) succeeds.
func TestChainedUnsupportedPrimary(t *testing.T) {
	forVersions(t, "0.4.0", func(t *testing.T, v string) {
		for _, tc := range []struct {
			name, primary string
			mentions      []string
		}{
			{"bridge", `"type": "bridge", "bridge": "cbr-%s", "isGateway": true`, []string{`"eth0"`, "port of bridge cbr-", "ptp"}},
			{"macvlan", `"type": "macvlan", "master": "%s", "mode": "bridge"`, []string{`"eth0"`, "a macvlan link", "ptp"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				w := newWorld(t, v, "")
				suffix := randSuffix(t)[:6]
				arg := suffix
				if tc.name == "macvlan" {
					arg = "up" + suffix
					if out, err := exec.Command("ip", "-n", filepath.Base(w.node), "link", "add", arg, "type", "veth", "peer", "name", "upp"+suffix).CombinedOutput(); err != nil {
						t.Fatalf("%v: %s", err, out)
					}
				}
				w.chain(fmt.Sprintf(tc.primary, arg))
				rt := w.sandbox("ctr")
				_, err := w.add(rt)
				t.Logf("ADD: %v", err)
				if cniCode(err) != types.ErrInvalidNetworkConfig {
					t.Fatalf("want code 7, got %v", err)
				}
				for _, m := range tc.mentions {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error does not mention %q", m)
					}
				}
				if err := w.del(rt); err != nil {
					t.Fatalf("DEL after the failed ADD: %v", err)
				}
				w.assertNothingLeft()
			})
		}
		t.Run("interface missing", func(t *testing.T) {
			w := newWorld(t, v, "")
			w.chain(`"type": "ptp"`)
			rt := w.sandbox("ctr")
			prev, err := version.NewResult(v, []byte(fmt.Sprintf(`{"cniVersion": %q, "interfaces": [{"name": "eth0", "sandbox": %q}],
				"ips": [{"address": "10.209.0.2/24", "gateway": "10.209.0.1", "interface": 0}]}`, v, rt.NetNS)))
			if err != nil {
				t.Fatal(err)
			}
			err = w.paddockOnly("ADD", rt, rt.NetNS, prev)
			t.Logf("ADD: %v", err)
			if err == nil || !strings.Contains(err.Error(), `"eth0" is not in netns`) {
				t.Fatalf("want an error naming eth0, got %v", err)
			}
			w.assertNothingLeft()
		})
		t.Run("ipv6 from the primary", func(t *testing.T) {
			w := newWorld(t, v, "")
			w.chain(`"type": "ptp"`)
			rt := w.sandbox("ctr")
			prev, err := version.NewResult(v, []byte(fmt.Sprintf(`{"cniVersion": %q, "interfaces": [{"name": "eth0", "sandbox": %q}],
				"ips": [{"address": "2001:db8::2/64", "gateway": "2001:db8::1", "interface": 0}]}`, v, rt.NetNS)))
			if err != nil {
				t.Fatal(err)
			}
			err = w.paddockOnly("ADD", rt, rt.NetNS, prev)
			if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "IPv6") {
				t.Fatalf("want code 7 about IPv6, got %v", err)
			}
			w.assertNothingLeft()
		})
	})
}

// TestChainedPolicyRefusal: a refused policy request in chained mode fails
// before paddockd is asked anything.
func TestChainedPolicyRefusal(t *testing.T) {
	w := newWorld(t, "1.0.0", "")
	w.chain(`"type": "ptp"`)
	rt := w.sandbox("ctr")
	rt.Args = append(rt.Args, [2]string{"PADDOCK_POLICY", "open"})
	_, err := w.add(rt)
	t.Logf("ADD: %v", err)
	if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `"open"`) {
		t.Fatalf("want code 7 naming the policy, got %v", err)
	}
	if err := w.del(rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	w.assertNothingLeft()
}
