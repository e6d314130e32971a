package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/proxy"
	"github.com/paddock-sandbox/paddock/test/world"
)

// proxyWorld is a world with paddockd running, one sandbox attached under
// policy "default", and the paths a client inside the sandbox needs.
type proxyWorld struct {
	w  *world.World
	d  *world.Daemon
	sb *world.Sandbox
	gw netip.Addr // the sandbox's gateway: the explicit proxy and DNS guard answer there
	ca string     // paddock's node CA, what a sandbox trusts for terminated TLS
}

// newProxyWorld builds the world, writes policy as "default", starts
// paddockd and waits for it to report Ready, then attaches sandbox "agent".
// dnsNames are added to the world's DNS at the web server's address.
func newProxyWorld(t *testing.T, policy string, dnsNames ...string) *proxyWorld {
	t.Helper()
	return newProxyWorldWith(t, nil, policy, dnsNames...)
}

// newProxyWorldWith is newProxyWorld with extra paddockd flags.
func newProxyWorldWith(t *testing.T, daemonFlags []string, policy string, dnsNames ...string) *proxyWorld {
	t.Helper()
	w := world.New(t, world.Options{})
	for _, name := range dnsNames {
		if err := w.SetDNS(name, world.WebAddr.String()); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.WritePolicy("default", policy); err != nil {
		t.Fatal(err)
	}
	d := w.StartDaemon(t, daemonFlags...)
	if st, err := d.WaitReady(15 * time.Second); err != nil {
		t.Fatalf("paddockd not ready: %v (components %v)", err, st.Components)
	}
	sb, err := w.AddSandbox(t, "agent", world.SandboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := &proxyWorld{w: w, d: d, sb: sb, ca: filepath.Join(d.CADir, "ca.pem")}
	for _, ipc := range sb.Result.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Gateway); ok && a.Unmap().Is4() {
			p.gw = a.Unmap()
		}
	}
	if !p.gw.IsValid() {
		t.Fatalf("sandbox result has no IPv4 gateway: %+v", sb.Result)
	}
	return p
}

// exec runs argv in the sandbox, bounded by timeout, and returns its
// combined output.
func (p *proxyWorld) exec(t *testing.T, timeout time.Duration, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := p.sb.Exec(ctx, argv...)
	return string(out), err
}

// curl runs curl in the sandbox trusting paddock's CA, with a 10 s limit.
func (p *proxyWorld) curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{"curl", "-sS", "-m", "10", "--cacert", p.ca}, args...)
	return p.exec(t, 15*time.Second, argv...)
}

// explicitProxy is the HTTPS_PROXY value for the sandbox.
func (p *proxyWorld) explicitProxy() string {
	return "http://" + net.JoinHostPort(p.gw.String(), "3128")
}

// audit returns the records of paddockd's audit.jsonl so far.
func (p *proxyWorld) audit(t *testing.T) []proxy.AuditRecord {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.d.LogDir, "audit.jsonl"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read audit log: %v", err)
	}
	var recs []proxy.AuditRecord
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r proxy.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q is not an audit record: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// waitAudit waits up to 5 s for an audit record match accepts; the proxy
// writes a record after the response, so it may trail the client a little.
func (p *proxyWorld) waitAudit(t *testing.T, what string, match func(proxy.AuditRecord) bool) proxy.AuditRecord {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := p.audit(t)
		for _, r := range recs {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit record for %s among %d records:\n%s", what, len(recs), auditDump(recs))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func auditDump(recs []proxy.AuditRecord) string {
	var sb strings.Builder
	for _, r := range recs {
		b, _ := json.Marshal(r)
		sb.Write(b)
		sb.WriteByte('\n')
	}
	return sb.String()
}

// proxyPid returns the pid of the paddock-proxy child of this world's
// paddockd, 0 when there is none. Other worlds run proxies too, so the
// parent pid picks ours.
func (p *proxyWorld) proxyPid(t *testing.T) int {
	t.Helper()
	parent := p.d.Pid()
	if parent == 0 {
		t.Fatal("paddockd is not running")
	}
	out, err := exec.Command("pgrep", "-P", strconv.Itoa(parent), "-f", "^paddock-proxy").Output()
	if err != nil {
		return 0 // pgrep exits 1 when nothing matches
	}
	fields := strings.Fields(string(out))
	if len(fields) != 1 {
		t.Fatalf("paddockd %d has %d paddock-proxy children: %q", parent, len(fields), out)
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil {
		t.Fatalf("pgrep output %q: %v", out, err)
	}
	return pid
}

// waitProxyPid waits up to timeout for a proxy child whose pid is not old.
func (p *proxyWorld) waitProxyPid(t *testing.T, old int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if pid := p.proxyPid(t); pid != 0 && pid != old {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new paddock-proxy process within %s (old pid %d)", timeout, old)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// procUIDs returns the real, effective, saved and filesystem uids of pid.
func procUIDs(t *testing.T, pid int) []int {
	t.Helper()
	var uids []int
	for _, f := range strings.Fields(procField(t, pid, "Uid")) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("Uid of %d: %q: %v", pid, f, err)
		}
		uids = append(uids, n)
	}
	if len(uids) != 4 {
		t.Fatalf("Uid of %d: %v, want 4 ids", pid, uids)
	}
	return uids
}

// procField returns the value of one line of /proc/PID/status ("CapEff").
func procField(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("proxy status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("/proc/%d/status has no %s line", pid, key)
	return ""
}

// secretDir makes a directory the proxy user (nobody) can read and writes
// the named secrets into it; removed at the end of the test.
func secretDir(t *testing.T, secrets map[string]string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "paddock-secrets-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, val := range secrets {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(val+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// headerRecorder is an HTTPS upstream in the internet namespace that serves
// the world's handler and keeps the headers of every request it received,
// so a test sees what reached the upstream, not what the proxy returned.
type headerRecorder struct {
	mu   sync.Mutex
	seen []http.Header
}

func (h *headerRecorder) received() []http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]http.Header(nil), h.seen...)
}

// startHeaderRecorder listens on addr inside the world's internet namespace.
func startHeaderRecorder(t *testing.T, w *world.World, addr string) *headerRecorder {
	t.Helper()
	rec := &headerRecorder{}
	var l net.Listener
	err := w.InInternet(func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("header recorder: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", world.Handler())
	// /events is a server-sent event stream: one event, then a pause, as
	// an LLM API streams tokens; a client must get the first event at once.
	mux.HandleFunc("/events", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(rw, "data: first\n\n")
		http.NewResponseController(rw).Flush()
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(rw, "data: second\n\n")
	})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			rec.mu.Lock()
			rec.seen = append(rec.seen, r.Header.Clone())
			rec.mu.Unlock()
			mux.ServeHTTP(rw, r)
		}),
		TLSConfig:         &tls.Config{GetCertificate: w.CA().GetCertificate},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { srv.Close() })
	return rec
}

// connCounter listens on addr inside a namespace entered by in and counts
// the connections it accepts: proof that nothing dialled there.
type connCounter struct {
	mu sync.Mutex
	n  int
}

func (c *connCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func startConnCounter(t *testing.T, in func(func() error) error, addr string) *connCounter {
	t.Helper()
	c := &connCounter{}
	var l net.Listener
	err := in(func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.n++
			c.mu.Unlock()
			conn.Close()
		}
	}()
	return c
}
