package enforcer

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/testutil"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite enforcer/testdata/*.golden")

func newTestFirewall(t *testing.T, cfg FirewallConfig) *Firewall {
	t.Helper()
	if cfg.NFLOGGroup == 0 {
		cfg.NFLOGGroup, cfg.TapGroup = 100, 101
	}
	f, err := NewFirewall(cfg)
	if err != nil {
		t.Fatalf("NewFirewall: %v", err)
	}
	t.Cleanup(func() { f.Delete() })
	return f
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update-golden to create): %v", err)
	}
	if string(want) != got {
		t.Errorf("ruleset differs from %s:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// sendUDP sends one datagram from the sandbox; it must never arrive.
func sendUDP(dst string) func() error {
	return func() error {
		c, err := net.Dial("udp", dst)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	}
}

func TestFirewallBPFMode(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	w := newNFTWorld(t)
	// Control: without paddock the sandbox reaches the far side.
	nftRun(t, "ip", "netns", "exec", w.sbNS, "ping", "-c1", "-W2", "192.0.2.20")
	if w.farCount(t) == 0 {
		t.Fatal("control ping did not reach the far side: the test world is broken")
	}

	reg := prometheus.NewRegistry()
	f := newTestFirewall(t, FirewallConfig{Mode: RedirectBPF, Metrics: reg})
	if err := f.AddSandbox(w.sb); err != nil {
		t.Fatal(err)
	}
	if err := f.CheckSandbox(w.sb); err != nil {
		t.Fatalf("CheckSandbox after add: %v", err)
	}
	rs, err := f.Ruleset()
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "nft_bpf.golden", strings.ReplaceAll(rs, w.sb.HostVeth, "HOSTVETH"))

	before := w.farCount(t)
	// No BPF program: the packet is unmarked and must be dropped.
	w.inSandbox(t, sendUDP("192.0.2.20:7"))
	exec.Command("ip", "netns", "exec", w.sbNS, "ping", "-c1", "-W1", "192.0.2.20").Run()
	// Marks as the BPF program would set them, from a table that runs first.
	nftRun(t, "nft", fmt.Sprintf(`add table ip paddocktest
add chain ip paddocktest pre { type filter hook prerouting priority -200; }
add rule ip paddocktest pre meta l4proto udp meta mark set %#x
add rule ip paddocktest pre meta l4proto icmp meta mark set %#x`,
		MarkDenyBase|uint32(ReasonUDP), MarkDenyBase|uint32(ReasonICMP)))
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "ip", "paddocktest").Run() })
	w.inSandbox(t, sendUDP("192.0.2.20:7"))
	exec.Command("ip", "netns", "exec", w.sbNS, "ping", "-c1", "-W1", "192.0.2.20").Run()

	if got := w.farCount(t); got != before {
		t.Errorf("%d packets from the sandbox reached the far side", got-before)
	}
	counts, err := f.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	// Unmarked also counts the sandbox's own IPv6 neighbour discovery.
	if counts["unmarked"] < 2 || counts["udp"] != 1 || counts["icmp"] != 1 {
		t.Errorf("drop counts %v, want unmarked ≥2, udp 1, icmp 1", counts)
	}
	if n := gatheredCounter(t, reg, "paddock_nft_dropped_total", map[string]string{"reason": "udp"}); n != 1 {
		t.Errorf("paddock_nft_dropped_total{reason=udp} = %v, want 1", n)
	}

	if err := f.RemoveSandbox(w.sb); err != nil {
		t.Fatal(err)
	}
	if err := f.CheckSandbox(w.sb); err == nil {
		t.Error("CheckSandbox after remove: want an error")
	}
	if err := f.RemoveSandbox(w.sb); err != nil {
		t.Errorf("removing an unknown sandbox: %v", err)
	}
}

func TestFirewallRuleCountConstant(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	for _, mode := range []RedirectMode{RedirectBPF, RedirectNftables} {
		f := newTestFirewall(t, FirewallConfig{Mode: mode,
			TCPListen: netip.MustParseAddrPort("127.0.0.1:15001"), DNSListen: netip.MustParseAddrPort("127.0.0.1:15053")})
		empty, err := f.RuleCount()
		if err != nil {
			t.Fatal(err)
		}
		var sbs []api.Sandbox
		for i := range 200 {
			sbs = append(sbs, api.Sandbox{Network: "n", ContainerID: fmt.Sprintf("c%04d", i), IfName: "eth0",
				HostVeth: fmt.Sprintf("pdtest%04d", i), SandboxMAC: fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256),
				IPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i / 250), byte(i%250 + 2)}), 16)}})
		}
		if err := f.Sync(sbs); err != nil {
			t.Fatal(err)
		}
		full, err := f.RuleCount()
		if err != nil {
			t.Fatal(err)
		}
		if full != empty || empty == 0 {
			t.Errorf("mode %s: %d rules with 0 sandboxes, %d with 200", mode, empty, full)
		}
		rs, _ := f.Ruleset()
		if n := strings.Count(rs, `pdtest`); n < 200 {
			t.Errorf("mode %s: ruleset lists %d sandbox interfaces, want ≥200", mode, n)
		}
		if err := f.CheckSandbox(sbs[123]); err != nil {
			t.Errorf("mode %s: %v", mode, err)
		}
		if err := f.Sync(sbs[:1]); err != nil {
			t.Fatal(err)
		}
		if err := f.CheckSandbox(sbs[123]); err == nil {
			t.Errorf("mode %s: sandbox 123 still present after Sync to 1", mode)
		}
		f.Delete()
	}
}

func TestFirewallBadInput(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	if _, err := NewFirewall(FirewallConfig{Mode: "iptables", NFLOGGroup: 100}); err == nil || !strings.Contains(err.Error(), `"iptables"`) {
		t.Errorf("unknown mode: got %v", err)
	}
	if _, err := NewFirewall(FirewallConfig{Mode: RedirectNftables, NFLOGGroup: 100}); err == nil || !strings.Contains(err.Error(), "listener") {
		t.Errorf("nftables mode without listeners: got %v", err)
	}
	f := newTestFirewall(t, FirewallConfig{Mode: RedirectNftables,
		TCPListen: netip.MustParseAddrPort("127.0.0.1:15001"), DNSListen: netip.MustParseAddrPort("127.0.0.1:15053")})
	empty, _ := f.Ruleset()
	good := api.Sandbox{Network: "n", ContainerID: "abc", IfName: "eth0", HostVeth: "pdbad0",
		SandboxMAC: "02:00:00:00:00:01", IPs: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/16")}}
	cases := map[string]struct {
		mut  func(*api.Sandbox)
		want string
	}{
		"empty ifname": {func(s *api.Sandbox) { s.HostVeth = "" }, "host veth name is empty"},
		"long ifname":  {func(s *api.Sandbox) { s.HostVeth = "abcdefghijklmnopq" }, "longer than 15"},
		"ipv6 only":    {func(s *api.Sandbox) { s.IPs = []netip.Prefix{netip.MustParsePrefix("2001:db8::2/64")} }, "no IPv4 address"},
		"no ips":       {func(s *api.Sandbox) { s.IPs = nil }, "no IPv4 address"},
		"bad mac":      {func(s *api.Sandbox) { s.SandboxMAC = "zz" }, `MAC "zz"`},
		"no container": {func(s *api.Sandbox) { s.ContainerID = "" }, "container id is empty"},
	}
	for name, c := range cases {
		sb := good
		c.mut(&sb)
		err := f.AddSandbox(sb)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got error %v, want one containing %q", name, err, c.want)
		}
	}
	if got, _ := f.Ruleset(); got != empty {
		t.Errorf("rejected sandboxes changed the ruleset:\n%s", got)
	}
	if err := f.Sync([]api.Sandbox{good, {Network: "n", ContainerID: "x", IfName: "eth0"}}); err == nil {
		t.Error("Sync with an invalid sandbox: want an error naming it")
	}
	if err := f.CheckSandbox(good); err != nil {
		t.Errorf("Sync must still apply the valid sandbox: %v", err)
	}
}

func TestFirewallWatchRestores(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	var logs testutil.SyncBuffer
	reg := prometheus.NewRegistry()
	f := newTestFirewall(t, FirewallConfig{Mode: RedirectBPF, Metrics: reg, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	sb := api.Sandbox{Network: "n", ContainerID: "abc", IfName: "eth0", HostVeth: "pdwatch0"}
	if err := f.AddSandbox(sb); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Watch(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	for i, attack := range []string{"delete table inet paddock", "flush table inet paddock", "flush set inet paddock sandbox_ifs"} {
		time.Sleep(2 * watchInterval)
		nftRun(t, "nft", attack)
		start := time.Now()
		for f.CheckSandbox(sb) != nil || f.Health() != "ok" || !strings.Contains(nftRun(t, "nft", "list", "chain", "inet", "paddock", "prerouting"), "jump") {
			if time.Since(start) > time.Second {
				t.Fatalf("%q: not restored within 1s (health %q)", attack, f.Health())
			}
			time.Sleep(20 * time.Millisecond)
		}
		if n := strings.Count(logs.String(), `"msg":"nftables table paddock was removed; restored"`); n != i+1 {
			t.Errorf("%q: %d restore alerts logged, want %d:\n%s", attack, n, i+1, logs.String())
		}
		if !strings.Contains(logs.String(), `"level":"ERROR"`) {
			t.Errorf("restore alert is not at level ERROR:\n%s", logs.String())
		}
	}
	if n := gatheredCounter(t, reg, "paddock_nft_restores_total", nil); n != 3 {
		t.Errorf("paddock_nft_restores_total = %v, want 3", n)
	}
}

// A restarted paddockd replaces the table but keeps enforcing the sandboxes
// the old one had until it has reconciled.
func TestFirewallRestartKeepsSets(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	for _, mode := range []RedirectMode{RedirectBPF, RedirectNftables} {
		cfg := FirewallConfig{Mode: mode, NFLOGGroup: 100,
			TCPListen: netip.MustParseAddrPort("127.0.0.1:15001"), DNSListen: netip.MustParseAddrPort("127.0.0.1:15053")}
		sb := api.Sandbox{Network: "n", ContainerID: "abc", IfName: "eth0", HostVeth: "pdkeep0",
			SandboxMAC: "02:00:00:00:00:01", IPs: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/16")}}
		f1 := newTestFirewall(t, cfg)
		if err := f1.AddSandbox(sb); err != nil {
			t.Fatal(err)
		}
		other := api.Sandbox{Network: "n", ContainerID: "def", IfName: "eth0", HostVeth: "pdkeep1",
			SandboxMAC: "02:00:00:00:00:02", IPs: []netip.Prefix{netip.MustParsePrefix("10.9.0.4/16")}}
		if err := f1.AddSandbox(other); err != nil {
			t.Fatal(err)
		}
		f2 := newTestFirewall(t, cfg)
		if err := f2.CheckSandbox(sb); err != nil {
			t.Errorf("mode %s: after restart: %v", mode, err)
		}
		if p := f2.verify(); p != "" {
			t.Errorf("mode %s: restarted table looks damaged to Watch: %s", mode, p)
		}
		// A DEL before the first reconcile removes the inherited entries.
		if err := f2.RemoveSandbox(other); err != nil {
			t.Errorf("mode %s: removing an inherited sandbox: %v", mode, err)
		}
		if err := f2.CheckSandbox(other); err == nil {
			t.Errorf("mode %s: inherited sandbox still present after RemoveSandbox", mode)
		}
		if p := f2.verify(); p != "" {
			t.Errorf("mode %s: after removing an inherited sandbox: %s", mode, p)
		}
		moved := sb
		moved.IPs = []netip.Prefix{netip.MustParsePrefix("10.9.0.3/16")}
		if err := f2.AddSandbox(moved); err != nil {
			t.Errorf("mode %s: re-adding an inherited sandbox: %v", mode, err)
		}
		if err := f2.Sync(nil); err != nil {
			t.Fatal(err)
		}
		if err := f2.CheckSandbox(sb); err == nil {
			t.Errorf("mode %s: Sync(nil) left the inherited sandbox in place", mode)
		}
		if rs, _ := f2.Ruleset(); strings.Contains(rs, "pdkeep0") {
			t.Errorf("mode %s: stale elements after Sync(nil):\n%s", mode, rs)
		}
		f2.Delete()
	}
}

func TestFirewallNftablesModeTPROXY(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	w := newNFTWorld(t)
	nftRun(t, "ip", "rule", "add", "fwmark", fmt.Sprint(MarkRedirect), "lookup", fmt.Sprint(RouteTable), "priority", fmt.Sprint(RulePriority))
	nftRun(t, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", fmt.Sprint(RouteTable))

	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
		if err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tcpAddr := netip.MustParseAddrPort(ln.Addr().String())
	dnsConn, err := lc.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dnsConn.Close()
	dnsAddr := netip.MustParseAddrPort(dnsConn.LocalAddr().String())
	rawDNS, _ := dnsConn.(*net.UDPConn).SyscallConn()
	rawDNS.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1) })
	f := newTestFirewall(t, FirewallConfig{Mode: RedirectNftables, TCPListen: tcpAddr,
		DNSListen: dnsAddr})
	if err := f.AddSandbox(w.sb); err != nil {
		t.Fatal(err)
	}
	rs, err := f.Ruleset()
	if err != nil {
		t.Fatal(err)
	}
	rs = strings.ReplaceAll(rs, w.sb.HostVeth, "HOSTVETH")
	rs = strings.ReplaceAll(rs, w.sb.SandboxMAC, "SANDBOXMAC")
	rs = strings.ReplaceAll(rs, fmt.Sprintf(":%d ", tcpAddr.Port()), ":TCPPORT ")
	rs = strings.ReplaceAll(rs, fmt.Sprintf(":%d ", dnsAddr.Port()), ":DNSPORT ")
	checkGolden(t, "nft_nftables.golden", rs)

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	before := w.farCount(t)
	w.inSandbox(t, func() error {
		c, err := net.DialTimeout("tcp4", "192.0.2.20:80", 2*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	select {
	case c := <-accepted:
		if got := c.LocalAddr().String(); got != "192.0.2.20:80" {
			t.Errorf("accepted LocalAddr = %s, want the original destination 192.0.2.20:80", got)
		}
		c.Close()
	case <-time.After(2 * time.Second):
		t.Fatal("tproxy listener accepted nothing")
	}

	w.inSandbox(t, sendUDP("192.0.2.20:7"))
	exec.Command("ip", "netns", "exec", w.sbNS, "ping", "-c1", "-W1", "192.0.2.20").Run()
	// DNS over UDP reaches the transparent DNS socket, which learns the
	// original destination.
	w.inSandbox(t, sendUDP("192.0.2.20:53"))
	dnsConn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf, oob := make([]byte, 512), make([]byte, 128)
	n, oobn, _, _, err := dnsConn.(*net.UDPConn).ReadMsgUDP(buf, oob)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("DNS socket got %q, %v; want the sandbox's datagram", buf[:n], err)
	}
	if orig := origDst(oob[:oobn]); orig != "192.0.2.20:53" {
		t.Errorf("DNS datagram original destination %q, want 192.0.2.20:53", orig)
	}
	// DNS listener gone: tproxy finds no socket, the drop behind it holds.
	dnsConn.Close()
	w.inSandbox(t, sendUDP("192.0.2.20:53"))
	// IPv6 is not served.
	hv, err := net.InterfaceByName(w.sb.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	nftRun(t, "ip", "-n", w.sbNS, "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "eth0")
	nftRun(t, "ip", "-n", w.sbNS, "-6", "neigh", "replace", "2001:db8::1", "lladdr", hv.HardwareAddr.String(), "dev", "eth0")
	w.inSandbox(t, sendUDP("[2001:db8:1::99]:9"))
	// Listener closed: TCP must fail closed, not be forwarded.
	ln.Close()
	w.inSandbox(t, func() error {
		if c, err := net.DialTimeout("tcp4", "192.0.2.20:80", 500*time.Millisecond); err == nil {
			c.Close()
			return fmt.Errorf("connection to 192.0.2.20:80 succeeded without a listener")
		}
		return nil
	})
	// Spoofed source address.
	nftRun(t, "ip", "-n", w.sbNS, "addr", "add", "198.51.100.99/24", "dev", "eth0")
	w.inSandbox(t, func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("198.51.100.99")}, &net.UDPAddr{IP: net.ParseIP("192.0.2.20"), Port: 7})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("spoof"))
		return err
	})
	if got := w.farCount(t); got != before {
		t.Errorf("%d packets from the sandbox reached the far side", got-before)
	}
	var counts map[string]uint64
	// A sandbox that changes its MAC is cut off.
	nftRun(t, "ip", "-n", w.sbNS, "link", "set", "eth0", "address", "02:00:5e:00:53:01")
	w.inSandbox(t, sendUDP("192.0.2.20:7"))
	counts, err = f.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range []string{"udp", "icmp", "no-listener", "spoofed-ip", "ipv6", "spoofed-mac"} {
		if counts[reason] == 0 {
			t.Errorf("no drop counted for reason %s: %v", reason, counts)
		}
	}
}

// origDst decodes IP_ORIGDSTADDR from a control message.
func origDst(oob []byte) string {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return ""
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8 {
			port := uint16(m.Data[2])<<8 | uint16(m.Data[3])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port).String()
		}
	}
	return ""
}
