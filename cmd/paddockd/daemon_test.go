package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/testutil"
	"github.com/paddock-sandbox/paddock/test/world"
)

var bins = testutil.Binaries{Pattern: "paddockd-bin", Bins: []testutil.Bin{{Name: "paddockd", Pkg: "."}}}

// paddockdBinary builds this command once per test run.
func paddockdBinary(t *testing.T) string {
	t.Helper()
	return filepath.Join(bins.Dir(t), "paddockd")
}

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Remove()
	os.Exit(code)
}

// daemon is one paddockd process under test, running inside a world's
// node namespace: paddockd installs policy routing, an nftables table and
// BPF pins, none of which may ever land in the root namespace.
type daemon struct {
	cmd    *exec.Cmd
	socket string
	stderr *testutil.SyncBuffer
	done   chan struct{}
	err    error
}

// newWorld builds a world (skipping unless root) with a default policy, so
// that paddockd's proxy has something to load.
func newWorld(t *testing.T) *world.World {
	t.Helper()
	w := world.New(t, world.Options{})
	for _, f := range []string{"paddock", "host-local"} {
		if _, err := os.Stat(filepath.Join(w.CNIPath(), f)); err != nil {
			t.Skipf("needs the CNI plugins in %s: run `make build` first (or set PADDOCK_BIN)", w.CNIPath())
		}
	}
	if err := w.WritePolicy("default", "dns: allowlist\negress:\n  - domains: [allowed.test]\n"); err != nil {
		t.Fatal(err)
	}
	return w
}

// daemonFlags are the world's paddockd flags with the API socket (in a dir
// paddockd creates), state and logs under dir, so that a test can point a
// second paddockd at other state in the same namespace.
func daemonFlags(w *world.World, dir string, extra ...string) []string {
	flags := append(w.DefaultDaemonFlags(),
		"--api-socket", socketPath(dir),
		"--state-dir", filepath.Join(dir, "state"),
		"--log-dir", filepath.Join(dir, "log"),
		"--metrics-addr", "",
		"--proxy-metrics-addr", "",
	)
	return append(flags, extra...)
}

func socketPath(dir string) string { return filepath.Join(dir, "run", "paddockd.sock") }

// startDaemon runs paddockd with daemonFlags(w, dir, extra...) and waits
// until its API answers. The process is killed at cleanup if the test did
// not stop it.
func startDaemon(t *testing.T, w *world.World, dir string, extra ...string) *daemon {
	t.Helper()
	d := launch(t, w, dir, extra...)
	c := api.NewClient(d.socket)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := c.Status(t.Context()); err == nil {
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("paddockd exited at start (%v):\n%s", d.err, d.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("paddockd did not answer on %s within 15s:\n%s", d.socket, d.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// launch starts paddockd under `nsenter --net` in the world's node
// namespace (not `ip netns exec`, which would hide /sys/fs/bpf).
func launch(t *testing.T, w *world.World, dir string, extra ...string) *daemon {
	t.Helper()
	d := &daemon{socket: socketPath(dir), stderr: &testutil.SyncBuffer{}, done: make(chan struct{})}
	args := append([]string{"--net=" + w.NodePath(), "--", paddockdBinary(t)}, daemonFlags(w, dir, extra...)...)
	d.cmd = exec.Command("nsenter", args...)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.done
	})
	return d
}

// wait returns the exit code, failing the test after 15s.
func (d *daemon) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("paddockd did not exit within 15s:\n%s", d.stderr)
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		t.Fatal(d.err)
	}
	return 0
}

// containerID is long enough that logs and tables show a shorter id.
const containerID = "0123456789abcdef0123"

// addSandbox attaches a real sandbox through the paddock CNI plugin, which
// registers it with the paddockd whose state is under w.Dir.
func addSandbox(t *testing.T, w *world.World) *world.Sandbox {
	t.Helper()
	sb, err := w.AddSandbox(t, "agent", world.SandboxOptions{
		ContainerID: containerID,
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", "agent"}},
		Plugin:      map[string]any{"daemonSocket": socketPath(w.Dir)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func TestDaemonRegistrySurvivesKill9(t *testing.T) {
	w := newWorld(t)
	d := startDaemon(t, w, w.Dir)

	fi, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("api socket mode %v, want a 0600 socket", fi.Mode())
	}
	if fi, err := os.Stat(filepath.Dir(d.socket)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("socket dir mode %v (%v), want 0755", fi.Mode().Perm(), err)
	}

	sb := addSandbox(t, w)
	c := api.NewClient(d.socket)
	stored, err := c.Get(t.Context(), api.Key{Network: w.NetworkName(), ContainerID: containerID, IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if stored.Created.IsZero() {
		t.Fatal("paddockd did not stamp Created")
	}
	if stored.Enforced != "ok" {
		t.Fatalf("Enforced = %q after CNI ADD, want ok", stored.Enforced)
	}
	if _, err := c.Register(t.Context(), api.Sandbox{Network: w.NetworkName(), IfName: "eth0"}); err == nil || !strings.Contains(err.Error(), "container id is empty") {
		t.Fatalf("Register without container id = %v", err)
	}

	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.wait(t)
	if _, err := os.Lstat(d.socket); err != nil {
		t.Fatalf("kill -9 should leave the socket file behind for the restart to clean: %v", err)
	}

	d2 := startDaemon(t, w, w.Dir)
	list, err := api.NewClient(d2.socket).List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("after kill -9 and restart: %d sandboxes, want 1", len(list))
	}
	got := list[0]
	if got.Key() != stored.Key() || got.HostVeth != sb.HostVeth || got.Args["K8S_POD_NAME"] != "agent" || !got.Created.Equal(stored.Created) {
		t.Fatalf("restored %+v, want %+v", got.Sandbox, stored.Sandbox)
	}
	if got.Enforced != "ok" {
		t.Fatalf("Enforced = %q after kill -9 and restart, want ok", got.Enforced)
	}
	if err := sb.Check(); err != nil {
		t.Fatalf("CNI CHECK after kill -9 and restart: %v", err)
	}

	if err := d2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := d2.wait(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d, want 0:\n%s", code, d2.stderr)
	}
	if _, err := os.Lstat(d2.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after SIGTERM: %v", err)
	}
	// SIGTERM keeps sandboxes: they stay registered (and enforced) for the next start.
	d3 := startDaemon(t, w, w.Dir)
	if st, err := api.NewClient(d3.socket).Status(t.Context()); err != nil || st.Sandboxes != 1 {
		t.Fatalf("after SIGTERM and restart: %+v, %v", st, err)
	}
	assertJSONLogs(t, d.stderr.String())
	assertJSONLogs(t, d2.stderr.String())
}

func assertJSONLogs(t *testing.T, logs string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		if m["msg"] == "sandbox registered" && m["sandbox"] != containerID[:12] {
			t.Errorf("sandbox key in log = %v, want the short id", m["sandbox"])
		}
		n++
	}
	if n == 0 {
		t.Fatal("paddockd logged nothing")
	}
}

func TestDaemonRefusesLiveSocketAndStrayFile(t *testing.T) {
	w := newWorld(t)
	d := startDaemon(t, w, w.Dir)
	second := launch(t, w, w.Dir)
	if code := second.wait(t); code == 0 || !strings.Contains(second.stderr.String(), "served by a running paddockd") {
		t.Fatalf("second paddockd on the same socket: exit %d\n%s", code, second.stderr)
	}
	if _, err := api.NewClient(d.socket).Status(t.Context()); err != nil {
		t.Fatalf("first paddockd lost its socket: %v", err)
	}

	other := t.TempDir()
	stray := filepath.Join(other, "run", "paddockd.sock")
	if err := os.MkdirAll(filepath.Dir(stray), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stray, []byte("not a socket"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := launch(t, w, other)
	if code := p.wait(t); code == 0 || !strings.Contains(p.stderr.String(), "is not a socket") {
		t.Fatalf("paddockd over a regular file: exit %d\n%s", code, p.stderr)
	}
	if b, _ := os.ReadFile(stray); string(b) != "not a socket" {
		t.Fatal("paddockd replaced a file that was not its socket")
	}
}

func TestDaemonCorruptRegistry(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(state, "sandboxes.json")
	if err := os.WriteFile(file, []byte(`{"version":1,"sandboxes":[{`), 0o600); err != nil {
		t.Fatal(err)
	}
	d := launch(t, w, dir)
	if code := d.wait(t); code != 1 || !strings.Contains(d.stderr.String(), file) {
		t.Fatalf("corrupt registry: exit %d, want 1 and the file named:\n%s", code, d.stderr)
	}
	if _, err := os.Lstat(d.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("paddockd opened its API over a corrupt registry")
	}
	assertNoDataPath(t, w)
}

// assertNoDataPath fails t if paddockd left its nftables table in the node
// namespace: a paddockd that refused to start must not half-install one.
func assertNoDataPath(t *testing.T, w *world.World) {
	t.Helper()
	if out, err := w.ExecNode("nft", "list", "tables"); err != nil || strings.Contains(string(out), "paddock") {
		t.Errorf("node namespace tables after a refused start: %s %v", out, err)
	}
}

func TestDaemonBadFlagExits2(t *testing.T) {
	w := newWorld(t)
	d := launch(t, w, t.TempDir(), "--redirect", "iptables")
	if code := d.wait(t); code != 2 || !strings.Contains(d.stderr.String(), "use bpf or nftables") {
		t.Fatalf("exit %d:\n%s", code, d.stderr)
	}
	assertNoDataPath(t, w)
}

func TestDaemonMetricsAndHealthz(t *testing.T) {
	w := newWorld(t)
	d := startDaemon(t, w, w.Dir, "--metrics-addr", world.MetricsAddr)
	addSandbox(t, w)
	client := world.HTTPClient(w.NodePath(), nil)
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://" + world.MetricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "\npaddock_sandboxes 1\n") || !strings.Contains(body, "paddock_build_info{") {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	if _, err := api.NewClient(d.socket).Status(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Ready once every component is up: the proxy process may still be
	// starting when the API first answers.
	var st api.Status
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body = get("/healthz")
		st = api.Status{}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/healthz body: %v: %s", err, body)
		}
		if code == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code != http.StatusOK || !st.Ready || st.Sandboxes != 1 {
		t.Fatalf("/healthz: %d %+v", code, st)
	}
	for name, c := range st.Components {
		if c != "ok" {
			t.Errorf("component %s = %q while /healthz says ready", name, c)
		}
	}
}

func TestDaemonMetricsPortTaken(t *testing.T) {
	w := newWorld(t)
	var l net.Listener
	if err := w.InNode(func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := launch(t, w, t.TempDir(), "--metrics-addr", l.Addr().String())
	if code := d.wait(t); code != 1 || !strings.Contains(d.stderr.String(), "metrics listener") {
		t.Fatalf("exit %d:\n%s", code, d.stderr)
	}
	if _, err := os.Lstat(d.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("paddockd left an API socket behind although it did not start")
	}
	assertNoDataPath(t, w)
}
