package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy/policy"
	"github.com/paddock-sandbox/paddock/test/testutil"
)

// syncBuffer is an audit sink tests can read while the proxy writes.
type syncBuffer struct{ testutil.SyncBuffer }

func (s *syncBuffer) records(t *testing.T) []AuditRecord {
	var out []AuditRecord
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var r AuditRecord
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

// world is one in-process test setup: a DNS server for *.test, an HTTPS and
// an HTTP upstream on 127.0.0.1 with their own CA, a policy dir and a proxy.
type world struct {
	t         *testing.T
	dnsAddr   string
	upCA      *CA
	upRoots   *x509.CertPool
	nodeRoots *x509.CertPool
	tlsPort   int
	httpPort  int
	dir       string
	store     *policy.Store
	srv       *Server
	audit     *syncBuffer
	sb        api.Sandbox

	mu       sync.Mutex
	lastReq  *http.Request
	lastBody string
}

var testZone = map[string]string{
	"allowed.test.":     "127.0.0.1",
	"other.test.":       "127.0.0.1",
	"pass.test.":        "127.0.0.1",
	"secret.test.":      "127.0.0.1",
	"nosecret.test.":    "127.0.0.1",
	"plain.test.":       "127.0.0.1",
	"blocked.test.":     "127.0.0.1",
	"loop.test.":        "127.0.0.1",
	"private.test.":     "10.0.0.1",
	"metadata.test.":    "169.254.169.254",
	"slow.test.":        "127.0.0.1",
	"evil.allowed.test": "127.0.0.1",
}

func startDNS(t *testing.T) string {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		ip, ok := testZone[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A %s", q.Name, ip))
			m.Answer = append(m.Answer, rr)
		case q.Qtype == dns.TypeAAAA:
			rr, _ := dns.NewRR(q.Name + " 60 IN AAAA 2001:db8::1")
			m.Answer = append(m.Answer, rr)
		case q.Qtype == dns.TypeTXT:
			rr, _ := dns.NewRR(q.Name + ` 60 IN TXT "tunnel"`)
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func newWorld(t *testing.T, policyYAML string) *world {
	t.Helper()
	w := &world{t: t, audit: &syncBuffer{}}
	w.dnsAddr = startDNS(t)
	var err error
	w.upCA, err = LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.upRoots = x509.NewCertPool()
	w.upRoots.AddCert(w.upCA.Cert)

	handler := http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.mu.Lock()
		w.lastReq, w.lastBody = r.Clone(context.Background()), string(body)
		w.mu.Unlock()
		if r.Header.Get("Upgrade") == "websocket" {
			c, brw, err := http.NewResponseController(rw).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			_, _ = io.Copy(c, brw) // echo
			return
		}
		if r.URL.Path == "/slow" {
			for i := 0; i < 20; i++ {
				fmt.Fprintf(rw, "chunk %d\n", i)
				rw.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
			return
		}
		if k := r.Header.Get("X-Api-Key"); k != "" {
			rw.Header().Set("Echo-Key", "got "+k)
			// split across writes to exercise the streaming redactor
			half := len(k) / 2
			fmt.Fprintf(rw, "key=%s", k[:half])
			rw.(http.Flusher).Flush()
			fmt.Fprintf(rw, "%s;", k[half:])
		}
		fmt.Fprintf(rw, "hello from %s via %s %s", r.Host, r.Proto, r.Method)
	})
	up := httptest.NewUnstartedServer(handler)
	up.EnableHTTP2 = true
	up.TLS = &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return w.upCA.Leaf(h.ServerName) }}
	up.StartTLS()
	t.Cleanup(up.Close)
	w.tlsPort = up.Listener.Addr().(*net.TCPAddr).Port
	plain := httptest.NewServer(handler)
	t.Cleanup(plain.Close)
	w.httpPort = plain.Listener.Addr().(*net.TCPAddr).Port

	w.dir = t.TempDir()
	w.writePolicy("default", policyYAML)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	w.store, err = policy.NewStore(w.dir, log)
	if err != nil {
		t.Fatal(err)
	}
	nodeCA, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.nodeRoots = x509.NewCertPool()
	w.nodeRoots.AddCert(nodeCA.Cert)
	w.sb = api.Sandbox{Network: "n", ContainerID: "0123456789abcdef", IfName: "eth0", Policy: "default",
		IPs: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24")}, Gateway: netip.MustParseAddr("10.99.0.1")}
	dialer := NewNetDialer(w.dnsAddr, &Guard{Internal: func(a netip.Addr) bool { return a == w.sb.Gateway }})
	w.srv, err = NewServer(Options{
		CA: nodeCA, Decider: &StoreDecider{Store: w.store, Lookup: dialer.Lookup}, Dialer: dialer,
		Audit: NewAuditor(w.audit), Log: log, UpstreamRoots: w.upRoots, PeekTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// expand fills {TLS} and {HTTP} with the upstream ports.
func (w *world) expand(s string) string {
	return strings.NewReplacer("{TLS}", fmt.Sprint(w.tlsPort), "{HTTP}", fmt.Sprint(w.httpPort)).Replace(s)
}

func (w *world) writePolicy(name, y string) {
	w.t.Helper()
	f := filepath.Join(w.dir, name+".yaml")
	if err := os.WriteFile(f+".tmp", []byte(w.expand(y)), 0o644); err != nil {
		w.t.Fatal(err)
	}
	if err := os.Rename(f+".tmp", f); err != nil {
		w.t.Fatal(err)
	}
	// Make sure the store sees a new mtime even within one clock tick.
	future := time.Now().Add(time.Duration(time.Now().UnixNano()%1000+1) * time.Millisecond)
	_ = os.Chtimes(f, future, future)
}

// dial opens a real TCP connection to a one-shot listener whose accepted
// socket is handed to ServeConn with the given original destination.
func (w *world) dial(orig netip.AddrPort) (net.Conn, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		defer l.Close()
		c, err := l.Accept()
		if err != nil {
			return
		}
		w.srv.ServeConn(c, w.sb, orig)
	}()
	return net.Dial("tcp4", l.Addr().String())
}

func (w *world) origFor(port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), uint16(port))
}

// client returns an HTTP client whose every connection goes through the
// proxy as a transparently redirected connection to port.
func (w *world) client(h2 bool, roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			_, p, _ := splitHostPort(addr, 0)
			return w.dial(w.origFor(p))
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: h2,
		DisableKeepAlives: false,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	w.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (w *world) get(c *http.Client, method, rawurl string, hdr map[string]string) (int, string, http.Header) {
	w.t.Helper()
	req, err := http.NewRequest(method, w.expand(rawurl), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, rawurl, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// lastRequest is the last request the upstream received, nil before any.
func (w *world) lastRequest() *http.Request {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastReq
}

// auditFor waits briefly for an audit record matching f.
func (w *world) auditFor(f func(AuditRecord) bool) AuditRecord {
	w.t.Helper()
	for i := 0; i < 50; i++ {
		for _, r := range w.audit.records(w.t) {
			if f(r) {
				return r
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatalf("no matching audit record in:\n%s", w.audit.String())
	return AuditRecord{}
}

const basePolicy = `
egress:
  - domains: [allowed.test, other.test]
    ports: [{TLS}, {HTTP}]
    allowPrivate: true
    http: {methods: [GET, HEAD]}
  - domains: [pass.test]
    ports: [{TLS}]
    tls: passthrough
    allowPrivate: true
  - domains: [secret.test]
    ports: [{TLS}, {HTTP}]
    allowPrivate: true
    inject: [{header: x-api-key, secretEnv: PADDOCK_TEST_SECRET}]
  - domains: [nosecret.test]
    ports: [{TLS}]
    allowPrivate: true
    inject: [{header: Authorization, value: "Bearer {secret}", secretFile: /nonexistent/paddock-secret}]
  - domains: [loop.test, private.test, metadata.test]
    ports: [{TLS}]
  - domains: [plain.test, slow.test]
    ports: [{HTTP}, {TLS}]
    allowPrivate: true
  - tcp: ["127.0.0.1:{HTTP}"]
    allowPrivate: true
  - deny: [evil.allowed.test]
`

func TestTerminateHTTP1AndHTTP2(t *testing.T) {
	w := newWorld(t, basePolicy)
	for _, h2 := range []bool{false, true} {
		code, body, _ := w.get(w.client(h2, w.nodeRoots), "GET", "https://allowed.test:{TLS}/x", nil)
		if code != 200 || !strings.Contains(body, "hello from allowed.test") {
			t.Fatalf("h2=%v: got %d %q", h2, code, body)
		}
	}
	// The client side of the second request negotiated h2 with the proxy.
	c := w.client(true, w.nodeRoots)
	resp, err := c.Get(w.expand("https://allowed.test:{TLS}/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("sandbox side protocol %s, want HTTP/2", resp.Proto)
	}
	r := w.auditFor(func(r AuditRecord) bool { return r.Host == "allowed.test" && r.Status == 200 })
	if r.Decision != "allow" || r.Policy != "default" || r.Rule != "egress[0]" || r.SNI != "allowed.test" || r.Sandbox != "0123456789ab" || r.BytesDown == 0 {
		t.Fatalf("audit record %+v", r)
	}
}

func TestDeniedHostGets403(t *testing.T) {
	w := newWorld(t, basePolicy)
	code, body, _ := w.get(w.client(false, w.nodeRoots), "GET", "https://blocked.test:{TLS}/", nil)
	if code != 403 || body != fmt.Sprintf("paddock: request to blocked.test denied by policy \"default\" (no rule allows this host on port %d)\n", w.tlsPort) {
		t.Fatalf("got %d %q", code, body)
	}
	code, body, _ = w.get(w.client(false, w.nodeRoots), "GET", "https://evil.allowed.test:{TLS}/", nil)
	if code != 403 || !strings.Contains(body, "denied by egress[7]") {
		t.Fatalf("deny rule: got %d %q", code, body)
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Host == "blocked.test" && r.Decision == "deny" && r.Status == 403
	})
	w.auditFor(func(r AuditRecord) bool { return r.Rule == "egress[7]" && r.Decision == "deny" })
}

func TestPassthroughKeepsUpstreamCert(t *testing.T) {
	w := newWorld(t, basePolicy)
	c := w.client(false, w.upRoots) // trusts only the upstream's CA
	tr := c.Transport.(*http.Transport)
	var issuer string
	tr.TLSClientConfig.VerifyConnection = func(cs tls.ConnectionState) error {
		issuer = cs.PeerCertificates[0].Issuer.CommonName
		return nil
	}
	code, body, _ := w.get(c, "GET", "https://pass.test:{TLS}/", nil)
	if code != 200 || !strings.Contains(body, "hello from pass.test") {
		t.Fatalf("got %d %q", code, body)
	}
	if issuer != w.upCA.Cert.Subject.CommonName {
		t.Fatalf("issuer %q, want the upstream CA", issuer)
	}
	tr.CloseIdleConnections() // the audit line is written when the connection ends
	w.auditFor(func(r AuditRecord) bool {
		return r.Kind == "passthrough" && r.SNI == "pass.test" && r.Decision == "allow"
	})
}

func TestInjectAndRedact(t *testing.T) {
	t.Setenv("PADDOCK_TEST_SECRET", "s3cr3t-value-123")
	w := newWorld(t, basePolicy)
	code, body, hdr := w.get(w.client(false, w.nodeRoots), "GET", "https://secret.test:{TLS}/", map[string]string{"X-Api-Key": "sandbox-fake"})
	got := w.lastRequest().Header.Get("X-Api-Key")
	if got != "s3cr3t-value-123" {
		t.Fatalf("upstream saw x-api-key %q", got)
	}
	if code != 200 || strings.Contains(body, "s3cr3t") || !strings.Contains(body, "key="+Redacted+";") {
		t.Fatalf("body not redacted: %d %q", code, body)
	}
	if hdr.Get("Echo-Key") != "got "+Redacted {
		t.Fatalf("header not redacted: %q", hdr.Get("Echo-Key"))
	}
	r := w.auditFor(func(r AuditRecord) bool { return r.Host == "secret.test" })
	if len(r.Injected) != 1 || r.Injected[0] != "X-Api-Key" {
		t.Fatalf("audit injected %v", r.Injected)
	}
	raw, _ := json.Marshal(w.audit.records(t))
	if bytes.Contains(raw, []byte("s3cr3t")) {
		t.Fatal("secret in audit log")
	}
}

func TestNoInjectionOverPlainHTTP(t *testing.T) {
	t.Setenv("PADDOCK_TEST_SECRET", "s3cr3t-value-123")
	w := newWorld(t, basePolicy)
	code, body, _ := w.get(w.client(false, nil), "GET", "http://secret.test:{HTTP}/", nil)
	if code != 403 || !strings.Contains(body, "only sent over TLS") {
		t.Fatalf("got %d %q", code, body)
	}
	if w.lastRequest() != nil {
		t.Fatal("a request with a credential rule reached the upstream over plain HTTP")
	}
}

func TestMissingSecretIs502(t *testing.T) {
	w := newWorld(t, basePolicy)
	code, body, _ := w.get(w.client(false, w.nodeRoots), "GET", "https://nosecret.test:{TLS}/", nil)
	if code != 502 || !strings.Contains(body, "credential for header Authorization is unavailable") {
		t.Fatalf("got %d %q", code, body)
	}
	if w.lastRequest() != nil {
		t.Fatal("request reached the upstream without its credential")
	}
}

func TestMethodsRule(t *testing.T) {
	w := newWorld(t, basePolicy)
	c := w.client(false, w.nodeRoots)
	if code, _, _ := w.get(c, "GET", "https://allowed.test:{TLS}/", nil); code != 200 {
		t.Fatalf("GET: %d", code)
	}
	code, body, _ := w.get(c, "POST", "https://allowed.test:{TLS}/", nil)
	if code != 403 || !strings.Contains(body, "no rule allows POST / on this host") {
		t.Fatalf("POST: %d %q", code, body)
	}
}

func TestDomainFrontingRefused(t *testing.T) {
	w := newWorld(t, basePolicy)
	code, body, _ := w.get(w.client(false, w.nodeRoots), "GET", "https://allowed.test:{TLS}/", map[string]string{"Host": "other.test"})
	if code != 403 || !strings.Contains(body, "domain fronting") {
		t.Fatalf("got %d %q", code, body)
	}
}

func TestInternalAddressesRefused(t *testing.T) {
	w := newWorld(t, basePolicy)
	c := w.client(false, w.nodeRoots)
	for _, h := range []string{"loop.test", "private.test", "metadata.test"} {
		code, body, _ := w.get(c, "GET", "https://"+h+":{TLS}/", nil)
		if code != 403 || !strings.Contains(body, "internal address") {
			t.Fatalf("%s: got %d %q", h, code, body)
		}
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Host == "metadata.test" && r.Decision == "deny" && strings.Contains(r.Error, "169.254.169.254")
	})
}

func TestPlainHTTP(t *testing.T) {
	w := newWorld(t, basePolicy)
	c := w.client(false, nil)
	code, body, _ := w.get(c, "GET", "http://plain.test:{HTTP}/p", nil)
	if code != 200 || !strings.Contains(body, "hello from plain.test") {
		t.Fatalf("got %d %q", code, body)
	}
	code, body, _ = w.get(c, "GET", "http://blocked.test:{HTTP}/p", nil)
	if code != 403 || !strings.Contains(body, "blocked.test denied by policy") {
		t.Fatalf("got %d %q", code, body)
	}
}

func TestExplicitProxy(t *testing.T) {
	w := newWorld(t, basePolicy)
	proxyOrig := netip.AddrPortFrom(w.sb.Gateway, DefaultExplicitPort)
	tr := &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: proxyOrig.String()}),
		DialContext:     func(context.Context, string, string) (net.Conn, error) { return w.dial(proxyOrig) },
		TLSClientConfig: &tls.Config{RootCAs: w.nodeRoots},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	code, body, _ := w.get(c, "GET", "https://allowed.test:{TLS}/c", nil)
	if code != 200 || !strings.Contains(body, "hello from allowed.test") {
		t.Fatalf("CONNECT: %d %q", code, body)
	}
	code, body, _ = w.get(c, "GET", "http://plain.test:{HTTP}/abs", nil)
	if code != 200 || !strings.Contains(body, "hello from plain.test") {
		t.Fatalf("absolute-form: %d %q", code, body)
	}
	_, err := c.Get(w.expand("https://blocked.test:{TLS}/"))
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("CONNECT to blocked host: %v", err)
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Method == "CONNECT" && r.Host == "blocked.test" && r.Decision == "deny"
	})

	// CONNECT to an opaque tcp rule target, with half-close: the client
	// stops sending and still reads the whole answer.
	raw, err := w.dial(proxyOrig)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(raw, "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", w.httpPort, w.httpPort)
	br := bufio.NewReader(raw)
	if line, _ := br.ReadString('\n'); !strings.Contains(line, "200") {
		t.Fatalf("CONNECT opaque: %q", line)
	}
	_, _ = br.ReadString('\n')
	_, _ = raw.Write([]byte("\x00\x01binary\r\n\r\n"))
	_ = raw.(*net.TCPConn).CloseWrite()
	if rest, _ := io.ReadAll(br); !strings.Contains(string(rest), "400 Bad Request") {
		t.Fatalf("opaque tunnel answer: %q", rest)
	}

	// ServeExplicit on a plain listener (the launcher's socket).
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { _ = w.srv.ServeExplicit(l, w.sb) }()
	tr2 := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: l.Addr().String()}), TLSClientConfig: &tls.Config{RootCAs: w.nodeRoots}}
	defer tr2.CloseIdleConnections()
	code, _, _ = w.get(&http.Client{Transport: tr2, Timeout: 10 * time.Second}, "GET", "https://allowed.test:{TLS}/l", nil)
	if code != 200 {
		t.Fatalf("ServeExplicit: %d", code)
	}
}

func TestOpaqueTCP(t *testing.T) {
	w := newWorld(t, basePolicy)
	// Allowed by the tcp rule 127.0.0.1:{HTTP}: speak raw bytes to the
	// plain upstream (it answers 400 to garbage, which proves the splice).
	c, err := w.dial(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(w.httpPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("\x00\x01binary\r\n\r\n"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.Contains(line, "400") {
		t.Fatalf("opaque splice: %q %v", line, err)
	}
	// Not named by any tcp rule: reset.
	c2, err := w.dial(netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), 5432))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, _ = c2.Write([]byte("\x00\x01binary"))
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("opaque connection without a rule was not closed")
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Kind == "tcp" && r.Dst == "203.0.113.9:5432" && r.Decision == "deny"
	})
}

func TestUnknownSandboxReset(t *testing.T) {
	w := newWorld(t, basePolicy)
	w.sb = api.Sandbox{}
	c, err := w.dial(w.origFor(w.tlsPort))
	if err == nil { // the reset may already hit the dial
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("connection from unknown sandbox not closed")
		}
	}
	w.auditFor(func(r AuditRecord) bool { return r.Decision == "deny" && strings.Contains(r.Error, "unknown source") })
}

func TestMissingPolicyDeniesAll(t *testing.T) {
	w := newWorld(t, basePolicy)
	w.sb.Policy = "nonexistent"
	code, body, _ := w.get(w.client(false, w.nodeRoots), "GET", "https://allowed.test:{TLS}/", nil)
	if code != 403 || !strings.Contains(body, `policy "nonexistent" does not exist`) {
		t.Fatalf("got %d %q", code, body)
	}
}

func TestReloadKeepsOpenDownloadAndLastGood(t *testing.T) {
	w := newWorld(t, basePolicy)
	c := w.client(false, nil)
	resp, err := c.Get(w.expand("http://slow.test:{HTTP}/slow"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Mid-download: a policy that no longer names slow.test.
	w.writePolicy("default", "egress:\n  - domains: [allowed.test]\n    allowPrivate: true\n    ports: [{HTTP}]\n")
	w.store.Reload()
	b, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(b), "chunk 19") {
		t.Fatalf("download cut by reload: %v, %d bytes", err, len(b))
	}
	code, _, _ := w.get(w.client(false, nil), "GET", "http://slow.test:{HTTP}/", nil)
	if code != 403 {
		t.Fatalf("after reload: slow.test got %d, want 403", code)
	}
	// A broken file keeps the last good version.
	w.writePolicy("default", "egress:\n  - domains: [allowed.test]\n    bogus: 1\n")
	w.store.Reload()
	code, _, _ = w.get(w.client(false, nil), "GET", "http://allowed.test:{HTTP}/", nil)
	if code != 200 {
		t.Fatalf("broken policy replaced the last good one: %d", code)
	}
}

func TestWebSocketUpgradeThroughTermination(t *testing.T) {
	w := newWorld(t, basePolicy)
	raw, err := w.dial(w.origFor(w.tlsPort))
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{ServerName: "allowed.test", RootCAs: w.nodeRoots, NextProtos: []string{"http/1.1"}})
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: allowed.test:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", w.tlsPort)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	fmt.Fprint(c, "ping-frame")
	buf := make([]byte, 10)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping-frame" {
		t.Fatalf("echo over upgraded connection: %q %v", buf, err)
	}
}

func TestMetricsCount(t *testing.T) {
	w := newWorld(t, basePolicy)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	w.srv.opt.Metrics = m
	w.srv.opt.CA.OnCache = func(hit bool) {
		if hit {
			m.CertCache.WithLabelValues("hit").Inc()
		} else {
			m.CertCache.WithLabelValues("miss").Inc()
		}
	}
	c := w.client(false, w.nodeRoots)
	w.get(c, "GET", "https://allowed.test:{TLS}/", nil)
	w.get(c, "GET", "https://blocked.test:{TLS}/", nil)
	w.get(w.client(false, w.nodeRoots), "GET", "https://allowed.test:{TLS}/", nil)
	// Audit and metrics are recorded just after the response is sent.
	gather := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, mm := range mf.GetMetric() {
				key := mf.GetName()
				for _, l := range mm.GetLabel() {
					key += "," + l.GetName() + "=" + l.GetValue()
				}
				switch {
				case mm.GetCounter() != nil:
					got[key] = mm.GetCounter().GetValue()
				case mm.GetHistogram() != nil:
					got[key] = float64(mm.GetHistogram().GetSampleCount())
				}
			}
		}
		return got
	}
	want := map[string]float64{
		"paddock_proxy_requests_total,decision=allow,sandbox=0123456789ab": 2,
		"paddock_proxy_requests_total,decision=deny,sandbox=0123456789ab":  1,
		"paddock_proxy_upstream_latency_seconds":                           2,
		"paddock_proxy_cert_cache_total,result=hit":                        1,
		"paddock_proxy_cert_cache_total,result=miss":                       2,
	}
	var got map[string]float64
	for i := 0; i < 50; i++ {
		got = gather()
		short := false
		for key, min := range want {
			short = short || got[key] < min
		}
		if !short {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for key, min := range want {
		if got[key] < min {
			t.Errorf("%s = %v, want >= %v (all: %v)", key, got[key], min, got)
		}
	}
}
