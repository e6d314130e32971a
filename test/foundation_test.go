package test

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/paddock-sandbox/paddock/plugin"
	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/world"
)

// The foundation tests prove the CNI plugin and the real paddockd together
// in a world: every verb of every spec version, through libcni and through
// the bare binary as a runtime without libcni runs it, plus the failure
// cases a runtime meets (paddockd down, bad configuration, restarts).

// shortVer turns "1.0.0" into "100" for names.
func shortVer(v string) string { return strings.ReplaceAll(v, ".", "") }

// assertGone checks that an attachment left nothing: no host veth, no
// lease, only lo in its namespace, no registration.
func assertGone(t *testing.T, w *world.World, d *world.Daemon, k api.Key, netnsPath string) {
	t.Helper()
	if v := nodeVeths(t, w); slices.Contains(v, plugin.HostVethName(k)) {
		t.Errorf("host veth %s left in node: %v", plugin.HostVethName(k), v)
	}
	if netnsPath != "" {
		if l := netnsLinks(t, netnsPath); !slices.Equal(l, []string{"lo"}) {
			t.Errorf("interfaces left in %s: %v", netnsPath, l)
		}
	}
	if d != nil {
		assertUnregistered(t, w, d, k)
	}
}

// ADD, CHECK, STATUS, GC and DEL of each spec version through libcni, as
// containerd and podman call them.
func TestFoundationLibcni(t *testing.T) {
	w := newWorld(t)
	d := readyDaemon(t, w)
	cni := w.CNIConfig()
	for _, v := range specVersions {
		t.Run("spec-"+v, func(t *testing.T) {
			list, err := w.ConfListFor(world.SandboxOptions{CNIVersion: v})
			if err != nil {
				t.Fatal(err)
			}
			netnsPath := newNetns(t, w, "lc"+shortVer(v))
			rt := &libcni.RuntimeConf{ContainerID: "libcni-" + shortVer(v), NetNS: netnsPath, IfName: "eth0"}
			k := key(w, rt.ContainerID, rt.IfName)
			ctx, cancel := context.WithTimeout(context.Background(), 4*opTimeout)
			defer cancel()
			// The cleanup outlives ctx: it gets its own deadline.
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				defer cancel()
				_ = w.InNode(func() error { return cni.DelNetworkList(ctx, list, rt) })
			})

			var res types.Result
			if err := w.InNode(func() (err error) { res, err = cni.AddNetworkList(ctx, list, rt); return }); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			raw, err := json.Marshal(res)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("ADD result: %s", raw)
			addr := assertResult(t, w, raw, v, rt.ContainerID, rt.IfName, netnsPath)
			assertWired(t, w, netnsPath, rt.IfName, addr, plugin.HostVethName(k))
			assertRegistered(t, w, d, k, netnsPath, addr)
			if l := leases(t, w); !slices.Contains(l, addr.Addr().String()) {
				t.Errorf("host-local leases %v lack %s", l, addr.Addr())
			}

			if err := w.InNode(func() error { return cni.CheckNetworkList(ctx, list, rt) }); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if v >= "1.1.0" {
				if err := w.InNode(func() error { return cni.GetStatusNetworkList(ctx, list) }); err != nil {
					t.Errorf("STATUS: %v", err)
				}
				valid := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: rt.ContainerID, IfName: rt.IfName}}}
				if err := w.InNode(func() error { return cni.GCNetworkList(ctx, list, valid) }); err != nil {
					t.Errorf("GC: %v", err)
				}
				assertRegistered(t, w, d, k, netnsPath, addr)
				if err := w.InNode(func() error { return cni.CheckNetworkList(ctx, list, rt) }); err != nil {
					t.Errorf("CHECK after a GC that lists the attachment: %v", err)
				}
			}

			for i := 1; i <= 2; i++ {
				if err := w.InNode(func() error { return cni.DelNetworkList(ctx, list, rt) }); err != nil {
					t.Errorf("DEL #%d: %v", i, err)
				}
			}
			assertGone(t, w, d, k, netnsPath)
			if l := leases(t, w); slices.Contains(l, addr.Addr().String()) {
				t.Errorf("lease %s survived DEL: %v", addr.Addr(), l)
			}
		})
	}
}

// The same verbs through the compiled plugin exec'd directly with CNI_*
// variables and the configuration on stdin, as a runtime without libcni
// does: ADD, CHECK with prevResult, STATUS and GC (1.1.0), DEL with
// prevResult, DEL again, and DEL with an empty CNI_NETNS as containerd's
// `rmp` sends it.
func TestFoundationExec(t *testing.T) {
	w := newWorld(t)
	d := readyDaemon(t, w)
	for _, v := range specVersions {
		t.Run("spec-"+v, func(t *testing.T) {
			netnsPath := newNetns(t, w, "ex"+shortVer(v))
			call := execCall{ContainerID: "exec-" + shortVer(v), Netns: netnsPath, IfName: "eth0", Args: "IgnoreUnknown=1;K8S_POD_NAME=agent"}
			k := key(w, call.ContainerID, call.IfName)
			conf := pluginConf(w, v, nil)
			t.Cleanup(func() { c := call; c.Command = "DEL"; execPlugin(t, w, c, conf) })

			call.Command = "ADD"
			raw, cerr := execPlugin(t, w, call, conf)
			if cerr != nil {
				t.Fatalf("ADD: %v", cerr)
			}
			addr := assertResult(t, w, raw, v, call.ContainerID, call.IfName, netnsPath)
			assertWired(t, w, netnsPath, call.IfName, addr, plugin.HostVethName(k))
			assertRegistered(t, w, d, k, netnsPath, addr)
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			if sb, err := d.Client().Get(ctx, k); err == nil && sb.Args["K8S_POD_NAME"] != "agent" {
				t.Errorf("registered CNI_ARGS %v, want K8S_POD_NAME=agent", sb.Args)
			}

			var prev map[string]any
			if err := json.Unmarshal(raw, &prev); err != nil {
				t.Fatal(err)
			}
			withPrev := withKey(t, conf, "prevResult", prev)
			call.Command = "CHECK"
			if _, cerr := execPlugin(t, w, call, withPrev); cerr != nil {
				t.Errorf("CHECK: %v", cerr)
			}
			if v >= "1.1.0" {
				// STATUS and GC carry no container, netns or ifname.
				status := execCall{Command: "STATUS"}
				if _, cerr := execPlugin(t, w, status, conf); cerr != nil {
					t.Errorf("STATUS: %v", cerr)
				}
				gc := execCall{Command: "GC"}
				valid := []map[string]string{{"containerID": call.ContainerID, "ifname": call.IfName}}
				if _, cerr := execPlugin(t, w, gc, withKey(t, conf, "cni.dev/valid-attachments", valid)); cerr != nil {
					t.Errorf("GC: %v", cerr)
				}
				assertRegistered(t, w, d, k, netnsPath, addr)
				if _, cerr := execPlugin(t, w, call, withPrev); cerr != nil {
					t.Errorf("CHECK after a GC that lists the attachment: %v", cerr)
				}
			}

			call.Command = "DEL"
			for i := 1; i <= 2; i++ {
				if _, cerr := execPlugin(t, w, call, withPrev); cerr != nil {
					t.Errorf("DEL #%d: %v", i, cerr)
				}
			}
			noNetns := call
			noNetns.Netns = ""
			if _, cerr := execPlugin(t, w, noNetns, conf); cerr != nil {
				t.Errorf("DEL with empty CNI_NETNS and no prevResult: %v", cerr)
			}
			assertGone(t, w, d, k, netnsPath)
			if l := leases(t, w); slices.Contains(l, addr.Addr().String()) {
				t.Errorf("lease %s survived DEL: %v", addr.Addr(), l)
			}
		})
	}
}

// GC removes a stale attachment (host veth, host-local lease, registration)
// while a valid one survives: one stale attachment added by the bare
// binary, one through libcni with a cache the GC's libcni does not see, so
// only the plugin's own GC can find them.
func TestFoundationGC(t *testing.T) {
	w := newWorld(t)
	d := readyDaemon(t, w)
	list, err := w.ConfListFor(world.SandboxOptions{CNIVersion: "1.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*opTimeout)
	defer cancel()
	cni := w.CNIConfig()
	otherCache := libcni.NewCNIConfigWithCacheDir([]string{w.CNIPath()}, t.TempDir(), nil)

	keepNS := newNetns(t, w, "keep")
	keep := &libcni.RuntimeConf{ContainerID: "gc-keep", NetNS: keepNS, IfName: "eth0"}
	staleNS := newNetns(t, w, "stale")
	stale := &libcni.RuntimeConf{ContainerID: "gc-stale", NetNS: staleNS, IfName: "eth0"}
	execNS := newNetns(t, w, "stalex")
	staleExec := execCall{Command: "ADD", ContainerID: "gc-stale-exec", Netns: execNS, IfName: "net1"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*opTimeout)
		defer cancel()
		_ = w.InNode(func() error { return cni.DelNetworkList(ctx, list, keep) })
		_ = w.InNode(func() error { return otherCache.DelNetworkList(ctx, list, stale) })
		c := staleExec
		c.Command = "DEL"
		execPlugin(t, w, c, pluginConf(w, "1.1.0", nil))
	})

	var keepRes types.Result
	if err := w.InNode(func() (err error) { keepRes, err = cni.AddNetworkList(ctx, list, keep); return }); err != nil {
		t.Fatalf("ADD keep: %v", err)
	}
	if err := w.InNode(func() error { _, err := otherCache.AddNetworkList(ctx, list, stale); return err }); err != nil {
		t.Fatalf("ADD stale: %v", err)
	}
	if _, cerr := execPlugin(t, w, staleExec, pluginConf(w, "1.1.0", nil)); cerr != nil {
		t.Fatalf("ADD stale (exec): %v", cerr)
	}
	if l := leases(t, w); len(l) != 3 {
		t.Fatalf("leases before GC: %v, want 3", l)
	}
	if v := nodeVeths(t, w); len(v) != 3 {
		t.Fatalf("host veths before GC: %v, want 3", v)
	}

	valid := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: keep.IfName}}}
	if err := w.InNode(func() error { return cni.GCNetworkList(ctx, list, valid) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	keepKey := key(w, keep.ContainerID, keep.IfName)
	if v := nodeVeths(t, w); !slices.Equal(v, []string{plugin.HostVethName(keepKey)}) {
		t.Errorf("host veths after GC: %v, want only %s", v, plugin.HostVethName(keepKey))
	}
	raw, _ := json.Marshal(keepRes)
	addr := assertResult(t, w, raw, "1.1.0", keep.ContainerID, keep.IfName, keepNS)
	if l := leases(t, w); !slices.Equal(l, []string{addr.Addr().String()}) {
		t.Errorf("leases after GC: %v, want only %s", l, addr.Addr())
	}
	assertGone(t, w, d, key(w, stale.ContainerID, stale.IfName), staleNS)
	assertGone(t, w, d, key(w, staleExec.ContainerID, staleExec.IfName), execNS)
	assertRegistered(t, w, d, keepKey, keepNS, addr)
	assertWired(t, w, keepNS, keep.IfName, addr, plugin.HostVethName(keepKey))
	if err := w.InNode(func() error { return cni.CheckNetworkList(ctx, list, keep) }); err != nil {
		t.Errorf("CHECK of the kept attachment after GC: %v", err)
	}
	if st := cliStatus(t, w).Status; st.Sandboxes != 1 {
		t.Errorf("paddock status counts %d sandboxes after GC, want 1", st.Sandboxes)
	}
}

// DEL succeeds while paddockd is down and removes the veth and the lease;
// the registration it could not remove is paddockd's to settle. After a
// restart paddockd has pruned it (its host veth is gone) and is Ready:
// runtimes never send GC, so a paddockd that kept the registration would
// fail its reconcile on the missing device and refuse every later ADD.
func TestFoundationDelWhileDaemonDown(t *testing.T) {
	w := newWorld(t)
	d := readyDaemon(t, w)
	netnsPath := newNetns(t, w, "down")
	conf := pluginConf(w, "1.0.0", nil)
	call := execCall{Command: "ADD", ContainerID: "down-del", Netns: netnsPath, IfName: "eth0"}
	k := key(w, call.ContainerID, call.IfName)
	raw, cerr := execPlugin(t, w, call, conf)
	if cerr != nil {
		t.Fatalf("ADD: %v", cerr)
	}
	addr := assertResult(t, w, raw, "1.0.0", call.ContainerID, call.IfName, netnsPath)

	if err := d.Stop(); err != nil {
		t.Fatalf("SIGTERM paddockd: %v", err)
	}
	call.Command = "DEL"
	for i := 1; i <= 2; i++ {
		if _, cerr := execPlugin(t, w, call, conf); cerr != nil {
			t.Fatalf("DEL #%d with paddockd down: %v", i, cerr)
		}
	}
	assertGone(t, w, nil, k, netnsPath)
	if l := leases(t, w); slices.Contains(l, addr.Addr().String()) {
		t.Errorf("lease %s survived DEL with paddockd down: %v", addr.Addr(), l)
	}

	if err := d.Restart(); err != nil {
		t.Fatalf("restart paddockd: %v", err)
	}
	if st, err := d.WaitReady(15 * time.Second); err != nil {
		t.Errorf("after a DEL it missed and a restart paddockd is not ready, so it refuses every ADD: %v (components %v)", err, st.Components)
	}
	if sb, ok := cliStatus(t, w).registered(k); ok {
		t.Errorf("after restart paddockd still lists %s although its host veth %s is gone (enforced %q)", k, sb.HostVeth, sb.Enforced)
	}
	// The next sandbox attaches as usual.
	next := execCall{Command: "ADD", ContainerID: "down-next", Netns: newNetns(t, w, "next"), IfName: "eth0"}
	if _, cerr := execPlugin(t, w, next, conf); cerr != nil {
		t.Errorf("ADD after the restart: %v", cerr)
	}
	next.Command = "DEL"
	if _, cerr := execPlugin(t, w, next, conf); cerr != nil {
		t.Errorf("DEL of the next sandbox: %v", cerr)
	}
	// A GC that does not list the attachment has nothing left to remove.
	gc := withKey(t, pluginConf(w, "1.1.0", nil), "cni.dev/valid-attachments", []any{})
	if _, cerr := execPlugin(t, w, execCall{Command: "GC"}, gc); cerr != nil {
		t.Fatalf("GC after restart: %v", cerr)
	}
	assertUnregistered(t, w, d, k)
	if st, err := d.WaitReady(opTimeout); err != nil {
		t.Errorf("paddockd not ready after the GC: %v (%+v)", err, st)
	}
}

// ADD while paddockd is down (never started, then killed with its socket
// file left behind) fails with CNI error 11 naming the socket and leaves
// nothing: no veth in node, no lease, no interface in the sandbox.
func TestFoundationAddWhileDaemonDown(t *testing.T) {
	w := newWorld(t)
	check := func(t *testing.T, name string) {
		netnsPath := newNetns(t, w, name)
		call := execCall{Command: "ADD", ContainerID: "down-" + name, Netns: netnsPath, IfName: "eth0"}
		_, cerr := execPlugin(t, w, call, pluginConf(w, "1.0.0", nil))
		if cerr == nil {
			t.Fatal("ADD succeeded without paddockd")
		}
		if cerr.Code != types.ErrTryAgainLater || !strings.Contains(cerr.Msg, w.DaemonSocket()) {
			t.Errorf("ADD error %d %q, want code %d naming %s", cerr.Code, cerr.Msg, types.ErrTryAgainLater, w.DaemonSocket())
		}
		if v := nodeVeths(t, w); len(v) != 0 {
			t.Errorf("host veths left in node: %v", v)
		}
		if l := leases(t, w); len(l) != 0 {
			t.Errorf("leases left: %v", l)
		}
		if l := netnsLinks(t, netnsPath); !slices.Equal(l, []string{"lo"}) {
			t.Errorf("interfaces left in the sandbox: %v", l)
		}
		// libcni fails the same way.
		list, err := w.ConfListFor(world.SandboxOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		rt := &libcni.RuntimeConf{ContainerID: call.ContainerID + "-lc", NetNS: netnsPath, IfName: "eth0"}
		err = w.InNode(func() error { _, err := w.CNIConfig().AddNetworkList(ctx, list, rt); return err })
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater {
			t.Errorf("libcni ADD: %v, want CNI error %d", err, types.ErrTryAgainLater)
		}
		if v, l := nodeVeths(t, w), leases(t, w); len(v)+len(l) != 0 {
			t.Errorf("libcni ADD left veths %v, leases %v", v, l)
		}
	}
	t.Run("never-started", func(t *testing.T) { check(t, "nod") })
	t.Run("killed", func(t *testing.T) {
		d := w.StartDaemon(t)
		if err := d.Kill(); err != nil {
			t.Fatal(err)
		}
		check(t, "killed")
	})
}

// Every bad configuration is refused by the real binary with CNI error 7,
// a message naming the bad value, and nothing left behind. The plugin reads
// its configuration before it asks paddockd anything, so these hold whether
// or not paddockd is ready; an existing interface is found only once
// paddockd has said it is ready.
func TestFoundationBadConfig(t *testing.T) {
	w := newWorld(t)
	d := w.StartDaemon(t)
	cases := []struct {
		name     string
		override map[string]any
		ifExists bool
		want     string
	}{
		{name: "missing-ipam", override: map[string]any{"ipam": nil}, want: "ipam is missing"},
		{name: "ipam-not-object", override: map[string]any{"ipam": "host-local"}, want: "ipam"},
		{name: "ipam-no-type", override: map[string]any{"ipam": map[string]any{"ranges": [][]map[string]string{{{"subnet": w.Subnet.String()}}}}}, want: "no type"},
		{name: "ipam-type-path", override: map[string]any{"ipam": map[string]any{"type": "../host-local"}}, want: `"../host-local"`},
		{name: "mtu-too-small", override: map[string]any{"mtu": 100}, want: "mtu 100"},
		{name: "mtu-not-number", override: map[string]any{"mtu": "big"}, want: "mtu"},
		{name: "policy-name", override: map[string]any{"policy": "Bad Policy!"}, want: `"Bad Policy!"`},
		{name: "ifname-exists", ifExists: true, want: `"eth0" already exists`},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			netnsPath := newNetns(t, w, fmt.Sprintf("bad%d", i))
			nsName := strings.TrimPrefix(netnsPath, "/run/netns/")
			if c.ifExists {
				if st, err := d.WaitReady(15 * time.Second); err != nil {
					t.Fatalf("paddockd is not ready, so ADD stops before it looks at the interface: %v (components %v)", err, st.Components)
				}
				if out, err := exec.Command("ip", "-n", nsName, "link", "add", "eth0", "type", "veth", "peer", "name", "taken0").CombinedOutput(); err != nil {
					t.Fatalf("make eth0 in the sandbox: %v: %s", err, out)
				}
			}
			before := netnsLinks(t, netnsPath)
			call := execCall{Command: "ADD", ContainerID: "bad-" + c.name, Netns: netnsPath, IfName: "eth0"}
			_, cerr := execPlugin(t, w, call, pluginConf(w, "1.0.0", c.override))
			if cerr == nil {
				t.Fatal("ADD accepted the bad configuration")
			}
			t.Logf("ADD: %d %s", cerr.Code, cerr.Msg)
			if cerr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cerr.Msg, c.want) {
				t.Errorf("ADD error %d %q, want code %d mentioning %s", cerr.Code, cerr.Msg, types.ErrInvalidNetworkConfig, c.want)
			}
			if v := nodeVeths(t, w); len(v) != 0 {
				t.Errorf("host veths left in node: %v", v)
			}
			if l := leases(t, w); len(l) != 0 {
				t.Errorf("leases left: %v", l)
			}
			if l := netnsLinks(t, netnsPath); !slices.Equal(l, before) {
				t.Errorf("sandbox interfaces %v, before ADD %v", l, before)
			}
			assertUnregistered(t, w, d, key(w, call.ContainerID, call.IfName))
		})
	}
}

// paddockd keeps its registry across SIGTERM and kill -9: both sandboxes
// are listed by `paddock status --json` after each restart and still pass
// CHECK.
func TestFoundationRestartKeepsRegistry(t *testing.T) {
	w := newWorld(t)
	d := readyDaemon(t, w)
	var sbs []*world.Sandbox
	for _, name := range []string{"one", "two"} {
		sb, err := w.AddSandbox(t, name, world.SandboxOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sbs = append(sbs, sb)
	}
	for _, how := range []string{"kill -9", "SIGTERM"} {
		stop := d.Kill
		if how == "SIGTERM" {
			stop = d.Stop
		}
		if err := stop(); err != nil {
			t.Fatalf("%s paddockd: %v", how, err)
		}
		if err := d.Restart(); err != nil {
			t.Fatalf("restart after %s: %v", how, err)
		}
		r := cliStatus(t, w)
		if r.Status.Sandboxes != len(sbs) || len(r.Sandboxes) != len(sbs) {
			t.Errorf("after %s and restart: status counts %d, lists %d sandboxes, want %d", how, r.Status.Sandboxes, len(r.Sandboxes), len(sbs))
		}
		for _, sb := range sbs {
			addr := netip.PrefixFrom(sb.IP, w.Subnet.Bits())
			assertRegistered(t, w, d, key(w, sb.RuntimeConf().ContainerID, "eth0"), sb.NetNS, addr)
			if err := sb.Check(); err != nil {
				t.Errorf("after %s and restart: CHECK %s: %v", how, sb.Name, err)
			}
		}
	}
	if st, err := d.WaitReady(opTimeout); err != nil {
		t.Errorf("paddockd not ready after restarts: %v (%+v)", err, st)
	}
}

// cnitool (the reference runtime CLI) drives the example conflist from the
// repository, with only its socket and IPAM paths rewritten for this world,
// through add, check, status, del, and gc (which first DELs every cached
// attachment, then calls GC without a valid list). It runs inside node with
// its result cache on a private mount, so the host's /var/lib/cni is left
// alone. The example says cniVersion 1.0.0, for which libcni answers STATUS
// and GC itself; a copy at 1.1.0 makes them reach the plugin, which the
// last STATUS proves by failing once paddockd is down.
func TestFoundationCnitool(t *testing.T) {
	w := newWorld(t)
	d := readyDaemon(t, w)
	t.Run("example", func(t *testing.T) { cnitoolRun(t, w, d, "") })
	t.Run("spec-1.1.0", func(t *testing.T) { cnitoolRun(t, w, d, "1.1.0") })
}

// cnitoolRun runs the cnitool sequence with the example conflist, its
// cniVersion replaced by version unless that is empty.
func cnitoolRun(t *testing.T, w *world.World, d *world.Daemon, version string) {
	netDir := t.TempDir()
	cacheDir := t.TempDir()
	const netName = "paddock" // the example's network name
	writeExampleConflist(t, w, filepath.Join(netDir, "paddock.conflist"), version)
	netnsPath := newNetns(t, w, "cnitool"+shortVer(version))

	cnitool := func(verb string) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "nsenter", "--net="+w.NodePath(), "--",
			"unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", `mount --bind "$0" /var/lib/cni && exec "$@"`, cacheDir,
			filepath.Join(w.BinDir, "cnitool"), verb, netName, netnsPath)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "NETCONFPATH=" + netDir, "CNI_PATH=" + w.CNIPath()}
		out, err := cmd.CombinedOutput()
		t.Logf("cnitool %s: %s", verb, strings.TrimSpace(string(out)))
		if err != nil {
			return fmt.Errorf("cnitool %s: %w: %s", verb, err, out)
		}
		return nil
	}
	t.Cleanup(func() { _ = cnitool("del") })

	// cnitool names the container after the netns path.
	sum := sha512.Sum512([]byte(netnsPath))
	k := api.Key{Network: netName, ContainerID: fmt.Sprintf("cnitool-%x", sum[:10]), IfName: "eth0"}
	leaseDir := filepath.Join(w.IPAMDir(), netName)
	attached := func(when string) {
		t.Helper()
		if v := nodeVeths(t, w); !slices.Equal(v, []string{plugin.HostVethName(k)}) {
			t.Errorf("%s: host veths %v, want %s", when, v, plugin.HostVethName(k))
		}
		if _, ok := cliStatus(t, w).registered(k); !ok {
			t.Errorf("%s: paddock status does not list %s", when, k)
		}
		if l := netnsLinks(t, netnsPath); !slices.Equal(l, []string{"eth0", "lo"}) {
			t.Errorf("%s: sandbox interfaces %v", when, l)
		}
		if n := len(leasesIn(t, leaseDir)); n != 1 {
			t.Errorf("%s: %d leases in %s, want 1", when, n, leaseDir)
		}
	}
	detached := func(when string) {
		t.Helper()
		assertGone(t, w, d, k, netnsPath)
		if n := len(leasesIn(t, leaseDir)); n != 0 {
			t.Errorf("%s: %d leases left in %s", when, n, leaseDir)
		}
	}

	for _, verb := range []string{"add", "check", "status"} {
		if err := cnitool(verb); err != nil {
			t.Fatal(err)
		}
		attached("after " + verb)
	}
	if err := cnitool("del"); err != nil {
		t.Fatal(err)
	}
	detached("after del")
	if err := cnitool("add"); err != nil {
		t.Fatal(err)
	}
	attached("after the second add")
	if err := cnitool("gc"); err != nil {
		t.Fatal(err)
	}
	detached("after gc")
	if err := cnitool("del"); err != nil {
		t.Errorf("del after gc: %v", err)
	}
	if version == "" {
		return
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := cnitool("status"); err == nil || !strings.Contains(err.Error(), w.DaemonSocket()) {
		t.Errorf("cnitool status with paddockd down: %v, want a failure naming %s", err, w.DaemonSocket())
	}
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
}

// writeExampleConflist copies tools/examples/paddock.conflist to path with
// daemonSocket, the IPAM dataDir and its range pointed at this world, and
// cniVersion set to version unless that is empty; every other key stays as
// the example has it.
func writeExampleConflist(t *testing.T, w *world.World, path, version string) {
	t.Helper()
	b, err := os.ReadFile("../tools/examples/paddock.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("example conflist: %v", err)
	}
	plugins, _ := list["plugins"].([]any)
	if len(plugins) != 1 {
		t.Fatalf("example conflist has %d plugins, want 1", len(plugins))
	}
	p := plugins[0].(map[string]any)
	ipam := p["ipam"].(map[string]any)
	ranges := ipam["ranges"].([]any)
	r := ranges[0].([]any)[0].(map[string]any)
	if p["type"] != "paddock" || p["daemonSocket"] == nil || ipam["dataDir"] == nil || r["subnet"] == nil || r["gateway"] == nil {
		t.Fatalf("example conflist changed shape: %s", b)
	}
	p["daemonSocket"] = w.DaemonSocket()
	ipam["dataDir"] = w.IPAMDir()
	r["subnet"] = w.Subnet.String()
	r["gateway"] = gatewayOf(w).String()
	if version != "" {
		list["cniVersion"] = version
	}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
