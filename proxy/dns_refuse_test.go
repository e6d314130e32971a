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
