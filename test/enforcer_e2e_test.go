package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
)

// TestEnforcerRedirectsAnyTCP: a TCP connection to any address, held by a
// server or by nobody, arrives at the proxy with its original destination
// and the sandbox identified; nothing reaches the internet from the sandbox.
func TestEnforcerRedirectsAnyTCP(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			sb := e.sandbox(t, "agent")
			for _, dst := range []struct {
				ip   string
				port int
			}{{world.WebAddr.String(), 443}, {"203.0.113.99", 8443}} {
				out, err := curlTLS(sb, dst.ip, dst.port)
				t.Logf("curl %s:%d: %v %s", dst.ip, dst.port, err, out)
				e.waitAudit(t, sb, fmt.Sprintf("%s:%d", dst.ip, dst.port))
			}
			e.w.AssertNoLeaks(t)
		})
	}
}

// TestEnforcerDropsEverythingElse: UDP, ICMP, IPv6, other IP protocols and a
// spoofed source are each dropped and logged once, with the sandbox and the
// reason, and never reach the internet.
func TestEnforcerDropsEverythingElse(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			sb := e.sandbox(t, "agent")
			echo := world.EchoAddr.String()

			if out, err := sendUDP(sb, echo, 7); err != nil {
				t.Fatalf("send udp: %v: %s", err, out)
			}
			e.expectDropOnce(t, sb, echo, "udp")

			// Each case sends to its own destination, so that drops.jsonl
			// lines are attributed to the right case.
			if out, err := run(sb, "ping", "-c1", "-W1", "192.0.2.21"); err == nil {
				t.Errorf("ping answered: %s", out)
			}
			e.expectDropOnce(t, sb, "192.0.2.21", "icmp")

			if out, err := sendRaw(sb, "192.0.2.22", 253); err != nil {
				t.Fatalf("send raw ip: %v: %s", err, out)
			}
			e.expectDropOnce(t, sb, "192.0.2.22", "ip-proto")

			spoof := spoofAddr(e.w).String()
			mustRun(t, sb, "ip", "addr", "add", spoof+"/32", "dev", "eth0")
			if out, err := tcpConnect(sb, spoof, "192.0.2.23", 443, 500*time.Millisecond); err == nil {
				t.Errorf("spoofed connection: %s", out)
			}
			e.expectDropOnce(t, sb, "192.0.2.23", "spoofed-ip")

			giveIPv6(t, e.w, sb)
			if out, err := sendUDP(sb, "2001:db8::7", 7); err != nil {
				t.Fatalf("send udp6: %v: %s", err, out)
			}
			e.expectDropOnce(t, sb, "2001:db8::7", "ipv6")

			e.w.AssertNoLeaks(t)
		})
	}
}

// TestEnforcerSandboxCannotUndo: what a sandbox does to its own namespace
// (flushing its firewall, rerouting) changes nothing on the node side.
func TestEnforcerSandboxCannotUndo(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			sb := e.sandbox(t, "agent")
			gw := strings.TrimSpace(mustRun(t, sb, "sh", "-c", "ip -4 route show default | awk '{print $3}'"))
			mustRun(t, sb, "nft", "flush", "ruleset")
			mustRun(t, sb, "ip", "route", "del", "default")
			for _, p := range []string{"192.0.2.0/24", "203.0.113.0/24"} {
				mustRun(t, sb, "ip", "route", "add", p, "via", gw, "dev", "eth0", "onlink")
			}
			if out, err := curlTLS(sb, world.WebAddr.String(), 443); err != nil {
				t.Logf("curl after reroute: %v %s", err, out)
			}
			e.waitAudit(t, sb, world.WebAddr.String()+":443")
			if out, err := sendUDP(sb, world.EchoAddr.String(), 7); err != nil {
				t.Fatalf("send udp: %v: %s", err, out)
			}
			e.expectDropOnce(t, sb, world.EchoAddr.String(), "udp")
			e.w.AssertNoLeaks(t)
		})
	}
}
