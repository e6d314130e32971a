package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy/policy"
)

// ServeExplicit serves the explicit HTTP proxy (CONNECT and absolute-form
// requests) for sb on l, e.g. the launcher's Unix socket, until l fails.
func (s *Server) ServeExplicit(l net.Listener, sb api.Sandbox) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return fmt.Errorf("explicit proxy accept: %w", err)
		}
		go func() {
			defer c.Close()
			s.serveExplicitConn(c, &connMeta{sb: sb, src: c.RemoteAddr().String(), raw: c})
		}()
	}
}

func (s *Server) serveExplicitConn(conn net.Conn, m *connMeta) {
	serveOneConn(conn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.serveExplicitRequest(w, r, m)
	}))
}

func (s *Server) serveExplicitRequest(w http.ResponseWriter, r *http.Request, m *connMeta) {
	if r.Method != http.MethodConnect {
		if !r.URL.IsAbs() || r.URL.Scheme != "http" {
			denyText(w, http.StatusBadRequest, "paddock: this is an HTTP proxy: send CONNECT host:port, or an absolute http:// URL\n")
			return
		}
		s.serveRequest(w, r, &httpConn{meta: m, explicit: true})
		return
	}
	start := time.Now()
	host, port, err := splitHostPort(r.Host, 0)
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	cm := &connMeta{sb: m.sb, src: m.src, port: port, target: host, raw: m.raw}
	if err == nil && !validHost(host) {
		err = fmt.Errorf("%q is not a host name or IP address", host)
	}
	if err != nil {
		denyText(w, http.StatusBadRequest, fmt.Sprintf("paddock: CONNECT target %q is not host:port\n", r.Host))
		return
	}
	// Refuse early, with a readable 403, when no rule names host:port at all.
	v := s.opt.Decider.Decide(m.sb, policy.Query{Host: host, Port: port})
	if !v.Allow {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		tv := s.opt.Decider.DecideTCP(ctx, m.sb, netip.AddrPortFrom(netip.Addr{}, uint16(port)), host)
		cancel()
		if !tv.Allow {
			rec := s.record(cm, "http")
			rec.Method, rec.Host, rec.Status = http.MethodConnect, host, http.StatusForbidden
			rec.Decision, rec.Policy, rec.Rule, rec.Error = "deny", v.Policy, v.RuleID(), v.Reason
			s.finish(rec, start)
			denyText(w, http.StatusForbidden, fmt.Sprintf("paddock: request to %s denied by policy %q (%s)\n", host, v.Policy, v.Reason))
			return
		}
	}
	hj, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer hj.Close()
	if _, err := brw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	buffered := make([]byte, brw.Reader.Buffered())
	_, _ = brw.Reader.Read(buffered)
	s.serveStream(newReplayConn(hj, buffered), cm)
}
