package proxy

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestConnLimiter: a sandbox gets max connections, then refusals (the first
// reported), and a slot back when one closes; others are not affected.
func TestConnLimiter(t *testing.T) {
	l := newConnLimiter(2)
	for i := range 2 {
		if ok, _ := l.acquire("a"); !ok {
			t.Fatalf("connection %d refused under the cap", i)
		}
	}
	if ok, first := l.acquire("a"); ok || !first {
		t.Fatalf("over the cap: ok=%v first=%v, want refused and reported", ok, first)
	}
	if ok, first := l.acquire("a"); ok || first {
		t.Fatalf("again over the cap: ok=%v first=%v, want refused, not reported again", ok, first)
	}
	if ok, _ := l.acquire("b"); !ok {
		t.Fatal("sandbox b refused because a is at its cap")
	}
	l.release("a")
	if ok, _ := l.acquire("a"); !ok {
		t.Fatal("no slot back after a connection closed")
	}
	l.release("a")
	l.release("a")
	l.release("b")
	if len(l.open) != 0 {
		t.Fatalf("counts left after every connection closed: %v", l.open)
	}
}

// TestLimitListener: connections from one source beyond the cap are reset
// at accept; closing one frees its slot.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &limitListener{Listener: inner, lim: newConnLimiter(2)}
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() (net.Conn, error) { return net.Dial("tcp4", inner.Addr().String()) }
	for range 2 {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, second := <-accepted, <-accepted
	// The third is reset at accept: its connect or its first read says so.
	if c, err := dial(); err == nil {
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("third connection over the cap: read %v, want a reset", err)
		}
	}
	first.Close()
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case c4 := <-accepted:
		c4.Close()
	case <-time.After(2 * time.Second):
		t.Fatal("no slot back after a connection closed")
	}
	second.Close()
}
