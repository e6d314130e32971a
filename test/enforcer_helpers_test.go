package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/world"
)

// redirectModes are paddockd's two ways of reaching the proxy; every
// enforcer test runs in both.
var redirectModes = []string{"bpf", "nftables"}

// enforcerPolicy allows one site; everything the enforcer tests send is
// either redirected to the proxy or dropped before policy matters.
const enforcerPolicy = `dns: allowlist
egress:
  - domains: [allowed.test]
`

// dropWait bounds the wait for a drop or audit line to be written.
const dropWait = 3 * time.Second

// dropLine is one line of drops.jsonl (enforcer.Drop), the fields the
// tests look at.
type dropLine struct {
	Sandbox  string `json:"sandbox"`
	HostVeth string `json:"hostVeth"`
	Reason   string `json:"reason"`
	Proto    string `json:"proto"`
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	DstPort  uint16 `json:"dstPort"`
}

func (l dropLine) String() string {
	return fmt.Sprintf("%s %s %s %s -> %s:%d", l.Sandbox, l.Reason, l.Proto, l.Src, l.Dst, l.DstPort)
}

// auditLine is one line of the proxy's audit.jsonl.
type auditLine struct {
	Kind     string `json:"kind"`
	Sandbox  string `json:"sandbox"`
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	Decision string `json:"decision"`
}

// enfEnv is a world with paddockd in one redirect mode.
type enfEnv struct {
	mode string
	w    *world.World
	d    *world.Daemon
}

// newEnforcerEnv builds a world, writes the default policy and starts a
// ready paddockd with --redirect mode.
func newEnforcerEnv(t *testing.T, mode string) *enfEnv {
	t.Helper()
	w := newWorld(t)
	if err := w.WritePolicy("default", enforcerPolicy); err != nil {
		t.Fatal(err)
	}
	d := w.StartDaemon(t, "--redirect", mode)
	if st, err := d.WaitReady(15 * time.Second); err != nil {
		t.Fatalf("paddockd --redirect %s not ready: %v (%s %v)", mode, err, st.Message, st.Components)
	}
	return &enfEnv{mode: mode, w: w, d: d}
}

// sandbox attaches a sandbox through the real plugin. Tests use it at
// once: the proxy holds a connection from a source it does not know yet
// until paddockd's sandbox feed names it.
func (e *enfEnv) sandbox(t *testing.T, name string) *world.Sandbox {
	t.Helper()
	sb, err := e.w.AddSandbox(t, name, world.SandboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

// shortID is the sandbox field logs carry for sb.
func shortID(sb *world.Sandbox) string {
	id := sb.RuntimeConf().ContainerID
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (e *enfEnv) dropsPath() string { return enforcer.DropsPath(e.d.LogDir) }

// drops reads every line of drops.jsonl; a missing file is no drops.
func (e *enfEnv) drops(t *testing.T) []dropLine {
	t.Helper()
	return readJSONL[dropLine](t, e.dropsPath())
}

func (e *enfEnv) audit(t *testing.T) []auditLine {
	t.Helper()
	return readJSONL[auditLine](t, filepath.Join(e.d.LogDir, "audit.jsonl"))
}

func readJSONL[T any](t *testing.T, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s: line is not JSON: %v: %q", path, err, sc.Text())
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitDrops polls drops.jsonl until match selects at least one line (or
// dropWait passes), then waits a little longer so that a duplicate would
// show, and returns the matching lines.
func (e *enfEnv) waitDrops(t *testing.T, match func(dropLine) bool) []dropLine {
	t.Helper()
	sel := func() []dropLine {
		var out []dropLine
		for _, l := range e.drops(t) {
			if match(l) {
				out = append(out, l)
			}
		}
		return out
	}
	deadline := time.Now().Add(dropWait)
	for time.Now().Before(deadline) {
		if len(sel()) > 0 {
			time.Sleep(300 * time.Millisecond)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return sel()
}

// expectUDPDrop sends one UDP datagram from sb to dst port 7 and asserts it
// was dropped and logged exactly once with reason.
func (e *enfEnv) expectUDPDrop(t *testing.T, sb *world.Sandbox, dst, reason string) {
	t.Helper()
	if out, err := sendUDP(sb, dst, 7); err != nil {
		t.Fatalf("send udp to %s: %v: %s", dst, err, out)
	}
	e.expectDropOnce(t, sb, dst, reason)
}

// expectEnforcing proves sb is enforced again after a disruption: a UDP
// datagram to dropDst is dropped and logged exactly once, a TLS connection to
// tlsIP:443 goes through the proxy and is audited, and nothing leaked.
func (e *enfEnv) expectEnforcing(t *testing.T, sb *world.Sandbox, dropDst, tlsIP string) {
	t.Helper()
	e.expectUDPDrop(t, sb, dropDst, "udp")
	_, _ = curlTLS(sb, tlsIP, 443)
	e.waitAudit(t, sb, tlsIP+":443")
	e.w.AssertNoLeaks(t)
}

// expectDropOnce asserts that exactly one drop of sb to dst with reason was
// logged.
func (e *enfEnv) expectDropOnce(t *testing.T, sb *world.Sandbox, dst, reason string) {
	t.Helper()
	got := e.waitDrops(t, func(l dropLine) bool { return l.Dst == dst && l.Sandbox == shortID(sb) })
	if len(got) != 1 || got[0].Reason != reason {
		t.Errorf("drops to %s from %s: %v; want exactly one with reason %s (all drops: %v)", dst, shortID(sb), got, reason, e.drops(t))
	}
}

// waitAudit polls audit.jsonl for a line of sb's with destination dst.
func (e *enfEnv) waitAudit(t *testing.T, sb *world.Sandbox, dst string) {
	t.Helper()
	deadline := time.Now().Add(dropWait)
	for {
		for _, l := range e.audit(t) {
			if l.Dst == dst && l.Sandbox == shortID(sb) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no audit line of sandbox %s for %s: the connection did not reach the proxy with its original destination (audit: %+v)", shortID(sb), dst, e.audit(t))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run executes argv in sb, bounded by 15 s, and returns output and error
// (failure is often what the test wants).
func run(sb *world.Sandbox, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := sb.Exec(ctx, argv...)
	return string(out), err
}

// mustRun is run that fails t on error.
func mustRun(t *testing.T, sb *world.Sandbox, argv ...string) string {
	t.Helper()
	out, err := run(sb, argv...)
	if err != nil {
		t.Fatalf("%s in sandbox %s: %v: %s", strings.Join(argv, " "), sb.Name, err, out)
	}
	return out
}

// py runs a python3 program in sb.
func py(sb *world.Sandbox, prog string) (string, error) {
	return run(sb, "python3", "-c", prog)
}

// Packets a sandbox sends; each sends exactly one packet to its destination.
func sendUDP(sb *world.Sandbox, dst string, port int) (string, error) {
	fam := "AF_INET"
	if strings.Contains(dst, ":") {
		fam = "AF_INET6"
	}
	return py(sb, fmt.Sprintf(`import socket
s = socket.socket(socket.%s, socket.SOCK_DGRAM)
s.sendto(b"paddock", (%q, %d))
`, fam, dst, port))
}

func sendRaw(sb *world.Sandbox, dst string, proto int) (string, error) {
	return py(sb, fmt.Sprintf(`import socket
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, %d)
s.sendto(b"paddock", (%q, 0))
`, proto, dst))
}

// tcpConnect tries one TCP connection from src (empty: the kernel's choice)
// and reports "connected" or the error. A timeout under the first SYN
// retransmission (1 s) sends exactly one SYN.
func tcpConnect(sb *world.Sandbox, src, dst string, port int, timeout time.Duration) (string, error) {
	bind := ""
	if src != "" {
		bind = fmt.Sprintf("s.bind((%q, 0))\n", src)
	}
	return py(sb, fmt.Sprintf(`import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(%f)
%ss.connect((%q, %d))
print("connected")
`, timeout.Seconds(), bind, dst, port))
}

// curlTLS opens a TLS connection to ip:port through whatever path the
// sandbox has; the proxy answers it (and usually refuses the site).
func curlTLS(sb *world.Sandbox, ip string, port int) (string, error) {
	return run(sb, "curl", "-sSk", "-m", "5", fmt.Sprintf("https://%s:%d/", ip, port))
}

// hostVethMAC is the node-side MAC of sb's veth.
func hostVethMAC(t *testing.T, w *world.World, sb *world.Sandbox) string {
	t.Helper()
	var mac string
	if err := w.InNode(func() error {
		l, err := netlink.LinkByName(sb.HostVeth)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr.String()
		return nil
	}); err != nil {
		t.Fatalf("host veth %s: %v", sb.HostVeth, err)
	}
	return mac
}

// giveIPv6 does what an agent with CAP_NET_ADMIN in its own namespace can:
// an IPv6 address, a permanent neighbour for the gateway (so no NDP stands
// in the way) and a default route.
func giveIPv6(t *testing.T, w *world.World, sb *world.Sandbox) {
	t.Helper()
	mac := hostVethMAC(t, w, sb)
	mustRun(t, sb, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
	mustRun(t, sb, "ip", "-6", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad")
	mustRun(t, sb, "ip", "-6", "neigh", "replace", "fd00:99::1", "lladdr", mac, "dev", "eth0", "nud", "permanent")
	mustRun(t, sb, "ip", "-6", "route", "replace", "default", "via", "fd00:99::1", "dev", "eth0")
}

// spoofAddr is an address in sb's subnet that is not sb's.
func spoofAddr(w *world.World) netip.Addr {
	b := w.Subnet.Addr().As4()
	b[3] = 250
	return netip.AddrFrom4(b)
}

// nftRuleCount counts the rules of paddock's table in the node namespace.
func nftRuleCount(t *testing.T, w *world.World) int {
	t.Helper()
	out, err := w.ExecNode("nft", "-a", "list", "table", "inet", "paddock")
	if err != nil {
		t.Fatalf("nft list table inet paddock: %v: %s", err, out)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if strings.Contains(line, "# handle") && !strings.HasPrefix(line, "table ") && !strings.HasPrefix(line, "chain ") &&
			!strings.HasPrefix(line, "set ") && !strings.HasPrefix(line, "map ") {
			n++
		}
	}
	return n
}

var dropMetricRE = regexp.MustCompile(`(?m)^paddock_drops_total\{([^}]*)\} (\S+)$`)

// dropCounts sums paddock_drops_total of one reason by sandbox label.
func dropCounts(t *testing.T, d *world.Daemon, reason string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	page, err := d.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, m := range dropMetricRE.FindAllStringSubmatch(page, -1) {
		labels, v := m[1], m[2]
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("metric value %q: %v", v, err)
		}
		kv := map[string]string{}
		for _, pair := range strings.Split(labels, ",") {
			if k, val, ok := strings.Cut(pair, "="); ok {
				kv[k] = strings.Trim(val, `"`)
			}
		}
		if kv["reason"] == reason {
			out[kv["sandbox"]] += f
		}
	}
	return out
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stderrHas reports whether paddockd's log contains s.
func stderrHas(t *testing.T, d *world.Daemon, s string) bool {
	t.Helper()
	b, err := os.ReadFile(d.StderrFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}

// detachTCX detaches every tcx ingress program from sb's host veth, as an
// attacker on the node (or a careless tool) would, and returns how many.
func detachTCX(t *testing.T, w *world.World, sb *world.Sandbox) int {
	t.Helper()
	n := 0
	err := w.InNode(func() error {
		l, err := netlink.LinkByName(sb.HostVeth)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("query tcx: %w", err)
		}
		for _, p := range res.Programs {
			id, ok := p.LinkID()
			if !ok {
				return fmt.Errorf("program %d on %s has no link", p.ID, sb.HostVeth)
			}
			ln, err := link.NewFromID(id)
			if err != nil {
				return fmt.Errorf("open link %d: %w", id, err)
			}
			err = ln.Detach()
			ln.Close()
			if err != nil {
				return fmt.Errorf("detach link %d: %w", id, err)
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// registerBulk registers n sandboxes through the API, each on a real veth
// pair made in the node namespace (the CNI plugin would take minutes).
func registerBulk(t *testing.T, e *enfEnv, n int) {
	t.Helper()
	c := e.d.Client()
	base := e.w.Subnet.Addr().As4()
	gw := base
	gw[3] = 1
	for i := range n {
		host := fmt.Sprintf("%s-b%d", e.w.Prefix, i)
		var idx int
		var hostMAC, peerMAC string
		err := e.w.InNode(func() error {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: fmt.Sprintf("%s-c%d", e.w.Prefix, i)}
			if err := netlink.LinkAdd(v); err != nil {
				return fmt.Errorf("add veth %s: %w", host, err)
			}
			l, err := netlink.LinkByName(host)
			if err != nil {
				return err
			}
			peer, err := netlink.LinkByName(v.PeerName)
			if err != nil {
				return err
			}
			idx, hostMAC, peerMAC = l.Attrs().Index, l.Attrs().HardwareAddr.String(), peer.Attrs().HardwareAddr.String()
			return netlink.LinkSetUp(l)
		})
		if err != nil {
			t.Fatal(err)
		}
		ip := base
		ip[2], ip[3] = byte(1+i/250), byte(2+i%250)
		sb := api.Sandbox{
			Network: e.w.NetworkName(), ContainerID: fmt.Sprintf("bulk%016d", i), IfName: "eth0",
			HostVeth: host, HostIfIndex: idx, HostMAC: hostMAC, SandboxMAC: peerMAC,
			IPs:     []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4(ip), 16)},
			Gateway: netip.AddrFrom4(gw), Policy: "default",
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.Register(ctx, sb)
		cancel()
		if err != nil {
			t.Fatalf("register sandbox %d: %v", i, err)
		}
	}
}

// startUDPStream starts sending a datagram to dst:port from sb every 2 ms
// for d and returns once the first one is out; the returned func waits for
// the end of the stream.
func startUDPStream(t *testing.T, sb *world.Sandbox, dst string, port int, d time.Duration) func() {
	t.Helper()
	fam := "AF_INET"
	if strings.Contains(dst, ":") {
		fam = "AF_INET6"
	}
	prog := fmt.Sprintf(`import socket, time
s = socket.socket(socket.%s, socket.SOCK_DGRAM)
s.sendto(b"paddock", (%q, %d))
print("sending", flush=True)
end = time.time() + %f
while time.time() < end:
    s.sendto(b"paddock", (%q, %d))
    time.sleep(0.002)
`, fam, dst, port, d.Seconds(), dst, port)
	ctx, cancel := context.WithTimeout(context.Background(), d+15*time.Second)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", sb.NSName, "python3", "-c", prog)
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("udp stream in %s: %v", sb.Name, err)
	}
	wait := func() {
		defer cancel()
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "sending\n" {
		wait()
		t.Fatalf("udp stream in %s did not start: %q %v", sb.Name, line, err)
	}
	return wait
}

// lastLine is the last non-empty line of out (a Python traceback's error).
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}
