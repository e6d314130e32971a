package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestRunInProcess drives Run as the child would run it: listeners, a
// sandbox feed, policy polling, and the end of the feed stopping it.
func TestRunInProcess(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "default.yaml")
	if err := os.WriteFile(pol, []byte("egress:\n  - domains: [allowed.test]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	feedR, feedW := io.Pipe()
	audit := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Config{PolicyDir: dir, CADir: t.TempDir(), Resolver: startDNS(t),
			Listener: l, DNSUDP: udp, Audit: audit, Sandboxes: feedR, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	fmt.Fprintln(feedW, `[{"network":"n","containerID":"abcdef0123456789","ifName":"eth0","ips":["127.0.0.1/32"],"gateway":"127.0.0.2","policy":"default"}]`)

	get := func() string {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			return err.Error() // reset: the feed has not arrived yet
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(bufio.NewReader(c))
		return string(b)
	}
	var resp string
	for i := 0; i < 50; i++ { // until the feed has arrived
		if resp = get(); strings.Contains(resp, "403 Forbidden") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(resp, "no rule allows this host") {
		t.Fatalf("before reload: %q", resp)
	}
	// The store polls the directory: a new deny rule shows within seconds.
	if err := os.WriteFile(pol, []byte("egress:\n  - domains: [allowed.test]\n  - deny: [blocked.test]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Second)
	_ = os.Chtimes(pol, future, future)
	for i := 0; i < 40 && !strings.Contains(resp, "denied by egress[1]"); i++ {
		time.Sleep(100 * time.Millisecond)
		resp = get()
	}
	if !strings.Contains(resp, "denied by egress[1]") {
		t.Fatalf("after reload: %q", resp)
	}
	q := new(dns.Msg)
	q.SetQuestion("allowed.test.", dns.TypeA)
	r, err := dns.Exchange(q, udp.LocalAddr().String())
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("dns through Run: %v %v", r, err)
	}
	if !strings.Contains(audit.String(), `"sandbox":"abcdef012345"`) {
		t.Fatalf("audit: %s", audit.String())
	}
	feedW.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "feed closed") {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop when the feed closed")
	}
}
