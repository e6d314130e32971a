package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/paddock-sandbox/paddock/plugin"
	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/world"
)

// specVersions are the CNI spec versions paddock supports; STATUS and GC
// exist from 1.1.0 on.
var specVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// opTimeout bounds one CNI operation or CLI run.
const opTimeout = 30 * time.Second

// requireBinaries skips unless `make build` has produced what the
// foundation tests execute.
func requireBinaries(t *testing.T, w *world.World) {
	t.Helper()
	for _, f := range []string{"paddockd", "paddock", "cnitool", "cni/paddock", "cni/host-local"} {
		if _, err := os.Stat(filepath.Join(w.BinDir, f)); err != nil {
			t.Skipf("needs %s: run `make build` first (or set PADDOCK_BIN)", filepath.Join(w.BinDir, f))
		}
	}
}

// newWorld builds a world with the binaries the foundation tests need.
func newWorld(t *testing.T) *world.World {
	t.Helper()
	w := world.New(t, world.Options{})
	requireBinaries(t, w)
	return w
}

// readyDaemon starts paddockd and waits until it reports Ready: ADD refuses
// to attach a sandbox to a paddockd that is not, so a test that needs an
// attachment fails here, naming the component that held paddockd back.
func readyDaemon(t *testing.T, w *world.World) *world.Daemon {
	t.Helper()
	d := w.StartDaemon(t)
	st, err := d.WaitReady(15 * time.Second)
	if err != nil {
		t.Fatalf("paddockd is not ready, so ADD refuses every sandbox: %v (message %q, components %v)", err, st.Message, st.Components)
	}
	return d
}

// newNetns creates an empty namespace <prefix>-<name> for a sandbox the test
// attaches itself, and deletes it when the test ends.
func newNetns(t *testing.T, w *world.World, name string) string {
	t.Helper()
	nsName := w.Prefix + "-" + name
	if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", nsName, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", nsName).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", nsName, err, out)
		}
	})
	return "/run/netns/" + nsName
}

// pluginConf is the network configuration a runtime hands the plugin on
// stdin: the conflist's top-level name and cniVersion merged into the
// paddock entry. A nil value in override removes the key.
func pluginConf(w *world.World, version string, override map[string]any) []byte {
	c := map[string]any{
		"cniVersion":   version,
		"name":         w.NetworkName(),
		"type":         "paddock",
		"daemonSocket": w.DaemonSocket(),
		"policy":       "default",
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": w.IPAMDir(),
			"ranges":  [][]map[string]string{{{"subnet": w.Subnet.String()}}},
		},
	}
	for k, v := range override {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

// withKey returns conf with key set to v, as a runtime adds prevResult or
// cni.dev/valid-attachments.
func withKey(t *testing.T, conf []byte, key string, v any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	m[key] = v
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// execCall is one direct execution of the plugin binary, as a runtime that
// does not use libcni makes it.
type execCall struct {
	Command     string
	ContainerID string
	Netns       string
	IfName      string
	Args        string
}

// execPlugin runs bin/cni/paddock inside node with CNI_* variables and conf
// on stdin. It returns stdout, and the CNI error the plugin printed when it
// exited non-zero.
func execPlugin(t *testing.T, w *world.World, c execCall, conf []byte) ([]byte, *types.Error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+w.NodePath(), "--", filepath.Join(w.CNIPath(), "paddock"))
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"CNI_COMMAND=" + c.Command,
		"CNI_CONTAINERID=" + c.ContainerID,
		"CNI_NETNS=" + c.Netns,
		"CNI_IFNAME=" + c.IfName,
		"CNI_ARGS=" + c.Args,
		"CNI_PATH=" + w.CNIPath(),
	}
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("plugin %s did not finish within %s", c.Command, opTimeout)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		e := &types.Error{}
		if jerr := json.Unmarshal(stdout.Bytes(), e); jerr != nil || e.Code == 0 {
			t.Fatalf("plugin %s exited %d without a CNI error on stdout: %q (stderr %q)", c.Command, exit.ExitCode(), stdout.String(), stderr.String())
		}
		return stdout.Bytes(), e
	}
	if err != nil {
		t.Fatalf("run plugin %s: %v", c.Command, err)
	}
	return stdout.Bytes(), nil
}

// statusReport is `paddock status --json`.
type statusReport struct {
	Status    api.Status          `json:"status"`
	Sandboxes []api.SandboxStatus `json:"sandboxes"`
}

// cliStatus runs the real CLI against the world's paddockd.
func cliStatus(t *testing.T, w *world.World) statusReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(w.BinDir, "paddock"), "status", "--socket", w.DaemonSocket(), "--json").Output()
	if err != nil {
		t.Fatalf("paddock status --json: %v: %s", err, out)
	}
	var r statusReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("paddock status --json printed no report: %v: %s", err, out)
	}
	return r
}

// registered reports what `paddock status --json` lists for k.
func (r statusReport) registered(k api.Key) (api.SandboxStatus, bool) {
	for _, sb := range r.Sandboxes {
		if sb.Key() == k {
			return sb, true
		}
	}
	return api.SandboxStatus{}, false
}

// nodeVeths lists the paddock host veths (by their "pdk" prefix) in node.
func nodeVeths(t *testing.T, w *world.World) []string {
	t.Helper()
	var names []string
	err := w.InNode(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "pdk") {
				names = append(names, l.Attrs().Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list links in node: %v", err)
	}
	slices.Sort(names)
	return names
}

// leases lists the addresses host-local has handed out on the world's network.
func leases(t *testing.T, w *world.World) []string {
	t.Helper()
	return leasesIn(t, filepath.Join(w.IPAMDir(), w.NetworkName()))
}

// leasesIn lists host-local's lease files in its per-network dir.
func leasesIn(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// netnsLinks lists the interfaces inside the namespace at path.
func netnsLinks(t *testing.T, path string) []string {
	t.Helper()
	var names []string
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		links, err := netlink.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	if err != nil {
		t.Fatalf("list links in %s: %v", path, err)
	}
	slices.Sort(names)
	return names
}

// key is the registration key of an attachment in this world.
func key(w *world.World, containerID, ifName string) api.Key {
	return api.Key{Network: w.NetworkName(), ContainerID: containerID, IfName: ifName}
}

// gatewayOf is host-local's default gateway: the subnet's first address.
func gatewayOf(w *world.World) netip.Addr { return w.Subnet.Addr().Next() }

// assertResult checks a result as the plugin printed it for version: the
// host veth and the sandbox interface, one IPv4 address in the world's
// subnet on interface 1 with the gateway, a default route via the gateway
// and the gateway as nameserver. It returns the sandbox address.
func assertResult(t *testing.T, w *world.World, raw []byte, version, containerID, ifName, netnsPath string) netip.Prefix {
	t.Helper()
	var r struct {
		CNIVersion string `json:"cniVersion"`
		Interfaces []struct {
			Name    string `json:"name"`
			Mac     string `json:"mac"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
		IPs []struct {
			Version   string `json:"version"`
			Address   string `json:"address"`
			Gateway   string `json:"gateway"`
			Interface *int   `json:"interface"`
		} `json:"ips"`
		Routes []struct {
			Dst string `json:"dst"`
			GW  string `json:"gw"`
		} `json:"routes"`
		DNS struct {
			Nameservers []string `json:"nameservers"`
		} `json:"dns"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("result is not JSON: %v: %s", err, raw)
	}
	gw := gatewayOf(w).String()
	hostVeth := plugin.HostVethName(key(w, containerID, ifName))
	if r.CNIVersion != version {
		t.Errorf("result cniVersion %q, want %q", r.CNIVersion, version)
	}
	if len(r.Interfaces) != 2 ||
		r.Interfaces[0].Name != hostVeth || r.Interfaces[0].Sandbox != "" || r.Interfaces[0].Mac == "" ||
		r.Interfaces[1].Name != ifName || r.Interfaces[1].Sandbox != netnsPath || r.Interfaces[1].Mac == "" {
		t.Errorf("result interfaces %+v, want [%s (node), %s in %s], both with a MAC", r.Interfaces, hostVeth, ifName, netnsPath)
	}
	if len(r.IPs) != 1 {
		t.Fatalf("result ips %+v, want exactly one IPv4 address: %s", r.IPs, raw)
	}
	ipc := r.IPs[0]
	addr, err := netip.ParsePrefix(ipc.Address)
	if err != nil || !addr.Addr().Is4() || !w.Subnet.Contains(addr.Addr()) || addr.Bits() != w.Subnet.Bits() {
		t.Errorf("result address %q, want an IPv4 address in %s", ipc.Address, w.Subnet)
	}
	if ipc.Gateway != gw || ipc.Interface == nil || *ipc.Interface != 1 {
		t.Errorf("result ip %+v, want gateway %s on interface 1", ipc, gw)
	}
	// 0.4.0 results name the IP version; 1.0.0 dropped the field.
	if wantVer := map[bool]string{true: "4", false: ""}[version == "0.4.0"]; ipc.Version != wantVer {
		t.Errorf("result ip version %q, want %q for spec %s", ipc.Version, wantVer, version)
	}
	def := false
	for _, rt := range r.Routes {
		def = def || (rt.Dst == "0.0.0.0/0" && rt.GW == gw)
	}
	if !def {
		t.Errorf("result routes %+v, want 0.0.0.0/0 via %s", r.Routes, gw)
	}
	if !slices.Equal(r.DNS.Nameservers, []string{gw}) {
		t.Errorf("result dns.nameservers %v, want [%s] (the gateway)", r.DNS.Nameservers, gw)
	}
	return addr
}

// assertWired checks the sandbox side inside its namespace (interface up
// with the address, default route via the gateway) and the host veth in node
// (up, holding the gateway, routing the sandbox address to it).
func assertWired(t *testing.T, w *world.World, netnsPath, ifName string, addr netip.Prefix, hostVeth string) {
	t.Helper()
	gw := gatewayOf(w)
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifName, err)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("interface %s is down", ifName)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != addr.String() {
			return fmt.Errorf("addresses on %s: %v, want only %s", ifName, addrs, addr)
		}
		routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(gw.AsSlice()) {
				return nil
			}
		}
		return fmt.Errorf("no default route via %s on %s: %v", gw, ifName, routes)
	})
	if err != nil {
		t.Errorf("sandbox %s: %v", netnsPath, err)
	}
	err = w.InNode(func() error {
		l, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return fmt.Errorf("host veth %s: %w", hostVeth, err)
		}
		if l.Type() != "veth" || l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("host veth %s: type %s, flags %v", hostVeth, l.Type(), l.Attrs().Flags)
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || !addrs[0].IP.Equal(gw.AsSlice()) {
			return fmt.Errorf("host veth %s addresses %v, want the gateway %s", hostVeth, addrs, gw)
		}
		routes, err := netlink.RouteGet(addr.Addr().AsSlice())
		if err != nil {
			return err
		}
		if len(routes) != 1 || routes[0].LinkIndex != l.Attrs().Index {
			return fmt.Errorf("node routes %s via %v, want dev %s", addr.Addr(), routes, hostVeth)
		}
		return nil
	})
	if err != nil {
		t.Errorf("node: %v", err)
	}
}

// assertRegistered checks the registration through the API client and the
// CLI: host veth, address, policy and netns as the plugin reported them.
func assertRegistered(t *testing.T, w *world.World, d *world.Daemon, k api.Key, netnsPath string, addr netip.Prefix) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	hostVeth := plugin.HostVethName(k)
	check := func(from string, sb api.SandboxStatus) {
		if sb.HostVeth != hostVeth || sb.HostIfIndex <= 0 || sb.Netns != netnsPath || sb.Policy != "default" ||
			!slices.Equal(sb.IPs, []netip.Prefix{addr}) || sb.Gateway != gatewayOf(w) {
			t.Errorf("%s: registration %+v, want host veth %s, netns %s, policy default, ips [%s], gateway %s",
				from, sb, hostVeth, netnsPath, addr, gatewayOf(w))
		}
	}
	sb, err := d.Client().Get(ctx, k)
	if err != nil {
		t.Errorf("api Get %s: %v", k, err)
	} else {
		check("api", sb)
	}
	sb, ok := cliStatus(t, w).registered(k)
	if !ok {
		t.Errorf("paddock status --json does not list %s", k)
	} else {
		check("paddock status", sb)
	}
}

// assertUnregistered checks that neither the API nor the CLI knows k.
func assertUnregistered(t *testing.T, w *world.World, d *world.Daemon, k api.Key) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := d.Client().Get(ctx, k); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("api Get %s after removal: %v, want not registered", k, err)
	}
	if _, ok := cliStatus(t, w).registered(k); ok {
		t.Errorf("paddock status --json still lists %s", k)
	}
}
