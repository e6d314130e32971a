package world

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, w *World, nsPath, url string) string {
	t.Helper()
	resp, err := HTTPClient(nsPath, w.CAPool()).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", url, err)
	}
	return string(b)
}

// The servers answer with the world's CA, from internet itself and through
// node's uplink, and node's traffic is counted but is no leak.
func TestUpstreams(t *testing.T) {
	w := New(t, Options{})
	if got := get(t, w, w.InternetPath(), "https://allowed.test/"); got != "hello from allowed.test\n" {
		t.Errorf("https://allowed.test/ from internet = %q", got)
	}
	if got := get(t, w, w.NodePath(), "http://echo.test/"); got != "hello from echo.test\n" {
		t.Errorf("http://echo.test/ from node = %q", got)
	}
	if got := get(t, w, w.NodePath(), "https://203.0.113.10/"); got != "hello from 203.0.113.10\n" {
		t.Errorf("https://203.0.113.10/ from node = %q", got)
	}
	var echo EchoReply
	if err := json.Unmarshal([]byte(get(t, w, w.NodePath(), "https://other.test/echo?x=1")), &echo); err != nil {
		t.Fatal(err)
	}
	if echo.Host != "other.test" || echo.SNI != "other.test" || echo.Path != "/echo" || !echo.TLS {
		t.Errorf("/echo = %+v", echo)
	}
	if got := get(t, w, w.NodePath(), "https://allowed.test/bytes?n=100000"); len(got) != 100000 {
		t.Errorf("/bytes?n=100000 gave %d bytes", len(got))
	}
	if got := get(t, w, w.NodePath(), "https://allowed.test/slow?seconds=1&n=1000"); len(got) != 1000 {
		t.Errorf("/slow gave %d bytes", len(got))
	}
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := w.ExecInternet("curl", "-sS", "--max-time", "10", "--cacert", w.CAFile, "--resolve", "passthrough.test:443:192.0.2.10", "https://passthrough.test/")
		if err != nil || string(out) != "hello from passthrough.test\n" {
			t.Errorf("curl with the world CA: %v: %s", err, out)
		}
	}
	// UDP and TCP echo, from node.
	for _, network := range []string{"udp", "tcp"} {
		c, err := DialerIn(w.NodePath())(context.Background(), network, "192.0.2.20:7")
		if err != nil {
			t.Fatalf("%s echo: %v", network, err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4)
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Errorf("%s echo: %q %v", network, buf, err)
		}
		c.Close()
	}
	if out, err := w.ExecNode("ping", "-c1", "-W2", EchoAddr.String()); err != nil {
		t.Errorf("ping from node: %v: %s", err, out)
	}
	if w.NodePackets() == 0 {
		t.Error("node's upstream traffic was not counted")
	}
	w.AssertNoLeaks(t)
}

func TestDNS(t *testing.T) {
	w := New(t, Options{})
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (bind9-dnsutils)")
	}
	dig := func(args ...string) string {
		t.Helper()
		out, err := w.ExecNode(append([]string{"dig", "+time=2", "+tries=1", "@" + DNSAddr.String()}, args...)...)
		if err != nil {
			t.Fatalf("dig %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	short := func(args ...string) string {
		return strings.TrimSpace(dig(append([]string{"+short"}, args...)...))
	}
	for name, want := range DefaultDNS {
		if got := short(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if got := short("+tcp", "allowed.test"); got != WebAddr.String() {
		t.Errorf("allowed.test over TCP = %q", got)
	}
	if got := dig("nope.test"); !strings.Contains(got, "NXDOMAIN") {
		t.Errorf("nope.test: want NXDOMAIN, got\n%s", got)
	}
	if got := short("TXT", "x1.exfil.test"); !strings.Contains(got, "paddock test world") {
		t.Errorf("TXT x1.exfil.test = %q", got)
	}
	if err := w.SetDNS("new.test", "203.0.113.10"); err != nil {
		t.Fatal(err)
	}
	if got := short("new.test"); got != "203.0.113.10" {
		t.Errorf("after SetDNS new.test = %q", got)
	}
	if err := w.SetDNS("bad.test", "not-an-ip"); err == nil {
		t.Error("SetDNS accepted not-an-ip")
	}
	if q := strings.Join(w.DNSQueries(), ","); !strings.Contains(q, "TXT x1.exfil.test.") {
		t.Errorf("query log lacks the TXT query: %s", q)
	}
}

// A sandbox that node forwards without paddock leaks, and the detector says so.
func TestLeakDetectorSeesForwardedTraffic(t *testing.T) {
	w := New(t, Options{})
	p, err := w.AddPlainSandbox("leaky")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := p.Exec(ctx, "ping", "-c1", "-W2", EchoAddr.String())
	if err != nil {
		t.Fatalf("ping through a bare node should work (and leak): %v: %s", err, out)
	}
	// The sandbox resolves through the world's DNS server.
	if out, err := p.Exec(ctx, "getent", "hosts", "echo.test"); err != nil || !strings.HasPrefix(string(out), "192.0.2.10") {
		t.Errorf("getent hosts echo.test in the sandbox: %v: %s", err, out)
	}
	leaks := w.WaitLeak(2 * time.Second)
	if len(leaks) == 0 || !strings.Contains(leaks[0], "ipv4 icmp "+p.IP.String()+" -> 192.0.2.20") {
		t.Fatalf("leak detector missed the ping: %q", leaks)
	}
	c, err := DialerIn(p.NetNS)(ctx, "udp", "192.0.2.20:7")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("exfil"))
	c.Close()
	w.capture.Sync()
	if got := strings.Join(w.Leaks(), "\n"); !strings.Contains(got, "udp "+p.IP.String()) {
		t.Errorf("leak detector missed UDP:\n%s", got)
	}
	// IPv6 is forwarded too, and any IPv6 packet at internet is a leak.
	c, err = DialerIn(p.NetNS)(ctx, "udp6", "[2001:db8::20]:7")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("exfil6"))
	c.Close()
	w.capture.Sync()
	if got := strings.Join(w.Leaks(), "\n"); !strings.Contains(got, "ipv6 udp ["+p.IP6.String()+"]") {
		t.Errorf("leak detector missed IPv6:\n%s", got)
	}
	w.ResetLeaks()
	w.AssertNoLeaks(t)
}

// Teardown leaves no namespace, link, directory or claim behind.
func TestTeardownLeavesNothing(t *testing.T) {
	RequireRoot(t)
	w, err := Build(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.AddPlainSandbox("gone"); err != nil {
		w.Close()
		t.Fatal(err)
	}
	dir, claim := w.Dir, w.subClaim
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), w.Prefix) {
		t.Errorf("namespaces left behind:\n%s", out)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, w.Prefix) {
			t.Errorf("link %s left in the root namespace", i.Name)
		}
	}
	for _, p := range []string{dir, claim, w.BPFFSDir()} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}

// Bad input is refused with a clear error and leaves nothing behind.
func TestBadInput(t *testing.T) {
	RequireRoot(t)
	if _, err := Build(t, Options{ID: "Bad!"}); err == nil || !strings.Contains(err.Error(), `"Bad!"`) {
		t.Errorf("Build with id Bad!: %v", err)
	}
	if _, err := Build(t, Options{SandboxRange: netip.MustParsePrefix("fd00::/8")}); err == nil {
		t.Error("Build accepted an IPv6 sandbox range")
	}
	// A build that fails halfway undoes itself and leaves a namesake alone.
	id := "x" + randomHex(2)
	squatter, err := createNetns("pw" + id + "-inet")
	if err != nil {
		t.Fatal(err)
	}
	squatter.Close()
	defer deleteNetns("pw" + id + "-inet")
	if _, err := Build(t, Options{ID: id}); err == nil {
		t.Fatal("Build succeeded over an existing internet namespace")
	}
	if _, err := os.Stat(netnsPath("pw" + id + "-node")); err == nil {
		t.Error("failed Build left its node namespace")
	}
	if _, err := os.Stat(netnsPath("pw" + id + "-inet")); err != nil {
		t.Error("failed Build deleted a namespace it did not make")
	}
	if dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "paddock-pw"+id+"-*")); len(dirs) > 0 {
		t.Errorf("failed Build left %v", dirs)
	}
	claims, _ := os.ReadDir(claimDir)
	for _, c := range claims {
		if b, _ := os.ReadFile(filepath.Join(claimDir, c.Name())); strings.Contains(string(b), "pw"+id) {
			t.Errorf("failed Build left its subnet claim %s", c.Name())
		}
	}

	w := New(t, Options{})
	for _, name := range []string{"", "UPPER", "node", "has space", strings.Repeat("x", 21)} {
		if _, err := w.AddPlainSandbox(name); err == nil {
			t.Errorf("AddPlainSandbox(%q) succeeded", name)
		}
		if _, err := w.CreateSandbox(name, SandboxOptions{}); err == nil {
			t.Errorf("CreateSandbox(%q) succeeded", name)
		}
	}
	if _, err := w.AddPlainSandbox("twice"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AddPlainSandbox("twice"); err == nil {
		t.Error("a second sandbox named twice was accepted")
	}
	matches, _ := filepath.Glob(netnsPath(w.Prefix + "-*"))
	if len(matches) != 3 { // node, inet, twice
		t.Errorf("namespaces after bad input: %v", matches)
	}
}

// With the real plugin and paddockd built, a sandbox is attached, checked and
// deleted through libcni inside node.
func TestCNISandbox(t *testing.T) {
	RequireRoot(t)
	bin, err := findBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"paddockd", "cni/paddock", "cni/host-local"} {
		if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
			t.Skipf("needs %s: run `make build` first", filepath.Join(bin, f))
		}
	}
	w := New(t, Options{})
	d := w.StartDaemon(t)
	if m, err := d.Metrics(context.Background()); err != nil || m == "" {
		t.Errorf("metrics from node: %v", err)
	}
	if st, err := d.WaitReady(5 * time.Second); err != nil {
		// The plugin must refuse, and the world must undo the namespace.
		if _, aerr := w.AddSandbox(t, "early", SandboxOptions{}); aerr == nil {
			t.Fatalf("ADD succeeded while paddockd says it is not ready (%+v)", st)
		}
		if _, serr := os.Stat(netnsPath(w.Prefix + "-early")); serr == nil {
			t.Errorf("failed ADD left its namespace behind")
		}
		t.Skipf("paddockd is not ready, so no sandbox can be attached: %v", err)
	}
	sb, err := w.AddSandbox(t, "agent", SandboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !w.Subnet.Contains(sb.IP) || sb.HostVeth == "" {
		t.Errorf("sandbox ip %s (subnet %s), host veth %q", sb.IP, w.Subnet, sb.HostVeth)
	}
	if err := sb.Check(); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = sb.Exec(ctx, "ping", "-c1", "-W1", EchoAddr.String())
	w.AssertNoLeaks(t)
	if err := sb.Del(); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if _, err := os.Stat(sb.NetNS); err == nil {
		t.Errorf("%s left after DEL", sb.NetNS)
	}
}

// paddockd runs inside node, survives a crash-and-restart cycle, and stops.
func TestDaemonLifecycle(t *testing.T) {
	RequireRoot(t)
	bin, err := findBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bin, "paddockd")); err != nil {
		t.Skipf("needs %s: run `make build` first", filepath.Join(bin, "paddockd"))
	}
	w := New(t, Options{})
	d := w.StartDaemon(t)
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	if exited, _ := d.Exited(); !exited || d.Pid() != 0 {
		t.Fatalf("after Kill: exited=%v pid=%d", exited, d.Pid())
	}
	if _, err := d.Client().Status(context.Background()); err == nil {
		t.Error("API answers after Kill")
	}
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client().Status(context.Background()); err != nil {
		t.Errorf("after Restart: %v", err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.LaunchDaemon(DaemonOptions{Extra: []string{"--no-such-flag"}, Ready: 3 * time.Second}); err == nil {
		t.Error("paddockd with an unknown flag was reported ready")
	}
}

// A world whose test process died without cleanups is swept by the next one.
func TestSweepStale(t *testing.T) {
	RequireRoot(t)
	w, err := Build(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.AddPlainSandbox("orphan"); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("nsenter", "--net="+w.NodePath(), "--", "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	// Pretend the world belongs to a process that is gone.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(claim{Prefix: w.Prefix, PID: dead.Process.Pid, Dir: w.Dir})
	if err := os.WriteFile(w.subClaim, data, 0o644); err != nil {
		t.Fatal(err)
	}
	SweepStale(t)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("a process left in the stale node namespace was not killed")
		_ = sleeper.Process.Kill()
	}
	for _, p := range []string{w.NodePath(), w.InternetPath(), netnsPath(w.Prefix + "-orphan"), filepath.Join(etcNetns, w.Prefix+"-orphan"), w.Dir, w.subClaim} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s survived the sweep", p)
		}
	}
}
