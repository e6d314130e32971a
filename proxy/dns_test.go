package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

func TestDNSGuard(t *testing.T) {
	w := newWorld(t, basePolicy)
	g := &DNSGuard{
		Decider:  w.srv.opt.Decider,
		Lookup:   func(a netip.Addr) (api.Sandbox, bool) { return w.sb, a == netip.MustParseAddr("127.0.0.1") },
		Resolver: w.dnsAddr,
		Audit:    NewAuditor(w.audit),
		Metrics:  NewMetrics(nil),
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.ServeUDP(ctx, pc) }()
	tl, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.ServeTCP(ctx, tl) }()

	ask := func(network, addr, name string, qtype uint16) *dns.Msg {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		q.SetEdns0(1232, false)
		c := &dns.Client{Net: network, Timeout: 5 * time.Second}
		r, _, err := c.Exchange(q, addr)
		if err != nil {
			t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
		}
		return r
	}
	for _, tc := range []struct{ network, addr string }{{"udp", pc.LocalAddr().String()}, {"tcp", tl.Addr().String()}} {
		r := ask(tc.network, tc.addr, "allowed.test.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
			t.Fatalf("%s allowed A: %v", tc.network, r)
		}
		r = ask(tc.network, tc.addr, "blocked.test.", dns.TypeA)
		if r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s blocked: rcode %s", tc.network, dns.RcodeToString[r.Rcode])
		}
		var ede *dns.EDNS0_EDE
		if o := r.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if e, ok := op.(*dns.EDNS0_EDE); ok {
					ede = e
				}
			}
		}
		if ede == nil || ede.InfoCode != dns.ExtendedErrorCodeBlocked || ede.ExtraText != "blocked by paddock policy default" {
			t.Fatalf("%s blocked: EDE %v", tc.network, ede)
		}
		if r = ask(tc.network, tc.addr, "allowed.test.", dns.TypeTXT); r.Rcode != dns.RcodeRefused {
			t.Fatalf("%s TXT: rcode %s", tc.network, dns.RcodeToString[r.Rcode])
		}
		if r = ask(tc.network, tc.addr, "allowed.test.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Fatalf("%s AAAA: %v", tc.network, r)
		}
		long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 60) + ".allowed.test."
		if r = ask(tc.network, tc.addr, long, dns.TypeA); r.Rcode != dns.RcodeRefused && r.Rcode != dns.RcodeFormatError {
			t.Fatalf("%s long name: rcode %s", tc.network, dns.RcodeToString[r.Rcode])
		}
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Kind == "dns" && r.Host == "blocked.test" && r.Decision == "deny" && r.Policy == "default"
	})
	w.auditFor(func(r AuditRecord) bool { return r.Kind == "dns" && r.Method == "TXT" && r.Status == dns.RcodeRefused })
}
