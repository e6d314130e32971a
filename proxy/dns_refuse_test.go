package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// TestDNSGuardRefusesResponses: a message with the QR bit set is a
// response, not a question; the guard refuses it before any policy or
// upstream is consulted (a nil Decider would panic otherwise).
func TestDNSGuardRefusesResponses(t *testing.T) {
	g := &DNSGuard{
		Lookup: func(netip.Addr) (api.Sandbox, bool) { return api.Sandbox{ContainerID: "c1", Policy: "default"}, true },
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	q := new(dns.Msg)
	q.SetQuestion("allowed.test.", dns.TypeA)
	q.Response = true
	src, dst := netip.MustParseAddrPort("10.0.0.2:5353"), netip.MustParseAddrPort("192.0.2.53:53")
	if r := g.Answer(context.Background(), q, src, dst); r.Rcode != dns.RcodeRefused {
		t.Fatalf("a response sent as a query: rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
}

// TestDNSGuardAuditBounded: refused questions cost the sandbox nothing to
// send, so their audit lines are limited per sandbox like upstream
// questions; one line says the rest of the burst went to the metrics only.
func TestDNSGuardAuditBounded(t *testing.T) {
	var buf countLines
	g := &DNSGuard{
		Lookup: func(netip.Addr) (api.Sandbox, bool) { return api.Sandbox{ContainerID: "c1", Policy: "default"}, true },
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Audit:  NewAuditor(&buf),
		Rate:   10, Burst: 20,
	}
	src, dst := netip.MustParseAddrPort("10.0.0.2:5353"), netip.MustParseAddrPort("192.0.2.53:53")
	for i := 0; i < 1000; i++ {
		q := new(dns.Msg)
		q.SetQuestion("allowed.test.", dns.TypeTXT)
		if r := g.Answer(context.Background(), q, src, dst); r.Rcode != dns.RcodeRefused {
			t.Fatalf("TXT: rcode %s, want REFUSED", dns.RcodeToString[r.Rcode])
		}
	}
	// 20 from the burst, a few refilled while the loop ran, one summary line.
	if buf.n < 21 || buf.n > 60 {
		t.Fatalf("%d audit lines for 1000 refused questions, want the burst plus one", buf.n)
	}
}

type countLines struct{ n int }

func (c *countLines) Write(p []byte) (int, error) {
	for _, b := range p {
		if b == '\n' {
			c.n++
		}
	}
	return len(p), nil
}
