package proxy

import (
	"testing"
	"time"
)

// TestDNSLimiter: a sandbox gets its burst, then refusals (the first one
// flagged for reporting), then tokens back at the rate; other sandboxes
// keep their own buckets.
func TestDNSLimiter(t *testing.T) {
	l := newDNSLimiter(10, 5)
	now := time.Unix(1000, 0)
	for i := range 5 {
		if ok, _ := l.allow("a", now); !ok {
			t.Fatalf("question %d of the burst refused", i)
		}
	}
	if ok, first := l.allow("a", now); ok || !first {
		t.Fatalf("over the burst: ok=%v first=%v, want refused and reported", ok, first)
	}
	if ok, first := l.allow("a", now); ok || first {
		t.Fatalf("second refusal: ok=%v first=%v, want refused, not reported again", ok, first)
	}
	if ok, _ := l.allow("b", now); !ok {
		t.Fatal("sandbox b refused because a flooded")
	}
	if ok, _ := l.allow("a", now.Add(150*time.Millisecond)); !ok {
		t.Fatal("no token back after 150 ms at 10/s")
	}
	if ok, first := l.allow("a", now.Add(150*time.Millisecond)); ok || !first {
		t.Fatalf("a new run of refusals: ok=%v first=%v, want reported again", ok, first)
	}
	// Idle buckets are forgotten once full, so the map does not grow with
	// every sandbox that ever asked.
	l.prune(now.Add(time.Hour))
	if len(l.buckets) != 0 {
		t.Fatalf("%d buckets left after an idle hour", len(l.buckets))
	}
}
