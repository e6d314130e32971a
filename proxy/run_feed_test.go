package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// TestRunWaitsForFeed: a connection whose source the sandbox list does not
// name yet is decided once the list names it, not reset as unknown: one
// queued before the proxy (re)started, and one from a sandbox registered a
// moment before its first packet.
func TestRunWaitsForFeed(t *testing.T) {
	const known = `[{"network":"n","containerID":"abcdef0123456789","ifName":"eth0","ips":["127.0.0.1/32"],"gateway":"127.0.0.2","policy":"default"}]`
	for _, tc := range []struct {
		name   string
		before []string // lines fed before the connection
		queued bool     // the connection is made before Run starts
	}{
		{name: "queued across a restart", queued: true},
		{name: "registered just now", before: []string{"[]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "default.yaml"), []byte("egress:\n  - domains: [allowed.test]\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var c net.Conn
			dial := func() {
				if c, err = net.Dial("tcp4", l.Addr().String()); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n")
			}
			if tc.queued {
				dial()
			}
			feedR, feedW := io.Pipe()
			defer feedW.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				_ = Run(ctx, Config{PolicyDir: dir, CADir: t.TempDir(), Resolver: startDNS(t), Listener: l,
					Audit: &syncBuffer{}, Sandboxes: feedR, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			}()
			for _, line := range tc.before {
				fmt.Fprintln(feedW, line)
			}
			if !tc.queued {
				dial()
			}
			defer c.Close()
			time.Sleep(300 * time.Millisecond) // the connection is accepted by now
			fmt.Fprintln(feedW, known)

			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(bufio.NewReader(c))
			if !strings.Contains(string(b), "403 Forbidden") || !strings.Contains(string(b), "no rule allows this host") {
				t.Fatalf("want the policy's 403, got %q", b)
			}
		})
	}
}

// TestLookupSoonBounded: sources the list never names wait at most
// feedGrace, and beyond maxFeedWaiters of them are refused at once.
func TestLookupSoonBounded(t *testing.T) {
	var sbs sandboxes
	sbs.set(nil)
	unknown := netip.MustParseAddr("192.0.2.1")
	var wg sync.WaitGroup
	for range maxFeedWaiters {
		wg.Go(func() { sbs.lookupSoon(unknown) })
	}
	// Once every slot is taken, one more lookup does not wait.
	waiting := func() int {
		sbs.mu.Lock()
		defer sbs.mu.Unlock()
		return len(sbs.waiters)
	}
	deadline := time.Now().Add(time.Second)
	for waiting() < maxFeedWaiters && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if _, ok := sbs.lookupSoon(unknown); ok || time.Since(start) > feedGrace/2 {
		t.Fatalf("lookup beyond the waiters: ok=%v after %s, want refused at once", ok, time.Since(start))
	}
	wg.Wait()
	if waited := time.Since(start); waited > feedGrace+time.Second {
		t.Fatalf("waiters took %s, want about %s", waited, feedGrace)
	}
}

// A sandbox holding a public address is still never a dial target: no
// sandbox reaches another one (or its gateway) through the proxy.
func TestGuardRefusesSandboxAddresses(t *testing.T) {
	var sbs sandboxes
	sbs.set([]api.Sandbox{{
		ContainerID: "pub", IPs: []netip.Prefix{netip.MustParsePrefix("203.0.113.50/24")},
		Gateway: netip.MustParseAddr("203.0.113.1"),
	}})
	g := &Guard{Internal: sbs.isInternal}
	for _, a := range []string{"203.0.113.50", "203.0.113.1", "::ffff:203.0.113.50"} {
		if err := g.Forbidden(netip.MustParseAddr(a)); err == nil {
			t.Errorf("%s: dial allowed, want refused as a sandbox address", a)
		}
	}
	if err := g.Forbidden(netip.MustParseAddr("203.0.113.10")); err != nil {
		t.Errorf("203.0.113.10 (not a sandbox): %v", err)
	}
}
