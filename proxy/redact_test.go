package proxy

import (
	"io"
	"testing"
	"time"
)

// TestRedactStreams: bytes that cannot begin a secret reach the reader
// while the upstream is silent (an event stream); a possible secret start
// is held back until the next read decides it.
func TestRedactStreams(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	r := newRedactReader(pr, []string{"tok-123456"})
	read := func(want string) { t.Helper(); expectRead(t, r, want) }
	go func() { _, _ = pw.Write([]byte("data: first\n\n")) }()
	read("data: first\n\n")
	go func() { _, _ = pw.Write([]byte("data: tok-12")) }()
	read("data: ")
	go func() { _, _ = pw.Write([]byte("3456 end")) }()
	read(Redacted + " end")
}

// expectRead fails t unless one Read of r returns want within 2 s: a
// redactor must not sit on bytes that cannot be part of a secret.
func expectRead(t *testing.T, r io.Reader, want string) {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 64)
		n, _ := r.Read(b)
		got <- string(b[:n])
	}()
	select {
	case g := <-got:
		if g != want {
			t.Fatalf("read %q, want %q", g, want)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("read blocked, want %q", want)
	}
}
