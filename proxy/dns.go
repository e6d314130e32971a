package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/plugin/api/origdst"
)

// allowedQtypes are the record types a sandbox may ask for. Everything else
// (TXT, NULL, ANY, AXFR/IXFR, SRV, PTR, MX, ...) is REFUSED: those types carry
// free-form data and are what DNS tunnels use, and an agent needs none of
// them to reach an HTTP(S) upstream. HTTPS/SVCB stay because browsers and
// curl ask for them before connecting.
var allowedQtypes = map[uint16]bool{
	dns.TypeA: true, dns.TypeAAAA: true, dns.TypeCNAME: true, dns.TypeHTTPS: true, dns.TypeSVCB: true,
}

// DNSGuard answers a sandbox's DNS: names its policy allows are resolved by
// the proxy's own resolver; others get NXDOMAIN with an Extended DNS Error.
type DNSGuard struct {
	Decider Decider
	// Lookup maps a source address to its sandbox.
	Lookup   func(src netip.Addr) (api.Sandbox, bool)
	Resolver string // ip:port
	Audit    *Auditor
	Metrics  *Metrics
	Log      *slog.Logger
	Timeout  time.Duration
	// Rate and Burst bound the questions one sandbox sends upstream
	// (default DefaultDNSRate per second, DefaultDNSBurst); over them the
	// guard answers REFUSED at once.
	Rate  float64
	Burst int
	// MaxTCPConns bounds one source's open DNS-over-TCP connections
	// (default DefaultDNSTCPConns).
	MaxTCPConns int

	limitOnce sync.Once
	limiter   *dnsLimiter // questions sent upstream
	auditLim  *dnsLimiter // audit lines of refused and denied questions
}

func (g *DNSGuard) limiters() {
	g.limitOnce.Do(func() {
		g.limiter = newDNSLimiter(g.Rate, g.Burst)
		g.auditLim = newDNSLimiter(g.Rate, g.Burst)
	})
}

func (g *DNSGuard) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	timeout := g.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	c := &dns.Client{Net: "udp", Timeout: timeout}
	r, _, err := c.ExchangeContext(ctx, q, g.Resolver)
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, q, g.Resolver)
	}
	return r, err
}

// Answer decides one query from src (with its original destination dst).
func (g *DNSGuard) Answer(ctx context.Context, req *dns.Msg, src, dst netip.AddrPort) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	sb, known := g.Lookup(src.Addr().Unmap())
	rec := &AuditRecord{Time: time.Now().UTC(), Kind: "dns", Sandbox: sb.ShortID(), Src: src.String(), Decision: "deny"}
	if dst.IsValid() {
		rec.Dst = dst.String()
	}
	refuse := func(why string) *dns.Msg {
		m.Rcode = dns.RcodeRefused
		rec.Error, rec.Status = why, dns.RcodeRefused
		g.finish(rec)
		return m
	}
	if req.Response || req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		return refuse("not a single-question QUERY")
	}
	q := req.Question[0]
	rec.Host, rec.Method = strings.TrimSuffix(strings.ToLower(q.Name), "."), dns.TypeToString[q.Qtype]
	if !known {
		return refuse("query from an unknown source address")
	}
	rec.Policy = sb.Policy
	if len(rec.Host) > 253 || q.Qclass != dns.ClassINET {
		return refuse("name over 253 characters or class not IN")
	}
	for _, l := range strings.Split(rec.Host, ".") {
		if len(l) > 63 {
			return refuse("label over 63 characters")
		}
	}
	if !allowedQtypes[q.Qtype] {
		return refuse(fmt.Sprintf("record type %s is not served (tunnelling risk)", rec.Method))
	}
	v := g.Decider.AllowsName(sb, rec.Host)
	rec.Policy, rec.Rule = v.Policy, v.RuleID()
	if !v.Allow {
		m.Rcode = dns.RcodeNameError
		opt := new(dns.OPT)
		opt.Hdr.Name, opt.Hdr.Rrtype = ".", dns.TypeOPT
		opt.SetUDPSize(dns.DefaultMsgSize)
		opt.Option = append(opt.Option, &dns.EDNS0_EDE{
			InfoCode:  dns.ExtendedErrorCodeBlocked,
			ExtraText: "blocked by paddock policy " + v.Policy,
		})
		m.Extra = append(m.Extra, opt)
		rec.Error, rec.Status = v.Reason, dns.RcodeNameError
		g.finish(rec)
		return m
	}
	if q.Qtype == dns.TypeAAAA {
		// IPv6 egress is denied: say the name exists but has no address.
		g.count(rec.Sandbox, "allow")
		return m
	}
	g.limiters()
	if ok, first := g.limiter.allow(rec.Sandbox, time.Now()); !ok {
		m.Rcode = dns.RcodeRefused
		g.count(rec.Sandbox, "ratelimited")
		if first {
			rec.Error, rec.Status = fmt.Sprintf("over %g questions a second sent upstream: refused until the rate drops (reported once per run)", g.limiter.rate), dns.RcodeRefused
			if g.Audit != nil {
				g.Audit.Write(rec)
			}
			g.Log.Warn("dns rate limited", "sandbox", rec.Sandbox, "dst", rec.Host, "reason", rec.Error)
		}
		return m
	}
	g.count(rec.Sandbox, "allow")
	up := new(dns.Msg)
	up.SetQuestion(dns.Fqdn(rec.Host), q.Qtype)
	up.RecursionDesired = true
	resp, err := g.exchange(ctx, up)
	if err != nil {
		m.Rcode = dns.RcodeServerFailure
		g.Log.Warn("dns upstream failed", "sandbox", rec.Sandbox, "dst", rec.Host, "reason", err.Error())
		return m
	}
	m.Rcode = resp.Rcode
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype != dns.TypeAAAA {
			m.Answer = append(m.Answer, rr)
		}
	}
	return m
}

func (g *DNSGuard) count(sandbox, decision string) {
	if g.Metrics != nil {
		g.Metrics.DNSQueries.WithLabelValues(sandbox, decision).Inc()
	}
}

func (g *DNSGuard) finish(rec *AuditRecord) {
	decision := "deny"
	if rec.Status == dns.RcodeRefused {
		decision = "refused"
	}
	g.count(rec.Sandbox, decision)
	if g.Audit == nil {
		return
	}
	// A sandbox can send refused questions as fast as it likes: past the
	// upstream rate, they are counted in the metrics and one line says the
	// audit of this burst was cut, so the audit log cannot be flooded.
	g.limiters()
	if ok, first := g.auditLim.allow(rec.Sandbox, time.Now()); !ok {
		if !first {
			return
		}
		rec.Error = "more refused or denied questions in this burst are counted in the metrics, not audited: " + rec.Error
	}
	g.Audit.Write(rec)
	g.Log.Info("dns denied", "sandbox", rec.Sandbox, "dst", rec.Host, "rule", rec.Rule, "reason", rec.Error)
}

// ServeUDP answers queries on conn until ctx ends. DNS redirected from a
// sandbox carries its original destination, and the reply is sent from it;
// a query sent straight to the socket is answered from the socket.
func (g *DNSGuard) ServeUDP(ctx context.Context, conn *net.UDPConn) error {
	go func() { <-ctx.Done(); conn.Close() }()
	if raw, err := conn.SyscallConn(); err == nil {
		var serr error
		_ = raw.Control(func(fd uintptr) { serr = origdst.EnableOrigDst(fd) })
		if serr != nil {
			g.Log.Warn("dns: cannot read original destinations", "reason", serr.Error())
		}
	}
	buf := make([]byte, 65535)
	for {
		n, src, dst, err := origdst.ReadFrom(conn, buf)
		if err != nil && !errors.Is(err, origdst.ErrNoOrigDst) {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dns udp read: %w", err)
		}
		req := new(dns.Msg)
		if err := req.Unpack(buf[:n]); err != nil {
			// Off the read loop: looking up the source may wait for the
			// sandbox list, and buf is reused by the next read.
			go g.refuseUnparsable(conn, append([]byte(nil), buf[:n]...), src, dst, err)
			continue
		}
		go func(req *dns.Msg, src, dst netip.AddrPort) {
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			resp := g.Answer(qctx, req, src, dst)
			size := dns.MinMsgSize
			if o := req.IsEdns0(); o != nil {
				size = int(o.UDPSize())
			}
			resp.Truncate(size)
			out, err := resp.Pack()
			if err != nil {
				return
			}
			if dst.IsValid() {
				err = origdst.Reply(conn, out, src, dst)
			} else {
				_, err = conn.WriteToUDPAddrPort(out, src)
			}
			if err != nil {
				g.Log.Warn("dns reply failed", "dst", src.String(), "reason", err.Error())
			}
		}(req, src, dst)
	}
}

// refuseUnparsable answers a query miekg/dns cannot unpack (names over 255
// octets on the wire, labels over 63) with REFUSED when its header is
// readable, so the client learns at once instead of timing out.
func (g *DNSGuard) refuseUnparsable(conn *net.UDPConn, pkt []byte, src, dst netip.AddrPort, why error) {
	var h dns.Msg
	if len(pkt) < 12 || pkt[2]&0x80 != 0 {
		return
	}
	h.Id = uint16(pkt[0])<<8 | uint16(pkt[1])
	h.Response, h.Opcode, h.Rcode = true, int(pkt[2]>>3)&0xF, dns.RcodeRefused
	sb, _ := g.Lookup(src.Addr().Unmap())
	g.finish(&AuditRecord{Time: time.Now().UTC(), Kind: "dns", Sandbox: sb.ShortID(), Src: src.String(),
		Decision: "deny", Status: dns.RcodeRefused, Policy: sb.Policy, Error: "unparsable query: " + why.Error()})
	out, err := h.Pack()
	if err != nil {
		return
	}
	if dst.IsValid() {
		_ = origdst.Reply(conn, out, src, dst)
	} else {
		_, _ = conn.WriteToUDPAddrPort(out, src)
	}
}

// ServeTCP answers DNS over TCP on l (accepted sockets' local address is the
// original destination) until ctx ends.
func (g *DNSGuard) ServeTCP(ctx context.Context, l net.Listener) error {
	limit := g.MaxTCPConns
	if limit <= 0 {
		limit = DefaultDNSTCPConns
	}
	l = &limitListener{Listener: l, lim: newConnLimiter(limit), log: g.Log}
	srv := &dns.Server{Listener: l, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		src, _ := netip.ParseAddrPort(w.RemoteAddr().String())
		dst, _ := netip.ParseAddrPort(w.LocalAddr().String())
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = w.WriteMsg(g.Answer(qctx, r, src, dst))
	})}
	go func() { <-ctx.Done(); _ = srv.Shutdown() }()
	if err := srv.ActivateAndServe(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("dns tcp: %w", err)
	}
	return nil
}
