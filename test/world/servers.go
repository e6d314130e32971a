package world

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"
)

// DefaultDNS is what the world's DNS server answers for test. at start.
var DefaultDNS = map[string]string{
	"allowed.test":     WebAddr.String(),
	"blocked.test":     WebAddr.String(),
	"echo.test":        WebAddr.String(),
	"other.test":       WebAddr.String(),
	"passthrough.test": WebAddr.String(),
	"loopback.test":    "127.0.0.1",
	"private.test":     "10.0.0.1",
	"metadata.test":    "169.254.169.254",
	"node.test":        NodeAddr.String(),
}

// Limits that keep a misbehaving test from tying up the servers.
const (
	maxBytes       = 1 << 30
	maxSlowSeconds = 300
	maxQueryLog    = 10000
)

// Servers are the upstream services in the internet namespace.
type Servers struct {
	log     Logger
	closers []io.Closer
	wg      sync.WaitGroup
	closed  atomic.Bool // silences stragglers: t.Logf after a test ends panics

	mu      sync.Mutex
	records map[string][]netip.Addr
	queries []string
}

// StartServers opens every listener inside inetNS (a socket keeps the
// namespace it was created in) and serves them from ordinary goroutines.
func StartServers(inetNS ns.NetNS, ca *CA, logger Logger) (*Servers, error) {
	s := &Servers{log: logger, records: map[string][]netip.Addr{}}
	for name, ip := range DefaultDNS {
		if err := s.SetDNS(name, ip); err != nil {
			return nil, err
		}
	}
	var tcp []net.Listener
	var udp []net.PacketConn
	err := inetNS.Do(func(ns.NetNS) error {
		var lc net.ListenConfig
		for _, a := range []string{"192.0.2.10:443", "203.0.113.10:443", "192.0.2.10:80", "192.0.2.53:53", "192.0.2.20:7"} {
			l, err := lc.Listen(context.Background(), "tcp4", a)
			if err != nil {
				return fmt.Errorf("listen tcp %s: %w", a, err)
			}
			tcp = append(tcp, l)
		}
		for _, a := range []string{"192.0.2.53:53", "192.0.2.20:7"} {
			c, err := lc.ListenPacket(context.Background(), "udp4", a)
			if err != nil {
				return fmt.Errorf("listen udp %s: %w", a, err)
			}
			udp = append(udp, c)
		}
		return nil
	})
	for _, l := range tcp {
		s.closers = append(s.closers, l)
	}
	for _, c := range udp {
		s.closers = append(s.closers, c)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("internet servers: %w", err)
	}

	tlsConf := &tls.Config{GetCertificate: ca.GetCertificate, MinVersion: tls.VersionTLS12}
	errLog := log.New(logWriter{s, "upstream http: "}, "", 0)
	for i, l := range tcp[:3] {
		srv := &http.Server{Handler: Handler(), ErrorLog: errLog, ReadHeaderTimeout: 10 * time.Second}
		if i < 2 {
			srv.TLSConfig = tlsConf
			l = tls.NewListener(l, tlsConf)
		}
		s.serve(func() { _ = srv.Serve(l) })
		s.closers = append(s.closers, srv)
	}
	dnsTCP := &dns.Server{Listener: tcp[3], Handler: dns.HandlerFunc(s.serveDNS)}
	dnsUDP := &dns.Server{PacketConn: udp[0], Handler: dns.HandlerFunc(s.serveDNS)}
	s.serve(func() { _ = dnsTCP.ActivateAndServe() })
	s.serve(func() { _ = dnsUDP.ActivateAndServe() })
	s.closers = append(s.closers, closerFunc(dnsTCP.Shutdown), closerFunc(dnsUDP.Shutdown))
	s.serve(func() { tcpEcho(tcp[4]) })
	s.serve(func() { udpEcho(udp[1]) })
	return s, nil
}

func (s *Servers) serve(fn func()) {
	s.wg.Add(1)
	go func() { defer s.wg.Done(); fn() }()
}

// Close stops every server and waits for their goroutines.
func (s *Servers) Close() {
	s.closed.Store(true)
	for i := len(s.closers) - 1; i >= 0; i-- {
		_ = s.closers[i].Close()
	}
	s.wg.Wait()
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

type logWriter struct {
	s      *Servers
	prefix string
}

func (w logWriter) Write(p []byte) (int, error) {
	if !w.s.closed.Load() {
		w.s.log.Logf("%s%s", w.prefix, strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// SetDNS sets the A records of name; no ips removes the name.
func (s *Servers) SetDNS(name string, ips ...string) error {
	fqdn := dns.Fqdn(strings.ToLower(name))
	if _, ok := dns.IsDomainName(fqdn); !ok {
		return fmt.Errorf("dns name %q is not a domain name", name)
	}
	var addrs []netip.Addr
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip)
		if err != nil || !a.Is4() {
			return fmt.Errorf("dns record %s: %q is not an IPv4 address", name, ip)
		}
		addrs = append(addrs, a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(addrs) == 0 {
		delete(s.records, fqdn)
	} else {
		s.records[fqdn] = addrs
	}
	return nil
}

// Queries returns the questions received so far ("A allowed.test.").
func (s *Servers) Queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.queries...)
}

const zone = "test."

func (s *Servers) serveDNS(rw dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = rw.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	if len(s.queries) < maxQueryLog {
		s.queries = append(s.queries, dns.TypeToString[q.Qtype]+" "+name)
	}
	addrs, known := s.records[name]
	s.mu.Unlock()

	inZone := dns.IsSubDomain(zone, name)
	switch {
	case !inZone:
		m.Rcode = dns.RcodeRefused
		m.Authoritative = false
	case q.Qtype == dns.TypeTXT:
		// Every name under test. has a TXT record: tunnelling tests need
		// answers for arbitrary labels.
		m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(q.Name, dns.TypeTXT), Txt: []string{"paddock test world " + name}})
	case !known && name != zone:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa())
	case q.Qtype == dns.TypeA:
		for _, a := range addrs {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(q.Name, dns.TypeA), A: a.AsSlice()})
		}
	default:
		m.Ns = append(m.Ns, soa())
	}
	_ = rw.WriteMsg(m)
}

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: 5}
}

func soa() dns.RR {
	return &dns.SOA{Hdr: hdr(zone, dns.TypeSOA), Ns: "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 60, Retry: 60, Expire: 600, Minttl: 5}
}

func tcpEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
			_, _ = io.Copy(c, c)
		}()
	}
}

func udpEcho(c net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = c.WriteTo(buf[:n], from)
	}
}

// EchoReply is what /echo answers: the request as the upstream saw it.
type EchoReply struct {
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Query   string              `json:"query,omitempty"`
	Host    string              `json:"host"`
	Headers map[string][]string `json:"headers"`
	TLS     bool                `json:"tls"`
	SNI     string              `json:"sni,omitempty"`
	Remote  string              `json:"remote"`
}

// SecretReply is what /echo-secret answers (also as X-Echo-Authorization and
// X-Echo-Api-Key response headers): did the credential arrive upstream?
type SecretReply struct {
	Authorization string `json:"authorization"`
	APIKey        string `json:"xApiKey"`
}

// Handler serves the upstream HTTP(S) paths.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "hello from %s\n", hostOnly(r.Host))
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		rep := EchoReply{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host, Headers: r.Header, TLS: r.TLS != nil, Remote: r.RemoteAddr}
		if r.TLS != nil {
			rep.SNI = r.TLS.ServerName
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	})
	mux.HandleFunc("/echo-secret", func(w http.ResponseWriter, r *http.Request) {
		rep := SecretReply{Authorization: r.Header.Get("Authorization"), APIKey: r.Header.Get("X-Api-Key")}
		w.Header().Set("X-Echo-Authorization", rep.Authorization)
		w.Header().Set("X-Echo-Api-Key", rep.APIKey)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, ok := intParam(w, r, "n", 0, maxBytes)
		if !ok {
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		writeBytes(w, n)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		secs, ok := intParam(w, r, "seconds", 1, maxSlowSeconds)
		if !ok {
			return
		}
		n, ok := intParam(w, r, "n", 0, maxBytes)
		if !ok {
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		fl, _ := w.(http.Flusher)
		const tick = 100 * time.Millisecond
		steps := secs * int(time.Second/tick)
		t := time.NewTicker(tick)
		defer t.Stop()
		sent := 0
		for i := 1; i <= steps; i++ {
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
			chunk := n*i/steps - sent
			writeBytes(w, chunk)
			sent += chunk
			if fl != nil {
				fl.Flush()
			}
		}
	})
	return mux
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func intParam(w http.ResponseWriter, r *http.Request, key string, lo, hi int) (int, bool) {
	v, err := strconv.Atoi(r.URL.Query().Get(key))
	if err != nil || v < lo || v > hi {
		http.Error(w, fmt.Sprintf("query parameter %s=%q: want an integer in [%d, %d]", key, r.URL.Query().Get(key), lo, hi), http.StatusBadRequest)
		return 0, false
	}
	return v, true
}

var chunk = []byte(strings.Repeat("paddock!", 4096))

func writeBytes(w io.Writer, n int) {
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
}
