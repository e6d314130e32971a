package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// paddockdBinary builds this command once per test run.
func paddockdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "paddockd-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "paddockd")
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		out, err := exec.Command(goBin, "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// daemon is one paddockd process under test.
type daemon struct {
	cmd    *exec.Cmd
	socket string
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startDaemon runs paddockd with its state under dir and waits until its API
// answers. The process is killed at cleanup if the test did not stop it.
func startDaemon(t *testing.T, dir string, extra ...string) *daemon {
	t.Helper()
	d := launch(t, dir, extra...)
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

func launch(t *testing.T, dir string, extra ...string) *daemon {
	t.Helper()
	d := &daemon{socket: filepath.Join(dir, "run", "paddockd.sock"), stderr: &syncBuffer{}, done: make(chan struct{})}
	args := append([]string{
		"--api-socket", d.socket,
		"--state-dir", filepath.Join(dir, "state"),
		"--log-dir", filepath.Join(dir, "log"),
		"--resolver", "192.0.2.53:53",
		"--metrics-addr", "",
	}, extra...)
	d.cmd = exec.Command(paddockdBinary(t), args...)
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

func testSandbox() api.Sandbox {
	return api.Sandbox{
		Network: "paddock-test", ContainerID: "0123456789abcdef0123", IfName: "eth0",
		HostVeth: "pdk0123", HostIfIndex: 4242,
		IPs: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24")}, Gateway: netip.MustParseAddr("10.99.0.1"),
		Policy: "default", Args: map[string]string{"K8S_POD_NAME": "agent"},
	}
}

func TestDaemonRegistrySurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir)

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

	c := api.NewClient(d.socket)
	stored, err := c.Register(t.Context(), testSandbox())
	if err != nil {
		t.Fatal(err)
	}
	if stored.Created.IsZero() {
		t.Fatal("paddockd did not stamp Created")
	}
	if _, err := c.Register(t.Context(), api.Sandbox{Network: "paddock-test", IfName: "eth0"}); err == nil || !strings.Contains(err.Error(), "container id is empty") {
		t.Fatalf("Register without container id = %v", err)
	}

	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.wait(t)
	if _, err := os.Lstat(d.socket); err != nil {
		t.Fatalf("kill -9 should leave the socket file behind for the restart to clean: %v", err)
	}

	d2 := startDaemon(t, dir)
	list, err := api.NewClient(d2.socket).List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("after kill -9 and restart: %d sandboxes, want 1", len(list))
	}
	got := list[0]
	if got.Key() != stored.Key() || got.HostVeth != "pdk0123" || got.Args["K8S_POD_NAME"] != "agent" || !got.Created.Equal(stored.Created) {
		t.Fatalf("restored %+v, want %+v", got.Sandbox, stored)
	}
	if got.Enforced != "not built yet" {
		t.Fatalf("Enforced = %q: the no-op enforcer must not claim enforcement", got.Enforced)
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
	d3 := startDaemon(t, dir)
	if st, err := api.NewClient(d3.socket).Status(t.Context()); err != nil || st.Sandboxes != 1 {
		t.Fatalf("after SIGTERM and restart: %+v, %v", st, err)
	}
	assertJSONLogs(t, d2.stderr.String())
}

func assertJSONLogs(t *testing.T, logs string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(logs))
	n := 0
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		if m["msg"] == "sandbox registered" && m["sandbox"] != "0123456789ab" {
			t.Errorf("sandbox key in log = %v, want the short id", m["sandbox"])
		}
		n++
	}
	if n == 0 {
		t.Fatal("paddockd logged nothing")
	}
}

func TestDaemonRefusesLiveSocketAndStrayFile(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir)
	second := launch(t, dir)
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
	p := launch(t, other)
	if code := p.wait(t); code == 0 || !strings.Contains(p.stderr.String(), "is not a socket") {
		t.Fatalf("paddockd over a regular file: exit %d\n%s", code, p.stderr)
	}
	if b, _ := os.ReadFile(stray); string(b) != "not a socket" {
		t.Fatal("paddockd replaced a file that was not its socket")
	}
}

func TestDaemonCorruptRegistry(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(state, "sandboxes.json")
	if err := os.WriteFile(file, []byte(`{"version":1,"sandboxes":[{`), 0o600); err != nil {
		t.Fatal(err)
	}
	d := launch(t, dir)
	if code := d.wait(t); code != 1 || !strings.Contains(d.stderr.String(), file) {
		t.Fatalf("corrupt registry: exit %d, want 1 and the file named:\n%s", code, d.stderr)
	}
	if _, err := os.Lstat(d.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("paddockd opened its API over a corrupt registry")
	}
}

func TestDaemonBadFlagExits2(t *testing.T) {
	d := launch(t, t.TempDir(), "--redirect", "iptables")
	if code := d.wait(t); code != 2 || !strings.Contains(d.stderr.String(), "use bpf or nftables") {
		t.Fatalf("exit %d:\n%s", code, d.stderr)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestDaemonMetricsAndHealthz(t *testing.T) {
	addr := freePort(t)
	d := startDaemon(t, t.TempDir(), "--metrics-addr", addr)
	if _, err := api.NewClient(d.socket).Register(t.Context(), testSandbox()); err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
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
	code, body = get("/healthz")
	var st api.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/healthz body: %v: %s", err, body)
	}
	// The no-op enforcer is never ready.
	if code != http.StatusServiceUnavailable || st.Ready || st.Components["enforcer"] != "not built yet" {
		t.Fatalf("/healthz: %d %+v", code, st)
	}
}

func TestDaemonMetricsPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := launch(t, t.TempDir(), "--metrics-addr", l.Addr().String())
	if code := d.wait(t); code != 1 || !strings.Contains(d.stderr.String(), "metrics listener") {
		t.Fatalf("exit %d:\n%s", code, d.stderr)
	}
	if _, err := os.Lstat(d.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("paddockd left an API socket behind although it did not start")
	}
}
