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
)

// TestRunWaitsForFeed: a connection queued before the proxy (re)started is
// decided with the sandbox list once it arrives, not reset as unknown.
func TestRunWaitsForFeed(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "default.yaml"), []byte("egress:\n  - domains: [allowed.test]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Queued in the backlog, as while the proxy process was down.
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n")

	feedR, feedW := io.Pipe()
	defer feedW.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = Run(ctx, Config{PolicyDir: dir, CADir: t.TempDir(), Resolver: startDNS(t), Listener: l,
			Audit: &syncBuffer{}, Sandboxes: feedR, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	time.Sleep(300 * time.Millisecond) // Run is up and would accept now
	fmt.Fprintln(feedW, `[{"network":"n","containerID":"abcdef0123456789","ifName":"eth0","ips":["127.0.0.1/32"],"gateway":"127.0.0.2","policy":"default"}]`)

	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(bufio.NewReader(c))
	if !strings.Contains(string(b), "403 Forbidden") || !strings.Contains(string(b), "no rule allows this host") {
		t.Fatalf("queued connection: want the policy's 403, got %q", b)
	}
}
