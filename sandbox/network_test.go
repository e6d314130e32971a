package sandbox_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/world"
)

// webPolicy allows allowed.test only; worlds also hold a deny-all default.
const webPolicy = "dns: allowlist\negress:\n  - domains: [allowed.test]\n"

// launch runs `paddock run` with a 60 s bound; in the node namespace (as a
// runtime runs: paddockd and the CNI plugin live there) when nodeNS is set.
func launch(t *testing.T, nodeNS string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	argv := append([]string{paddockBin, "run"}, args...)
	if nodeNS != "" {
		argv = append([]string{"nsenter", "--net=" + nodeNS, "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	return so.String(), se.String(), exitStatus(err)
}

// auditLines are paddockd's audit records for one sandbox.
func auditLines(t *testing.T, d *world.Daemon, sandbox string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.LogDir, "audit.jsonl"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range strings.Split(string(b), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(l), &r) == nil && r["sandbox"] == sandbox {
			out = append(out, r)
		}
	}
	return out
}

// waitCA waits for the proxy to create its CA when paddockd starts it.
func waitCA(t *testing.T, d *world.Daemon) string {
	t.Helper()
	ca := filepath.Join(d.CADir, "ca.pem")
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(ca); err == nil {
			return ca
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no proxy CA at %s: paddockd did not start the proxy", ca)
	return ""
}

// TestNetworkPaddock runs curl under `paddock run` in a test world: the
// launcher attaches its namespace with the real CNI plugin from inside the
// world's node namespace (as a runtime would), paddockd enforces the policy
// given with --policy through the transparent proxy, whose CA is trusted
// through --ca-bundle with no per-tool step; every exit detaches (CNI DEL:
// no registration, no veth left) and nothing leaks.
func TestNetworkPaddock(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	w := world.New(t, world.Options{})
	if _, err := os.Stat(filepath.Join(w.CNIPath(), "paddock")); err != nil {
		t.Skipf("the CNI plugin is not built in %s: run make build", w.CNIPath())
	}
	if err := w.WritePolicy("web", webPolicy); err != nil {
		t.Fatal(err)
	}
	d := w.StartDaemon(t)
	if _, err := d.WaitReady(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	confDir := t.TempDir()
	conf, err := w.ConfListBytes(world.SandboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "paddock.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	ws, state := t.TempDir(), t.TempDir()
	if err := os.Chmod(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	base := []string{"--cni-conf-dir", confDir, "--cni-bin-dir", w.CNIPath(), "--state-dir", state, "--workspace", ws, "--policy", "web"}
	run := func(flags []string, argv ...string) (string, string, int) {
		return launch(t, w.NodePath(), append(append(append(append([]string{}, base...), flags...), "--"), argv...)...)
	}
	veths := func() int {
		out, err := w.ExecNode("ip", "-o", "link", "show", "type", "veth")
		if err != nil {
			t.Fatalf("ip link in node: %v %s", err, out)
		}
		return strings.Count(string(out), "\n")
	}
	detached := func(when string) {
		t.Helper()
		list, err := d.Client().List(context.Background())
		if err != nil {
			t.Fatalf("paddockd list: %v", err)
		}
		if len(list) != 0 {
			t.Errorf("%s: paddockd still holds %d attachments: %+v", when, len(list), list)
		}
	}
	before := veths()

	// Attach, see the interface inside, detach on exit (also on failure).
	so, se, code := run([]string{"--verbose"}, "sh", "-c", "cat /sys/class/net/eth0/address && exit 3")
	if code != 3 || !strings.Contains(se, "network: paddock via CNI") {
		t.Fatalf("run on the paddock network: exit %d\n%s%s", code, so, se)
	}
	detached("after a failing command")
	if n := veths(); n != before {
		t.Errorf("%d veths in node after the run, %d before", n, before)
	}

	ca := waitCA(t, d)
	curl := func(args ...string) (string, string, int) {
		return run([]string{"--ca-bundle", ca}, append([]string{"curl", "-sS", "--max-time", "10", "-w", "\ncode=%{http_code}\n"}, args...)...)
	}
	so, se, code = curl("https://allowed.test/")
	t.Logf("allowed: exit %d %q %q", code, so, se)
	if code != 0 || !strings.Contains(so, "hello") || !strings.Contains(so, "code=200") {
		t.Errorf("allowed site not reached: exit %d\n%s%s", code, so, se)
	}
	// The DNS guard answers nothing for a name policy does not name...
	so, se, code = curl("https://blocked.test/")
	t.Logf("blocked by name: exit %d %q %q", code, so, se)
	if code == 0 || !strings.Contains(se, "resolve") {
		t.Errorf("blocked name resolved: exit %d\n%s%s", code, so, se)
	}
	// ...and with the address given, the proxy refuses it.
	so, se, code = curl("--resolve", "blocked.test:443:"+world.WebAddr.String(), "https://blocked.test/")
	t.Logf("blocked by address: exit %d %q %q", code, so, se)
	if !strings.Contains(so, "code=403") || !strings.Contains(so, "denied by policy") || strings.Contains(so, "hello") {
		t.Errorf("blocked site not refused with 403: exit %d\n%s%s", code, so, se)
	}
	detached("after the curl runs")
	if n := veths(); n != before {
		t.Errorf("%d veths in node after the runs, %d before", n, before)
	}
	w.AssertNoLeaks(t)
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Errorf("runs left state behind: %v", ents)
	}
}

// TestNetworkNone runs curl under `paddock run --network none` against a
// world's paddockd: the sandbox has loopback only; HTTP(S)_PROXY names the
// loopback port the launcher relays to paddockd's explicit socket, under the
// run's id and --policy, so the policy decides and the audit names the run.
func TestNetworkNone(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	w := world.New(t, world.Options{})
	if err := w.WritePolicy("web", webPolicy); err != nil {
		t.Fatal(err)
	}
	d := w.StartDaemon(t)
	ca := waitCA(t, d)
	// Whoever connects is trusted to name its sandbox: root only.
	if fi, err := os.Stat(w.ExplicitSocket()); err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("paddockd's explicit socket: want root's, mode 0600: %v %v", fi, err)
	}
	ws, state := t.TempDir(), t.TempDir()
	if err := os.Chmod(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(argv ...string) (string, string, int) {
		return launch(t, "", append([]string{"--network", "none", "--proxy-socket", w.ExplicitSocket(), "--policy", "web",
			"--ca-bundle", ca, "--state-dir", state, "--workspace", ws, "--verbose", "--"}, argv...)...)
	}
	last := func(s string) string {
		l := strings.Split(strings.TrimSpace(s), "\n")
		return l[len(l)-1]
	}
	runID := regexp.MustCompile(`relayed to .* as sandbox ([0-9a-f]+),`)

	so, se, code := run("curl", "-sS", "--max-time", "10", "https://allowed.test/")
	t.Logf("allowed: exit %d %q %q", code, so, last(se))
	if code != 0 || !strings.Contains(so, "hello") {
		t.Fatalf("allowed site not reached through the explicit proxy: exit %d\n%s%s", code, so, se)
	}
	m := runID.FindStringSubmatch(se)
	if m == nil {
		t.Fatalf("no run id in the verbose output:\n%s", se)
	}
	var allowed []map[string]any
	for i := 0; i < 50 && len(allowed) == 0; i++ {
		allowed = auditLines(t, d, m[1])
		time.Sleep(50 * time.Millisecond)
	}
	if len(allowed) == 0 || allowed[0]["decision"] != "allow" {
		t.Errorf("no allow audit line for run %s: %v", m[1], allowed)
	}

	so, se, code = run("curl", "-sS", "--max-time", "10", "https://blocked.test/")
	t.Logf("blocked: exit %d %q %q", code, so, last(se))
	if code == 0 || !strings.Contains(se, "403") {
		t.Errorf("blocked site not refused with 403: exit %d\n%s%s", code, so, se)
	}
	if m = runID.FindStringSubmatch(se); m != nil {
		var denied []map[string]any
		for i := 0; i < 50 && len(denied) == 0; i++ {
			denied = auditLines(t, d, m[1])
			time.Sleep(50 * time.Millisecond)
		}
		if len(denied) == 0 || denied[0]["decision"] != "deny" || denied[0]["host"] != "blocked.test" {
			t.Errorf("no deny audit line for run %s: %v", m[1], denied)
		}
	}

	// Without the proxy there is no network at all; paddockd's socket is
	// not visible inside.
	so, se, code = run("sh", "-c", "ls /sys/class/net; test -e "+w.ExplicitSocket()+" && echo VISIBLE; curl -sS --max-time 5 --noproxy '*' https://allowed.test/")
	t.Logf("no proxy: exit %d %q %q", code, so, last(se))
	if code == 0 || strings.Contains(so, "hello") || strings.Contains(so, "VISIBLE") || strings.TrimSpace(strings.Split(so, "\n")[0]) != "lo" {
		t.Errorf("--noproxy run reached something: exit %d\n%s%s", code, so, se)
	}
	w.AssertNoLeaks(t)
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Errorf("runs left state behind: %v", ents)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(w.ExplicitSocket()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("paddockd left its explicit socket behind: %v", err)
	}
}

// TestNetworkNoneRelay checks the launcher's relay without paddockd: the
// explicit socket receives the header naming the run and its policy before
// anything the sandbox sends, so a header written from inside arrives as
// mere payload; the sandbox sees only loopback.
func TestNetworkNoneRelay(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	e := newEnv(t)
	sock := filepath.Join(t.TempDir(), "explicit.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	headers := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				h, _ := br.ReadString('\n')
				headers <- h
				req, err := http.ReadRequest(br)
				if err != nil {
					fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
					return
				}
				body := fmt.Sprintf("proxied %s %s\n", req.Method, req.URL)
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			}()
		}
	}()
	r := e.run([]string{"--proxy-socket", sock, "--policy", "team.web", "--verbose"},
		`ls /sys/class/net; curl -sS --max-time 10 http://site.test/path; ls -ln /run/paddock-proxy/proxy.sock`)
	if r.code != 0 || !strings.Contains(r.stdout, "proxied GET http://site.test/path") {
		t.Fatalf("relay: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.TrimSpace(strings.Split(r.stdout, "\n")[0]) != "lo" {
		t.Errorf("interfaces other than lo inside --network none: %q", r.stdout)
	}
	if !strings.Contains(r.stdout, " 65534 65534 ") {
		t.Errorf("the relay socket inside is not the sandbox user's: %q", r.stdout)
	}
	m := regexp.MustCompile(`as sandbox ([0-9a-f]+),`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no run id in the verbose output:\n%s", r.stderr)
	}
	want, err := api.ExplicitHeader(m[1], "team.web")
	if err != nil {
		t.Fatal(err)
	}
	if h := <-headers; h != want {
		t.Errorf("header %q, want %q", h, want)
	}

	// Whatever the sandbox writes, even a header of its own, comes after
	// the launcher's header: the run's id and the default policy.
	r = e.run([]string{"--proxy-socket", sock}, `printf 'PADDOCK-EXPLICIT/1 sandbox=evil policy=open\n' | curl -sS --max-time 10 --unix-socket /run/paddock-proxy/proxy.sock --data-binary @- http://x.test/`)
	if r.code != 0 || !strings.Contains(r.stdout, "proxied POST /") {
		t.Errorf("direct use of the relay socket: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if h := <-headers; !strings.HasPrefix(h, "PADDOCK-EXPLICIT/1 sandbox=") || strings.Contains(h, "evil") || !strings.HasSuffix(h, " policy=default\n") {
		t.Errorf("header %q: want the launcher's, with policy default", h)
	}

	// Without paddockd the command's proxy connections close, and the
	// launcher says why.
	r = e.run([]string{"--proxy-socket", sock + ".missing"}, `curl -sS --max-time 10 http://site.test/`)
	if r.code == 0 || !strings.Contains(r.stderr, "cannot reach paddockd's explicit proxy at "+sock+".missing") {
		t.Errorf("missing paddockd: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// Bad policy names are refused before anything starts.
	r = e.run([]string{"--proxy-socket", sock, "--policy", "../etc"}, "true")
	if r.code == 0 || !strings.Contains(r.stderr, `policy "../etc"`) {
		t.Errorf("bad policy name: exit %d %s", r.code, r.stderr)
	}
	if ents, _ := os.ReadDir(e.state); len(ents) != 0 {
		t.Errorf("a refused run left state behind: %v", ents)
	}
}

func exitStatus(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
