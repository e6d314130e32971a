package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ChildArg {
		ChildMain()
		return
	}
	os.Exit(m.Run())
}

func TestParseUser(t *testing.T) {
	if u, g, err := ParseUser("64000:64001"); err != nil || u != 64000 || g != 64001 {
		t.Fatalf("got %d:%d %v", u, g, err)
	}
	if _, _, err := ParseUser("64000:x"); err == nil || !strings.Contains(err.Error(), "uid:gid") {
		t.Fatalf("bad uid:gid accepted: %v", err)
	}
	if _, _, err := ParseUser("no-such-user-paddock"); err == nil {
		t.Fatal("unknown user accepted")
	}
	if _, err := NewSupervisor(SupervisorConfig{User: "0:0"}); err == nil || !strings.Contains(err.Error(), "root") {
		t.Fatalf("root proxy user accepted: %v", err)
	}
}

// procStatus returns the first value of a /proc/PID/status field.
func procStatus(t *testing.T, pid int, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			return strings.Fields(l)[1]
		}
	}
	t.Fatalf("no %s line", field)
	return ""
}

func procUID(t *testing.T, pid int) string { return procStatus(t, pid, "Uid") }

func TestSupervisorRunsChildUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the proxy as uid 64000")
	}
	// t.TempDir's parent is 0700; the proxy user must reach these files.
	root, err := os.MkdirTemp("", "paddock-sup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// The child re-executes this test binary as uid 64000: give it a copy it can reach.
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(root, "proxy.test")
	if err := os.WriteFile(exe, self, 0o755); err != nil {
		t.Fatal(err)
	}
	polDir := filepath.Join(root, "policies")
	caDir := filepath.Join(root, "ca")
	if err := os.Mkdir(polDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polDir, "default.yaml"), []byte("egress:\n  - domains: [allowed.test]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	auditPath := filepath.Join(root, "audit.jsonl")
	auditFile, err := os.OpenFile(auditPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer auditFile.Close()
	sup, err := NewSupervisor(SupervisorConfig{
		Proxy:  Config{PolicyDir: polDir, CADir: caDir, Resolver: "127.0.0.1:1"},
		User:   "64000:64000",
		TCP:    l.(*net.TCPListener),
		Audit:  auditFile,
		Exe:    exe,
		Stderr: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sup.SetSandboxes([]api.Sandbox{{Network: "n", ContainerID: "feedc0ffee00", IfName: "eth0", Policy: "default",
		IPs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Gateway: netip.MustParseAddr("127.0.0.2")}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("supervisor did not stop")
		}
	}()
	waitPid := func(not int) int {
		for i := 0; i < 100; i++ {
			if p := sup.Pid(); p != 0 && p != not {
				return p
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("proxy child did not start")
		return 0
	}
	pid := waitPid(0)
	if uid := procUID(t, pid); uid != "64000" {
		t.Fatalf("child uid %s, want 64000", uid)
	}
	for _, f := range []string{"CapEff", "CapPrm", "CapAmb"} {
		if v := procStatus(t, pid, f); strings.Trim(v, "0") != "" {
			t.Fatalf("child %s = %s, want no capabilities", f, v)
		}
	}

	// The child serves the handed-over listener: a plain HTTP request for a
	// host the policy does not name gets the 403 text.
	var line string
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ = bufio.NewReader(c).ReadString('\n')
		c.Close()
		if strings.Contains(line, "403") {
			break
		}
		time.Sleep(100 * time.Millisecond) // the CA is being created
	}
	if !strings.Contains(line, "403") {
		t.Fatalf("child answered %q, want 403", line)
	}
	// Set by the child itself once running (it answered, so it is).
	if v := procStatus(t, pid, "NoNewPrivs"); v != "1" {
		t.Fatalf("child NoNewPrivs = %s", v)
	}
	fi, err := os.Stat(filepath.Join(caDir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 64000 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca key owner %d mode %v", st.Uid, fi.Mode().Perm())
	}
	var audit []byte
	for i := 0; i < 50 && !strings.Contains(string(audit), "blocked.test"); i++ {
		time.Sleep(50 * time.Millisecond)
		audit, _ = os.ReadFile(auditPath)
	}
	if !strings.Contains(string(audit), `"sandbox":"feedc0ffee00"`) {
		t.Fatalf("audit log: %q", audit)
	}
	// A dead child is restarted.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if p2 := waitPid(pid); procUID(t, p2) != "64000" {
		t.Fatal("restarted child is not uid 64000")
	}
}
