package proxy

import "testing"

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
