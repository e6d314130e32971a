package test

import (
	"fmt"
	"strings"
	"sync"
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
			for _, l := range e.audit(t) {
				if l.Sandbox != shortID(sb) || !strings.HasPrefix(l.Src, sb.IP.String()+":") {
					t.Errorf("audit line not attributed to sandbox %s (%s): %+v", shortID(sb), sb.IP, l)
				}
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

			e.expectUDPDrop(t, sb, echo, "udp")

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
			e.expectUDPDrop(t, sb, world.EchoAddr.String(), "udp")
			e.w.AssertNoLeaks(t)
		})
	}
}

// TestEnforcerBPFDetached: with the tcx program detached from a sandbox's
// host veth, nftables still drops (and logs) everything unmarked.
func TestEnforcerBPFDetached(t *testing.T) {
	e := newEnforcerEnv(t, "bpf")
	sb := e.sandbox(t, "agent")
	if n := detachTCX(t, e.w, sb); n == 0 {
		t.Fatalf("no tcx program attached to %s", sb.HostVeth)
	}
	e.expectUDPDrop(t, sb, world.EchoAddr.String(), "unmarked")
	if out, err := tcpConnect(sb, "", world.WebAddr.String(), 443, 500*time.Millisecond); err == nil {
		t.Errorf("TCP connected with the redirect detached: %s", out)
	}
	e.expectDropOnce(t, sb, world.WebAddr.String(), "unmarked")
	if l := e.w.WaitLeak(500 * time.Millisecond); len(l) > 0 {
		t.Errorf("leaked with the tcx program detached:\n  %s", strings.Join(l, "\n  "))
	}
	if err := sb.Check(); err == nil {
		t.Error("CNI CHECK passed with the tcx program detached")
	} else {
		t.Logf("CHECK: %v", err)
	}
}

// TestEnforcerNftTableDeleted: deleting paddock's table in the node
// namespace is noticed and undone within about a second, with an alert, and
// nothing leaks meanwhile.
func TestEnforcerNftTableDeleted(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			sb := e.sandbox(t, "agent")
			// Streams of UDP over IPv4 and IPv6 and a TCP connection across
			// the deletion: a leak while the table is missing shows here.
			var sending sync.WaitGroup
			defer sending.Wait()
			sending.Go(startUDPStream(t, sb, world.EchoAddr.String(), 7, 2*time.Second))
			giveIPv6(t, e.w, sb)
			sending.Go(startUDPStream(t, sb, "2001:db8::7", 7, 2*time.Second))
			sending.Go(func() { _, _ = tcpConnect(sb, "", world.WebAddr.String(), 443, 1500*time.Millisecond) })
			if out, err := e.w.ExecNode("nft", "delete", "table", "inet", "paddock"); err != nil {
				t.Fatalf("nft delete table: %v: %s", err, out)
			}
			deleted := time.Now()
			restored := waitFor(2*time.Second, func() bool {
				_, err := e.w.ExecNode("nft", "list", "table", "inet", "paddock")
				return err == nil
			})
			if !restored {
				t.Fatal("table inet paddock not restored within 2s")
			}
			t.Logf("table restored within %s", time.Since(deleted).Round(time.Millisecond))
			sending.Wait()
			if !waitFor(dropWait, func() bool { return stderrHas(t, e.d, "nftables table paddock was removed") }) {
				t.Error("paddockd logged no alert about the removed table")
			}
			e.expectEnforcing(t, sb, "192.0.2.24", "203.0.113.98")
		})
	}
}

// TestEnforcerSurvivesKill9: with paddockd killed, pinned and installed
// state keeps dropping; nothing gets around the missing proxy; a restart
// reconciles.
func TestEnforcerSurvivesKill9(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			sb := e.sandbox(t, "agent")
			if err := e.d.Kill(); err != nil {
				t.Fatal(err)
			}
			_, _ = sendUDP(sb, world.EchoAddr.String(), 7)
			if out, err := run(sb, "ping", "-c1", "-W1", world.EchoAddr.String()); err == nil {
				t.Errorf("ping answered with paddockd down: %s", out)
			}
			// Connections wait or fail; whatever the proxy's state, the
			// leak detector below proves none went around it.
			out, err := tcpConnect(sb, "", world.WebAddr.String(), 443, 2*time.Second)
			t.Logf("TCP with paddockd down: %s (err %v)", lastLine(out), err != nil)
			if l := e.w.WaitLeak(500 * time.Millisecond); len(l) > 0 {
				t.Fatalf("leaked with paddockd down:\n  %s", strings.Join(l, "\n  "))
			}

			// What an older paddockd did not set up, the restart does.
			fwd := "net.ipv4.conf." + sb.HostVeth + ".forwarding"
			if out, err := e.w.ExecNode("sysctl", "-qw", fwd+"=1"); err != nil {
				t.Fatalf("sysctl %s: %v: %s", fwd, err, out)
			}
			if out, err := e.w.ExecNode("ip", "-6", "rule", "del", "iif", sb.HostVeth, "blackhole"); err != nil {
				t.Fatalf("ip -6 rule del: %v: %s", err, out)
			}
			if err := e.d.Restart(); err != nil {
				t.Fatal(err)
			}
			if st, err := e.d.WaitReady(15 * time.Second); err != nil {
				t.Fatalf("not ready after restart: %v (%s %v)", err, st.Message, st.Components)
			}
			if err := sb.Check(); err != nil {
				t.Errorf("CNI CHECK after restart: %v", err)
			}
			if out, err := e.w.ExecNode("sysctl", "-n", fwd); err != nil || strings.TrimSpace(string(out)) != "0" {
				t.Errorf("after restart %s = %q (%v), want 0", fwd, out, err)
			}
			if out, err := e.w.ExecNode("ip", "-6", "rule"); err != nil || !strings.Contains(string(out), "iif "+sb.HostVeth+" blackhole") {
				t.Errorf("after restart ip -6 rule lacks the veth's blackhole: %s %v", out, err)
			}
			list, err := e.d.Client().List(t.Context())
			if err != nil || len(list) != 1 || list[0].Enforced != "ok" {
				t.Errorf("after restart: %+v %v", list, err)
			}
			e.expectEnforcing(t, sb, "192.0.2.25", "203.0.113.97")
		})
	}
}

// TestEnforcerKeepsSandboxesApart: drops, audit lines and counters name the
// sandbox that sent the traffic.
func TestEnforcerKeepsSandboxesApart(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			a, b := e.sandbox(t, "alpha"), e.sandbox(t, "beta")
			if shortID(a) == shortID(b) {
				t.Fatalf("sandboxes share the short id %s", shortID(a))
			}
			if out, err := sendUDP(a, "192.0.2.31", 7); err != nil {
				t.Fatalf("send udp: %v: %s", err, out)
			}
			for i := 0; i < 3; i++ {
				if out, err := sendUDP(b, "192.0.2.32", 7); err != nil {
					t.Fatalf("send udp: %v: %s", err, out)
				}
			}
			e.expectDropOnce(t, a, "192.0.2.31", "udp")
			got := e.waitDrops(t, func(l dropLine) bool { return l.Dst == "192.0.2.32" })
			if len(got) != 3 {
				t.Errorf("beta's drops: %v, want 3", got)
			}
			for _, l := range got {
				if l.Sandbox != shortID(b) || l.Src != b.IP.String() {
					t.Errorf("beta's drop attributed to %s from %s", l.Sandbox, l.Src)
				}
			}
			counts := dropCounts(t, e.d, "udp")
			if counts[shortID(a)] != 1 || counts[shortID(b)] != 3 {
				t.Errorf("paddock_drops_total by sandbox = %v, want %s:1 %s:3", counts, shortID(a), shortID(b))
			}
			for _, sb := range []*world.Sandbox{a, b} {
				_, _ = curlTLS(sb, "203.0.113.96", 443)
				e.waitAudit(t, sb, "203.0.113.96:443")
			}
			for _, l := range e.audit(t) {
				if l.Sandbox == shortID(a) && !strings.HasPrefix(l.Src, a.IP.String()+":") ||
					l.Sandbox == shortID(b) && !strings.HasPrefix(l.Src, b.IP.String()+":") {
					t.Errorf("audit line attributed to the wrong sandbox: %+v", l)
				}
			}
			e.w.AssertNoLeaks(t)
		})
	}
}

// TestEnforcerRuleCountFlat: 200 more sandboxes add set and map elements,
// not rules.
func TestEnforcerRuleCountFlat(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			sb := e.sandbox(t, "agent")
			before := nftRuleCount(t, e.w)
			start := time.Now()
			registerBulk(t, e, 200)
			t.Logf("registered 200 sandboxes in %s", time.Since(start).Round(time.Millisecond))
			if after := nftRuleCount(t, e.w); after != before {
				t.Errorf("nft rules: %d with 1 sandbox, %d with 201", before, after)
			}
			st, err := e.d.Client().Status(t.Context())
			if err != nil || st.Sandboxes != 201 || !st.Ready {
				t.Errorf("status with 201 sandboxes: %+v %v", st, err)
			}
			// The first sandbox is still enforced among them.
			e.expectUDPDrop(t, sb, world.EchoAddr.String(), "udp")
			e.w.AssertNoLeaks(t)
		})
	}
}

// TestEnforcerClosesForwarding: a sandbox's host veth forwards nothing,
// with or without paddock's table (IPv4 forwarding off, IPv6 blackholed),
// and DEL takes the IPv6 rule away again.
func TestEnforcerClosesForwarding(t *testing.T) {
	for _, mode := range redirectModes {
		t.Run(mode, func(t *testing.T) {
			e := newEnforcerEnv(t, mode)
			sb := e.sandbox(t, "agent")
			out, err := e.w.ExecNode("sysctl", "-n", "net.ipv4.conf."+sb.HostVeth+".forwarding")
			if err != nil || strings.TrimSpace(string(out)) != "0" {
				t.Errorf("ipv4 forwarding on %s = %q (%v), want 0", sb.HostVeth, out, err)
			}
			rule := "iif " + sb.HostVeth + " blackhole"
			if out, err := e.w.ExecNode("ip", "-6", "rule"); err != nil || !strings.Contains(string(out), rule) {
				t.Errorf("ip -6 rule lacks %q: %s %v", rule, out, err)
			}
			if err := sb.Del(); err != nil {
				t.Fatal(err)
			}
			if out, err := e.w.ExecNode("ip", "-6", "rule"); err != nil || strings.Contains(string(out), sb.HostVeth) {
				t.Errorf("ip -6 rule after DEL still names %s: %s %v", sb.HostVeth, out, err)
			}
		})
	}
}
