package enforcer

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/bpf"
	"github.com/paddock-sandbox/paddock/plugin/api"
)

func TestDatapathBPFInNetns(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	testDatapath(t, RedirectBPF, DefaultDNSListen)
}

// With the DNS listener off port 53, replies go out through a transparent
// socket bound to the original destination instead.
func TestDatapathDNSReplySocketInNetns(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	testDatapath(t, RedirectBPF, netip.MustParseAddrPort("127.0.0.1:5353"))
}

func TestDatapathNftablesInNetns(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	testDatapath(t, RedirectNftables, DefaultDNSListen)
}

func startDatapath(t *testing.T, mode RedirectMode, dir string, dnsListen netip.AddrPort, w *nftWorld) (*Datapath, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := New(context.Background(), Options{
		Mode: mode, BPFFSDir: dir, NFLOGGroup: 61, LogDir: t.TempDir(),
		DNSListen: dnsListen, Metrics: reg,
		Lookup: func(a netip.Addr) (api.Sandbox, bool) { return w.sb, a == w.sbIP },
		ByIfIndex: func(i int) (api.Sandbox, bool) {
			return w.sb, i == w.sb.HostIfIndex
		},
	})
	if err != nil {
		t.Fatalf("new data path (%s): %v", mode, err)
	}
	return d, reg
}

// dialFromSandbox connects from the sandbox to dst and exchanges a line
// with whatever accepted it.
func dialFromSandbox(t *testing.T, w *nftWorld, dst string) error {
	var derr error
	w.inSandbox(t, func() error {
		c, err := net.DialTimeout("tcp4", dst, 2*time.Second)
		if err != nil {
			derr = err
			return nil
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			derr = err
			return nil
		}
		buf := make([]byte, 5)
		_, derr = io.ReadFull(c, buf)
		return nil
	})
	return derr
}

func dnsFromSandbox(t *testing.T, w *nftWorld, network, server string) (*dns.Msg, error) {
	var (
		resp *dns.Msg
		qerr error
	)
	w.inSandbox(t, func() error {
		m := new(dns.Msg)
		m.SetQuestion("example.test.", dns.TypeA)
		// The client's socket is connected to server: only a reply from
		// exactly that ip:port reaches it.
		c := &dns.Client{Net: network, Timeout: 2 * time.Second}
		resp, _, qerr = c.Exchange(m, server)
		return nil
	})
	return resp, qerr
}

func testDatapath(t *testing.T, mode RedirectMode, dnsListen netip.AddrPort) {
	w := newNFTWorld(t)
	dir := filepath.Join(bpffsRoot, "paddock-test-"+randSuffix())
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, reg := startDatapath(t, mode, dir, dnsListen, w)
	defer func() { d.Close() }()

	bad := w.sb
	bad.SandboxMAC = "not-a-mac"
	if err := d.Attach(context.Background(), bad); err == nil {
		t.Fatal("attach with a bad MAC succeeded")
	}
	if err := d.Check(context.Background(), w.sb); err == nil {
		t.Fatal("check passes before attach")
	}
	if mode == RedirectBPF {
		if _, err := os.Stat(filepath.Join(dir, "links", w.sb.HostVeth)); err == nil {
			t.Fatal("failed attach left a pinned link")
		}
	}
	if err := d.Attach(context.Background(), w.sb); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if err := d.Attach(context.Background(), w.sb); err != nil {
		t.Fatalf("second attach: %v", err)
	}
	if err := d.Check(context.Background(), w.sb); err != nil {
		t.Fatalf("check after attach: %v", err)
	}
	for k, v := range d.Components() {
		if v != "ok" {
			t.Errorf("component %s: %s", k, v)
		}
	}

	// TCP to an address nobody holds arrives at the listener as itself.
	accepted := make(chan net.Conn, 1)
	go func() {
		ln := d.Listeners().TCP
		_ = ln.SetDeadline(time.Now().Add(5 * time.Second))
		c, err := ln.Accept()
		_ = ln.SetDeadline(time.Time{})
		if err != nil {
			close(accepted)
			return
		}
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf)
		_, _ = c.Write([]byte("pong\n"))
		accepted <- c
	}()
	if err := dialFromSandbox(t, w, "192.0.2.77:443"); err != nil {
		t.Fatalf("dial 192.0.2.77:443 from sandbox: %v", err)
	}
	c, ok := <-accepted
	if !ok {
		t.Fatal("listener accepted nothing")
	}
	if got := c.LocalAddr().String(); got != "192.0.2.77:443" {
		t.Errorf("accepted local address %s, want the original destination 192.0.2.77:443", got)
	}
	if got := remoteAddr(c).Addr(); got != w.sbIP {
		t.Errorf("accepted remote %s, want sandbox %s", got, w.sbIP)
	}
	c.Close()

	// DNS: the default handlers refuse, from exactly the address asked.
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { d.ServeDefault(ctx); close(served) }()
	for _, q := range []struct{ net, server string }{
		{"udp", "192.0.2.53:53"}, {"udp", "198.51.100.1:53"}, {"tcp", "192.0.2.53:53"},
	} {
		resp, err := dnsFromSandbox(t, w, q.net, q.server)
		if err != nil {
			t.Errorf("dns %s %s: %v", q.net, q.server, err)
			continue
		}
		if resp.Rcode != dns.RcodeRefused {
			t.Errorf("dns %s %s: rcode %s, want REFUSED", q.net, q.server, dns.RcodeToString[resp.Rcode])
		}
	}
	// TCP to the default handler is closed without an answer.
	if err := dialFromSandbox(t, w, "192.0.2.20:80"); err == nil {
		t.Error("default handler answered a TCP connection")
	}
	stop()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeDefault did not return after its context ended")
	}
	// UDP other than DNS goes nowhere.
	w.inSandbox(t, func() error {
		u, err := net.Dial("udp4", "192.0.2.20:123")
		if err == nil {
			_, _ = u.Write([]byte("ntp?"))
			u.Close()
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := w.farCount(t); n != 0 {
		t.Fatalf("%d packets from the sandbox reached the far side: leak", n)
	}

	// The policy routing is checked and restored.
	nftRun(t, "ip", "rule", "del", "pref", "91")
	if err := d.Check(context.Background(), w.sb); err == nil {
		t.Error("check passes with the blackhole rule deleted")
	}
	if c := d.Components()["route"]; c == "ok" {
		t.Error("route component ok with the blackhole rule deleted")
	}
	if err := d.Reconcile(context.Background(), []api.Sandbox{w.sb}); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if err := d.Check(context.Background(), w.sb); err != nil {
		t.Fatalf("check after reconcile: %v", err)
	}

	if mode == RedirectBPF {
		checkBPFMetrics(t, reg)
		testBlackholeWithoutNft(t, w)
		testPinnedRestart(t, d, dir, w)
		return
	}
	if err := d.Detach(context.Background(), w.sb); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if err := d.Detach(context.Background(), w.sb); err != nil {
		t.Fatalf("second detach: %v", err)
	}
}

func attachedIDs(t *testing.T, ifindex int) []ebpf.ProgramID {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatalf("query tcx: %v", err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

func progID(t *testing.T, d *Datapath) ebpf.ProgramID {
	info, err := d.bpf.objs.PaddockIngress.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// testPinnedRestart: the pinned link keeps enforcing with paddockd gone
// (fail closed: no listener), a new loader swaps the program on the same
// link, and Detach leaves nothing behind.
func testPinnedRestart(t *testing.T, d *Datapath, dir string, w *nftWorld) {
	oldID := progID(t, d)
	if err := d.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	ids := attachedIDs(t, w.sb.HostIfIndex)
	if len(ids) != 1 || ids[0] != oldID {
		t.Fatalf("after close, tcx ingress has %v, want the pinned program %d", ids, oldID)
	}
	if err := dialFromSandbox(t, w, "192.0.2.20:80"); err == nil {
		t.Fatal("a connection succeeded while paddockd was down")
	}
	if n := w.farCount(t); n != 0 {
		t.Fatalf("%d packets reached the far side while paddockd was down: leak", n)
	}

	d2, _ := startDatapath(t, RedirectBPF, dir, DefaultDNSListen, w)
	defer d2.Close()
	newID := progID(t, d2)
	ids = attachedIDs(t, w.sb.HostIfIndex)
	if len(ids) != 1 || ids[0] != newID || newID == oldID {
		t.Fatalf("after restart, tcx ingress has %v, want only the new program %d (old %d)", ids, newID, oldID)
	}
	if err := d2.Reconcile(context.Background(), []api.Sandbox{w.sb}); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if err := d2.Check(context.Background(), w.sb); err != nil {
		t.Fatalf("check after restart: %v", err)
	}
	// Reconcile to nothing removes the stale attachment, then restores it.
	if err := d2.Reconcile(context.Background(), nil); err != nil {
		t.Fatalf("reconcile to none: %v", err)
	}
	if ids := attachedIDs(t, w.sb.HostIfIndex); len(ids) != 0 {
		t.Fatalf("tcx ingress still has %v after reconciling to no sandboxes", ids)
	}
	if _, err := os.Stat(filepath.Join(dir, "links", w.sb.HostVeth)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale link pin survived reconcile: %v", err)
	}
	if err := d2.Reconcile(context.Background(), []api.Sandbox{w.sb}); err != nil {
		t.Fatalf("reconcile back: %v", err)
	}
	if err := d2.Check(context.Background(), w.sb); err != nil {
		t.Fatalf("check after reconcile back: %v", err)
	}
	accepted := make(chan error, 1)
	go func() {
		ln := d2.Listeners().TCP
		_ = ln.SetDeadline(time.Now().Add(5 * time.Second))
		c, err := ln.Accept()
		_ = ln.SetDeadline(time.Time{})
		if err == nil {
			buf := make([]byte, 5)
			_, _ = io.ReadFull(c, buf)
			_, _ = c.Write([]byte("pong\n"))
			c.Close()
		}
		accepted <- err
	}()
	if err := dialFromSandbox(t, w, "192.0.2.77:443"); err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("accept after restart: %v", err)
	}

	if err := d2.Detach(context.Background(), w.sb); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if err := d2.Detach(context.Background(), w.sb); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "links", w.sb.HostVeth)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pinned link still there after detach: %v", err)
	}
	if ids := attachedIDs(t, w.sb.HostIfIndex); len(ids) != 0 {
		t.Errorf("tcx ingress still has %v after detach", ids)
	}
	var e bpf.RedirectSandbox
	if err := d2.bpf.objs.PaddockSbx.Lookup(uint32(w.sb.HostIfIndex), &e); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("map entry still there after detach: %v", err)
	}
	var k bpf.RedirectCounterKey
	var vals []bpf.RedirectCounterVal
	if it := d2.bpf.objs.PaddockCnt.Iterate(); it.Next(&k, &vals) {
		t.Errorf("counter %+v still there after detach", k)
	}
	if err := d2.Check(context.Background(), w.sb); err == nil {
		t.Error("check passes after detach")
	}

	// Three starts in this netns: the routing is there once, not thrice.
	rules := nftRun(t, "ip", "rule", "show")
	if n := strings.Count(rules, "fwmark 0xd0c0001 lookup"); n != 1 {
		t.Errorf("redirect rule present %d times:\n%s", n, rules)
	}
	if n := strings.Count(rules, "blackhole"); n != 1 {
		t.Errorf("blackhole rule present %d times:\n%s", n, rules)
	}

	// Switching to nftables mode removes the pinned redirect; TPROXY serves.
	if err := d2.Attach(context.Background(), w.sb); err != nil {
		t.Fatalf("attach before mode switch: %v", err)
	}
	d2.Close()
	d3, _ := startDatapath(t, RedirectNftables, dir, DefaultDNSListen, w)
	defer d3.Close()
	if ids := attachedIDs(t, w.sb.HostIfIndex); len(ids) != 0 {
		t.Fatalf("tcx ingress still has %v in nftables mode", ids)
	}
	if err := d3.Reconcile(context.Background(), []api.Sandbox{w.sb}); err != nil {
		t.Fatalf("reconcile in nftables mode: %v", err)
	}
	go func() {
		ln := d3.Listeners().TCP
		_ = ln.SetDeadline(time.Now().Add(5 * time.Second))
		if c, err := ln.Accept(); err == nil {
			buf := make([]byte, 5)
			_, _ = io.ReadFull(c, buf)
			_, _ = c.Write([]byte("pong\n"))
			c.Close()
		}
	}()
	if err := dialFromSandbox(t, w, "192.0.2.77:443"); err != nil {
		t.Fatalf("dial after switching to nftables mode: %v", err)
	}
}

// testBlackholeWithoutNft: with table inet paddock deleted (the watcher
// restores it within a second), deny-marked packets are still not forwarded
// thanks to the blackhole rule.
func testBlackholeWithoutNft(t *testing.T, w *nftWorld) {
	nftRun(t, "nft", "delete", "table", "inet", "paddock")
	w.inSandbox(t, func() error {
		u, err := net.Dial("udp4", "192.0.2.20:123")
		if err != nil {
			return err
		}
		defer u.Close()
		for range 5 {
			_, _ = u.Write([]byte("ntp?"))
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := w.farCount(t); n != 0 {
		t.Fatalf("%d deny-marked packets were forwarded with the nft table gone: leak", n)
	}
}

func checkBPFMetrics(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	attached := -1.0
	seen := map[string]float64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "paddock_bpf_attached":
			attached = mf.GetMetric()[0].GetGauge().GetValue()
		case "paddock_bpf_packets_total":
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["sandbox"] != "3f2a9c1b7d20" {
					t.Errorf("packets counted for sandbox %q, want 3f2a9c1b7d20", labels["sandbox"])
				}
				seen[labels["reason"]] += m.GetCounter().GetValue()
			}
		}
	}
	if attached != 1 {
		t.Errorf("paddock_bpf_attached = %v, want 1", attached)
	}
	for _, r := range []string{"redirected", "udp"} {
		if seen[r] == 0 {
			t.Errorf("paddock_bpf_packets_total{reason=%q} is 0; seen %v", r, seen)
		}
	}
}

func TestOptionsRejectBadInput(t *testing.T) {
	o := Options{Mode: "iptables"}
	if err := o.defaults(); err == nil || !strings.Contains(err.Error(), `"iptables"`) {
		t.Errorf("mode iptables: %v", err)
	}
	if _, err := New(context.Background(), Options{Mode: "ebpf"}); err == nil {
		t.Error("New accepted redirect mode ebpf")
	}
	for _, sb := range []api.Sandbox{
		{ContainerID: "c1", HostVeth: "", HostIfIndex: 3},
		{ContainerID: "c1", HostVeth: "../x", HostIfIndex: 3},
		{ContainerID: "c1", HostVeth: "veth1", HostIfIndex: 0},
		{ContainerID: "c1", HostVeth: "veth1", HostIfIndex: 3, SandboxMAC: "02:00:00:00:00:01",
			IPs: []netip.Prefix{netip.MustParsePrefix("2001:db8::2/64")}, Gateway: netip.MustParseAddr("10.0.0.1")},
		{ContainerID: "c1", HostVeth: "veth1", HostIfIndex: 3, SandboxMAC: "02:00:00:00:00:01",
			IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}},
		{ContainerID: "c1", HostVeth: "veth1", HostIfIndex: 3, SandboxMAC: "zz",
			IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/24")}, Gateway: netip.MustParseAddr("10.0.0.1")},
	} {
		if err := validateSandbox(sb); err == nil {
			t.Errorf("sandbox %+v accepted", sb)
		}
	}
	if _, err := listenTransparent(context.Background(), netip.MustParseAddrPort("[::1]:15001"), DefaultDNSListen); err == nil {
		t.Error("IPv6 listen address accepted")
	}
}
