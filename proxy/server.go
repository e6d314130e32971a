package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy/policy"
)

// DefaultExplicitPort is where a sandbox reaches the explicit HTTP proxy on
// its gateway (HTTP_PROXY=http://GATEWAY:3128).
const DefaultExplicitPort = 3128

// Options configure a Server.
type Options struct {
	CA      *CA
	Decider Decider
	Dialer  Dialer
	Secrets Secrets // default FileEnvSecrets
	Audit   *Auditor
	Metrics *Metrics
	Log     *slog.Logger
	// UpstreamRoots verifies upstream TLS (default: system roots).
	UpstreamRoots *x509.CertPool
	ExplicitPort  int           // default DefaultExplicitPort
	PeekTimeout   time.Duration // how long a client may stay silent before it counts as opaque TCP; default 2s
	// MaxConnsPerSandbox bounds one sandbox's open connections; more are
	// reset at once. MaxRequestsPerSandbox bounds its requests in flight
	// upstream; more get 429 (defaults DefaultMaxConnsPerSandbox,
	// DefaultMaxRequestsPerSandbox). Each request in flight may hold an
	// upstream connection of its own, so one sandbox costs the proxy at most
	// MaxConnsPerSandbox + MaxRequestsPerSandbox descriptors (plus its
	// DNS-over-TCP connections).
	MaxConnsPerSandbox    int
	MaxRequestsPerSandbox int
}

// Server is the proxy's data path. It implements the enforcer's ConnHandler
// (ServeConn) without importing it.
type Server struct {
	opt        Options
	log        *slog.Logger
	transports map[bool]*http.Transport // by allowPrivate
	conns      *connLimiter
	reqs       *connLimiter
}

// NewServer checks opt and builds a Server.
func NewServer(opt Options) (*Server, error) {
	if opt.CA == nil || opt.Decider == nil || opt.Dialer == nil {
		return nil, errors.New("proxy: CA, Decider and Dialer are required")
	}
	if opt.Secrets == nil {
		opt.Secrets = FileEnvSecrets{}
	}
	if opt.Audit == nil {
		opt.Audit = NewAuditor(nil)
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil)
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.ExplicitPort == 0 {
		opt.ExplicitPort = DefaultExplicitPort
	}
	if opt.MaxRequestsPerSandbox <= 0 {
		opt.MaxRequestsPerSandbox = DefaultMaxRequestsPerSandbox
	}
	if opt.PeekTimeout == 0 {
		opt.PeekTimeout = 2 * time.Second
	}
	if opt.CA.OnCache == nil {
		cc := opt.Metrics.CertCache
		opt.CA.OnCache = func(hit bool) {
			if hit {
				cc.WithLabelValues("hit").Inc()
			} else {
				cc.WithLabelValues("miss").Inc()
			}
		}
	}
	s := &Server{opt: opt, log: opt.Log, transports: map[bool]*http.Transport{}, conns: newConnLimiter(opt.MaxConnsPerSandbox), reqs: newConnLimiter(opt.MaxRequestsPerSandbox)}
	for _, priv := range []bool{false, true} {
		s.transports[priv] = s.newTransport(priv)
	}
	return s, nil
}

// LoadRoots returns the system roots plus the PEM certificates in file ("" for none).
func LoadRoots(file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	pemData, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("upstream ca: %w", err)
	}
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("upstream ca: no PEM certificate in %s", file)
	}
	return pool, nil
}

func (s *Server) newTransport(allowPrivate bool) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, port, err := splitHostPort(addr, 0)
			if err != nil {
				return nil, err
			}
			return s.opt.Dialer.Dial(ctx, host, port, allowPrivate)
		},
		TLSClientConfig:       &tls.Config{RootCAs: s.opt.UpstreamRoots},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
	}
}

// connMeta is what the data path knows about one sandbox connection.
type connMeta struct {
	sb     api.Sandbox
	src    string
	dst    netip.AddrPort // original destination (transparent); zero for CONNECT
	port   int            // destination port
	target string         // host named by CONNECT, "" when transparent
	raw    net.Conn       // the accepted socket, for resets
}

func (m *connMeta) dstString() string {
	if m.dst.IsValid() {
		return m.dst.String()
	}
	return net.JoinHostPort(m.target, fmt.Sprint(m.port))
}

func (s *Server) record(m *connMeta, kind string) *AuditRecord {
	return &AuditRecord{Time: time.Now().UTC(), Kind: kind, Sandbox: m.sb.ShortID(), Src: m.src, Dst: m.dstString()}
}

func (s *Server) finish(r *AuditRecord, start time.Time) {
	r.DurationMs = time.Since(start).Milliseconds()
	s.opt.Metrics.Requests.WithLabelValues(r.Sandbox, r.Decision).Inc()
	s.opt.Audit.Write(r)
	if r.Decision == "deny" {
		s.log.Info("denied", "sandbox", r.Sandbox, "dst", r.Dst, "sni", r.SNI, "host", r.Host, "rule", r.Rule, "policy", r.Policy, "reason", r.Error)
	}
}

// reset aborts a connection with RST so the client sees a refusal at once.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// ServeConn serves one redirected connection of sb; orig is the destination
// the sandbox dialled. It returns when the connection is done.
func (s *Server) ServeConn(conn net.Conn, sb api.Sandbox, orig netip.AddrPort) {
	defer conn.Close()
	m := &connMeta{sb: sb, src: conn.RemoteAddr().String(), dst: orig, port: int(orig.Port()), raw: conn}
	if sb.ContainerID == "" {
		r := s.record(m, "tcp")
		r.Decision, r.Error = "deny", "connection from an unknown source address"
		s.finish(r, time.Now())
		reset(conn)
		return
	}
	ok, first := s.conns.acquire(sb.HostVeth)
	if !ok {
		if first {
			r := s.record(m, "tcp")
			r.Decision, r.Error = "deny", fmt.Sprintf("over %d open connections from this sandbox: new ones are reset until some close (reported once per run)", s.conns.max)
			s.finish(r, time.Now())
		}
		reset(conn)
		return
	}
	defer s.conns.release(sb.HostVeth)
	if orig.Addr().Unmap() == sb.Gateway.Unmap() && int(orig.Port()) == s.opt.ExplicitPort {
		s.serveExplicitConn(conn, m)
		return
	}
	s.serveStream(conn, m)
}

// serveStream classifies a connection (TLS, HTTP or opaque) and serves it.
func (s *Server) serveStream(conn net.Conn, m *connMeta) {
	proto, prefix, err := sniff(conn, s.opt.PeekTimeout)
	if err != nil && len(prefix) == 0 {
		conn.Close()
		return
	}
	rc := newReplayConn(conn, prefix)
	switch proto {
	case protoTLS:
		s.serveTLS(rc, m)
	case protoHTTP:
		serveOneConn(rc, s.httpHandler(&httpConn{meta: m}))
	default:
		s.serveOpaque(rc, m)
	}
}

func (s *Server) serveOpaque(conn net.Conn, m *connMeta) {
	start := time.Now()
	r := s.record(m, "tcp")
	r.Host = m.target
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	v := s.opt.Decider.DecideTCP(ctx, m.sb, netip.AddrPortFrom(m.dst.Addr(), uint16(m.port)), m.target)
	r.Policy, r.Rule = v.Policy, v.RuleID()
	if !v.Allow {
		r.Decision, r.Error = "deny", v.Reason
		s.finish(r, start)
		reset(m.raw)
		return
	}
	host := m.target
	if host == "" {
		// The rule matched the dialled address (directly or via its name):
		// dial that address, still through the guard.
		host = m.dst.Addr().String()
	}
	up, err := s.opt.Dialer.Dial(ctx, host, m.port, v.Rule.AllowPrivate)
	s.relay(conn, up, err, m, r, start)
}

// splice copies both ways with half-close and returns bytes client→upstream
// and upstream→client.
func splice(client, up net.Conn) (int64, int64) {
	var wg sync.WaitGroup
	var upN, downN int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		upN, _ = io.Copy(up, client)
		closeWrite(up)
	}()
	downN, _ = io.Copy(client, up)
	closeWrite(client)
	wg.Wait()
	client.Close()
	up.Close()
	return upN, downN
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

func (s *Server) serveTLS(conn net.Conn, m *connMeta) {
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	hello, raw, err := readClientHello(conn)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		r := s.record(m, "tls")
		r.Decision, r.Error = "deny", "unreadable TLS ClientHello: "+err.Error()
		s.finish(r, start)
		reset(m.raw)
		return
	}
	host := strings.TrimSuffix(strings.ToLower(hello.ServerName), ".")
	rc := newReplayConn(conn, raw)
	var v Verdict
	switch {
	case host == "" && m.target == "":
		v = Verdict{Policy: m.sb.Policy, Reason: "TLS without SNI: the proxy cannot tell which host is meant"}
		host = m.dst.Addr().String()
	case host == "":
		host = m.target
		v = s.opt.Decider.Decide(m.sb, queryHost(host, m.port))
	case m.target != "" && !strings.EqualFold(host, m.target):
		v = Verdict{Policy: m.sb.Policy, Reason: fmt.Sprintf("SNI %s does not name the CONNECT host %s", host, m.target)}
	default:
		v = s.opt.Decider.Decide(m.sb, queryHost(host, m.port))
	}
	if v.Allow && v.Rule.TLS == policy.TLSPassthrough && hello.ECH {
		// Spliced, the upstream would route on the encrypted inner name, a
		// host the policy never saw: ECH fronting. Terminated, paddock's
		// TLS server ignores ECH and the Host check still holds.
		v = Verdict{Policy: v.Policy, Rule: v.Rule, Reason: fmt.Sprintf("passthrough to %s refused: the ClientHello uses Encrypted Client Hello, so its SNI is only the outer public name", host)}
	}
	if v.Allow && v.Rule.TLS == policy.TLSPassthrough {
		s.servePassthrough(rc, m, host, v, start)
		return
	}
	// Terminate, also for denials: the agent then reads why in a 403.
	tlsConn := tls.Server(rc, &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.opt.CA.Leaf(host) },
		NextProtos:     []string{"h2", "http/1.1"},
		MinVersion:     tls.VersionTLS12,
	})
	hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = tlsConn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		r := s.record(m, "tls")
		r.SNI, r.Policy, r.Rule = host, v.Policy, v.RuleID()
		r.Decision = "deny"
		if v.Allow {
			r.Decision = "allow"
		}
		r.Error = "TLS handshake with the sandbox failed (does it trust the paddock CA?): " + err.Error()
		if !v.Allow {
			r.Error = v.Reason + "; " + r.Error
		}
		s.finish(r, start)
		conn.Close()
		return
	}
	ctx := &httpConn{meta: m, tls: true, sni: host, connVerdict: v}
	h := s.httpHandler(ctx)
	if tlsConn.ConnectionState().NegotiatedProtocol == "h2" {
		serveH2Conn(tlsConn, h)
		return
	}
	serveOneConn(tlsConn, h)
}

func queryHost(host string, port int) policy.Query {
	return policy.Query{Host: host, Port: port}
}

func (s *Server) servePassthrough(conn net.Conn, m *connMeta, host string, v Verdict, start time.Time) {
	r := s.record(m, "passthrough")
	r.SNI, r.Host, r.Policy, r.Rule = host, host, v.Policy, v.RuleID()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	up, err := s.opt.Dialer.Dial(ctx, host, m.port, v.Rule.AllowPrivate)
	cancel()
	s.relay(conn, up, err, m, r, start)
}

// relay ends an allowed connection the same way for every kind: a failed
// upstream dial is a deny (audited, client reset), otherwise the bytes are
// spliced both ways and audited with their counts.
func (s *Server) relay(conn, up net.Conn, dialErr error, m *connMeta, r *AuditRecord, start time.Time) {
	if dialErr != nil {
		r.Decision, r.Error = "deny", dialErr.Error()
		s.finish(r, start)
		reset(m.raw)
		return
	}
	r.Decision = "allow"
	r.BytesUp, r.BytesDown = splice(conn, up)
	s.finish(r, start)
}

// serveOneConn runs net/http's HTTP/1 server on a single connection.
func serveOneConn(c net.Conn, h http.Handler) {
	l := &oneConnListener{conn: c, done: make(chan struct{})}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	_ = srv.Serve(l)
}

// serveH2Conn runs net/http's bundled HTTP/2 server on one TLS connection
// that negotiated h2. net/http only speaks h2 on a bare *tls.Conn, so the
// end of the connection is learnt from ConnState instead of a wrapper.
func serveH2Conn(c *tls.Conn, h http.Handler) {
	l := &oneConnListener{conn: c, done: make(chan struct{}), bare: true}
	srv := &http.Server{
		Handler:     h,
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				l.Close()
			}
		},
	}
	_ = srv.Serve(l)
}

// oneConnListener hands out one connection, then blocks until it is closed,
// so http.Server.Serve returns exactly when the connection is done.
type oneConnListener struct {
	conn net.Conn
	done chan struct{}
	once sync.Once
	mu   sync.Mutex
	used bool
	bare bool // hand out conn itself, not a notifyConn
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.used {
		l.used = true
		l.mu.Unlock()
		if l.bare {
			return l.conn, nil
		}
		return &notifyConn{Conn: l.conn, l: l}, nil
	}
	l.mu.Unlock()
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

type notifyConn struct {
	net.Conn
	l *oneConnListener
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.l.Close()
	return err
}

func splitHostPort(hostport string, def int) (string, int, error) {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		if def != 0 && !strings.Contains(hostport, ":") {
			return hostport, def, nil
		}
		if def != 0 && strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]") {
			return strings.Trim(hostport, "[]"), def, nil
		}
		return "", 0, fmt.Errorf("bad host:port %q", hostport)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", hostport)
	}
	return h, port, nil
}

// validHost reports whether h (lower case, no trailing dot) is an IP
// literal or a DNS name: policy matching and the upstream dial see only
// names a resolver could answer, never "a@b", "a/b" or empty labels.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// CloseWrite lets splice half-close a hijacked CONNECT tunnel.
func (c *notifyConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
