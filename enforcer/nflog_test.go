package enforcer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/testutil"
)

// startTap runs `tcpdump -i nflog:group` beside the drop logger and
// returns a function that waits (bounded) until it has seen want packets,
// stops it and reports how many it saw.
func startTap(t *testing.T, group int) func(want int) int {
	t.Helper()
	pcap := filepath.Join(t.TempDir(), "tap.pcap")
	cmd := exec.Command("tcpdump", "-i", fmt.Sprintf("nflog:%d", group), "-n", "-U", "-w", pcap)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var all []string
		for sc.Scan() {
			all = append(all, sc.Text())
			if strings.Contains(sc.Text(), "listening on") {
				ready <- ""
			}
		}
		ready <- strings.Join(all, "\n")
	}()
	select {
	case msg := <-ready:
		if msg != "" {
			t.Fatalf("tcpdump -i nflog:%d did not start: %s", group, msg)
		}
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("tcpdump did not start within 5s")
	}
	count := func() int {
		out, _ := exec.Command("tcpdump", "-r", pcap, "-n").Output()
		return strings.Count(string(out), "\n")
	}
	stopped := false
	stop := func(want int) int {
		// tcpdump leaves the kernel's default batching on: up to ~1s.
		for deadline := time.Now().Add(3 * time.Second); count() < want && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
		}
		if !stopped {
			stopped = true
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		}
		return count()
	}
	t.Cleanup(func() { stop(0) })
	return stop
}

func TestDropLoggerLive(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	w := newNFTWorld(t)
	hv, err := net.InterfaceByName(w.sb.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	// Static neighbours: the sandbox's neighbour solicitations are dropped
	// too, and the test packets must still leave the sandbox.
	nftRun(t, "ip", "-n", w.sbNS, "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "eth0")
	nftRun(t, "ip", "-n", w.sbNS, "-6", "neigh", "replace", "2001:db8::1", "lladdr", hv.HardwareAddr.String(), "dev", "eth0")

	f := newTestFirewall(t, FirewallConfig{Mode: RedirectBPF, NFLOGGroup: 100, TapGroup: 101})
	if err := f.AddSandbox(w.sb); err != nil {
		t.Fatal(err)
	}
	// Marks as the BPF program would set them, from a table that runs first.
	nftRun(t, "nft", fmt.Sprintf(`add table inet paddocktest
add chain inet paddocktest pre { type filter hook prerouting priority -200; }
add rule inet paddocktest pre meta nfproto ipv6 meta mark set %#x return
add rule inet paddocktest pre ip daddr 192.0.2.21 return
add rule inet paddocktest pre meta l4proto udp meta mark set %#x
add rule inet paddocktest pre meta l4proto icmp meta mark set %#x
add rule inet paddocktest pre meta l4proto 253 meta mark set %#x`,
		MarkDenyBase|uint32(ReasonIPv6), MarkDenyBase|uint32(ReasonUDP), MarkDenyBase|uint32(ReasonICMP), MarkDenyBase|uint32(ReasonProto)))
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", "paddocktest").Run() })

	var known atomic.Bool
	known.Store(true)
	var logs testutil.SyncBuffer
	reg := prometheus.NewRegistry()
	path := filepath.Join(t.TempDir(), "log", DropsFile)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := StartDropLogger(ctx, DropLoggerConfig{Group: 100, Path: path, Metrics: reg,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
		ByIfIndex: func(i int) (api.Sandbox, bool) {
			if i == w.sb.HostIfIndex && known.Load() {
				return w.sb, true
			}
			return api.Sandbox{}, false
		}})
	if err != nil {
		t.Fatal(err)
	}
	if h := l.Health(); h != "ok" {
		t.Fatalf("health %q", h)
	}
	// The operator's tap keeps working while paddockd reads its group.
	stopTap := startTap(t, 101)
	if _, err := StartDropLogger(ctx, DropLoggerConfig{Group: 101, Path: path}); err == nil {
		t.Error("a second reader of the tap group must be refused while tcpdump reads it")
	}

	before := w.farCount(t)
	w.inSandbox(t, sendUDP("192.0.2.20:7"))
	exec.Command("ip", "netns", "exec", w.sbNS, "ping", "-c1", "-W1", "-s", "8", "192.0.2.20").Run() // fails: dropped
	w.inSandbox(t, func() error {
		c, err := net.ListenPacket("ip4:253", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteTo([]byte("raw"), &net.IPAddr{IP: net.ParseIP("192.0.2.20")})
		return err
	})
	w.inSandbox(t, sendUDP("[2001:db8:1::99]:9"))

	type want struct{ reason, proto, dst, sandbox string }
	wants := []want{
		{"udp", "udp", "192.0.2.20:7", w.sb.ShortID()},
		{"icmp", "icmp", "192.0.2.20", w.sb.ShortID()},
		{"ip-proto", "ip-proto-253", "192.0.2.20", w.sb.ShortID()},
		{"ipv6", "udp", "[2001:db8:1::99]:9", w.sb.ShortID()},
	}
	key := func(d Drop) string {
		dst := d.Dst
		if d.DstPort != 0 {
			if strings.Contains(dst, ":") {
				dst = "[" + dst + "]"
			}
			dst = fmt.Sprintf("%s:%d", dst, d.DstPort)
		}
		return d.Reason + " " + d.Proto + " " + dst + " " + d.Sandbox
	}
	var drops []Drop
	waitFor := func(wants []want) {
		deadline := time.Now().Add(3 * time.Second)
		for {
			drops, err = ReadDrops(path)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for _, d := range drops {
				got[key(d)]++
			}
			all := true
			for _, x := range wants {
				all = all && got[fmt.Sprintf("%s %s %s %s", x.reason, x.proto, x.dst, x.sandbox)] > 0
			}
			if all || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor(wants)
	// Unmarked (BPF missing) from an interface whose sandbox is unknown.
	known.Store(false)
	w.inSandbox(t, sendUDP("192.0.2.21:8"))
	wants = append(wants, want{"unmarked", "udp", "192.0.2.21:8", "unknown"})
	waitFor(wants)
	// Not registered yet but made by the plugin: the veth's alias names it.
	alias := api.Key{Network: "net", ContainerID: "aliasedcontainer42", IfName: "eth0"}.Alias()
	if out, err := exec.Command("ip", "link", "set", "dev", w.sb.HostVeth, "alias", alias).CombinedOutput(); err != nil {
		t.Fatalf("set alias: %v: %s", err, out)
	}
	w.inSandbox(t, sendUDP("192.0.2.22:8"))
	wants = append(wants, want{"udp", "udp", "192.0.2.22:8", "aliasedconta"})
	waitFor(wants)
	time.Sleep(300 * time.Millisecond) // would-be duplicates arrive by now
	drops, _ = ReadDrops(path)
	got := map[string]int{}
	for _, d := range drops {
		got[key(d)]++
	}
	for _, x := range wants {
		if n := got[fmt.Sprintf("%s %s %s %s", x.reason, x.proto, x.dst, x.sandbox)]; n != 1 {
			t.Errorf("%d drop lines for %+v, want exactly 1; log:\n%s", n, x, dumpDrops(drops))
		}
	}
	for _, d := range drops {
		if d.Dst == "192.0.2.20" && d.Proto == "icmp" && (d.ICMPType == nil || *d.ICMPType != 8) {
			t.Errorf("icmp drop without echo request type: %+v", d)
		}
		if d.Sandbox == w.sb.ShortID() && (d.ContainerID != w.sb.ContainerID || d.HostVeth != w.sb.HostVeth || d.Policy != "default" || d.Hook != "prerouting") {
			t.Errorf("drop lacks sandbox details: %+v", d)
		}
		if d.Sandbox == "unknown" && d.HostVeth != w.sb.HostVeth {
			t.Errorf("unknown-sandbox drop should still name the interface: %+v", d)
		}
	}
	if got := w.farCount(t); got != before {
		t.Errorf("%d packets from the sandbox reached the far side", got-before)
	}
	if n := gatheredCounter(t, reg, "paddock_drops_total", map[string]string{"sandbox": w.sb.ShortID(), "reason": "udp"}); n != 1 {
		t.Errorf("paddock_drops_total{reason=udp} = %v, want 1", n)
	}
	if !strings.Contains(logs.String(), `"msg":"drop","sandbox":"`+w.sb.ShortID()+`","reason":"udp"`) {
		t.Errorf("no slog drop event for the udp packet:\n%s", logs.String())
	}
	if n := stopTap(len(wants)); n < len(wants) {
		t.Errorf("tcpdump -i nflog:101 captured %d packets, want ≥%d", n, len(wants))
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 {
		t.Errorf("drop log mode %v, want 0640", st.Mode().Perm())
	}

	// logrotate moves the file away: new drops go to a new file at path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reopenCheck + 300*time.Millisecond)
	w.inSandbox(t, sendUDP("192.0.2.20:77"))
	deadline := time.Now().Add(3 * time.Second)
	for {
		ds, _ := ReadDrops(path)
		found := false
		for _, d := range ds {
			found = found || d.DstPort == 77
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after rotation, the drop to port 77 is not in the new %s: %v", path, ds)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dumpDrops(ds []Drop) string {
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "%+v\n", d)
	}
	return b.String()
}

// gatheredCounter is the value of the counter name{labels} in reg, or -1.
func gatheredCounter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// A flood is logged at the limited rate but every packet is counted and
// dropped: the limit must not end the rule that drops.
func TestDropLoggerFloodRateLimited(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	w := newNFTWorld(t)
	f := newTestFirewall(t, FirewallConfig{Mode: RedirectBPF, NFLOGGroup: 100})
	if err := f.AddSandbox(w.sb); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), DropsFile)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := StartDropLogger(ctx, DropLoggerConfig{Group: 100, Path: path,
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}); err != nil {
		t.Fatal(err)
	}
	before := w.farCount(t)
	const flood = 1000
	start := time.Now()
	w.inSandbox(t, func() error {
		c, err := net.Dial("udp4", "192.0.2.20:7")
		if err != nil {
			return err
		}
		defer c.Close()
		for range flood {
			c.Write([]byte("flood"))
		}
		return nil
	})
	elapsed := time.Since(start)
	time.Sleep(500 * time.Millisecond)
	counts, err := f.DropCounts()
	if err != nil {
		t.Fatal(err)
	}
	if counts["unmarked"] < flood {
		t.Errorf("counted %d unmarked drops, want ≥%d", counts["unmarked"], flood)
	}
	if got := w.farCount(t); got != before {
		t.Errorf("%d flood packets reached the far side: the rate limit leaked", got-before)
	}
	drops, _ := ReadDrops(path)
	limit := logBurst + int(elapsed.Seconds()+1.5)*logRate + 20 // + neighbour discovery noise
	if len(drops) < logBurst/2 || len(drops) > limit {
		t.Errorf("%d drop lines for a %d-packet flood in %v, want between %d and %d", len(drops), flood, elapsed, logBurst/2, limit)
	}
}
