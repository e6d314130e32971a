package main

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct {
		p    float64
		want float64
	}{{50, 50}, {99, 99}, {100, 100}, {0.1, 1}} {
		if got := percentile(ds, c.p, time.Microsecond); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if ds[0] != 100*time.Microsecond {
		t.Error("percentile sorted its input in place")
	}
	if !math.IsNaN(percentile(nil, 50, time.Microsecond)) {
		t.Error("no samples: want NaN")
	}
}

// TestTable: ratios are relative to the first column, a failed or missing
// measurement says so instead of printing a number.
func TestTable(t *testing.T) {
	tab := newTable([]string{"direct", "eBPF", "nftables"}, "rate", "latency")
	tab.set("rate", 0, 4000)
	tab.set("rate", 1, 2000)
	tab.fail("rate", 2, errors.New("dial: refused"))
	tab.set("latency", 1, 1.5)
	var b strings.Builder
	if err := tab.write(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header and 2 rows:\n%s", b.String())
	}
	for i, want := range [][]string{
		{"direct", "eBPF", "nftables"},
		{"rate", "4000", "2000 (0.50x)", "error"},
		{"latency", "-", "1.50"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
}

// TestParallelBudget: the workers together never exceed the connection
// budget, and their latencies and errors all arrive.
func TestParallelBudget(t *testing.T) {
	lim := limits{duration: time.Second, workers: 3, maxConns: 100}
	s, err := parallel(lim, func(budget *counter) (int, []time.Duration, error) {
		n := 0
		for budget.take() {
			n++
		}
		return n, []time.Duration{time.Millisecond}, nil
	})
	if err != nil || s.ops != lim.maxConns || len(s.latency) != lim.workers || s.elapsed <= 0 {
		t.Fatalf("%d operations, %d latencies, %s, %v: want the budget of %d", s.ops, len(s.latency), s.elapsed, err, lim.maxConns)
	}
	_, err = parallel(lim, func(*counter) (int, []time.Duration, error) { return 0, nil, errors.New("dial: refused") })
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("a worker's error was lost: %v", err)
	}
}

// TestSampleRounds: rounds add up to one figure; rates over the summed time.
func TestSampleRounds(t *testing.T) {
	var s sample
	if !math.IsNaN(s.rate()) || !math.IsNaN(s.medianMBs()) {
		t.Fatal("empty sample: want NaN figures")
	}
	s.add(sample{ops: 100, elapsed: time.Second, mbs: []float64{300}, latency: []time.Duration{1}})
	s.add(sample{ops: 300, elapsed: time.Second, mbs: []float64{100}, latency: []time.Duration{2}})
	s.add(sample{mbs: []float64{200}})
	if s.rate() != 200 || s.medianMBs() != 200 || len(s.latency) != 2 {
		t.Fatalf("rate %v, median %v, %d latencies", s.rate(), s.medianMBs(), len(s.latency))
	}
	l := limits{duration: 2 * time.Second, samples: 1000, maxConns: 10000, rounds: 4, workers: 4}
	r := l.round()
	if r.duration != 500*time.Millisecond || r.samples != 250 || r.maxConns != 2500 || r.workers != 4 {
		t.Fatalf("round of %+v: %+v", l, r)
	}
}

func TestLimitsRejected(t *testing.T) {
	ok := limits{duration: 2 * time.Second, workers: 4, maxConns: 10000, bulk: 64 << 20, samples: 1000, bulkReps: 1, rounds: 4}
	if err := ok.check(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	for _, c := range []struct {
		mod  func(*limits)
		want string
	}{
		{func(l *limits) { l.duration = time.Hour }, "-duration 1h0m0s"},
		{func(l *limits) { l.workers = 0 }, "-workers 0"},
		{func(l *limits) { l.maxConns = 50000 }, "-max-conns 50000"},
		{func(l *limits) { l.bulk = 0 }, "-bulk 0 MiB"},
		{func(l *limits) { l.rounds = 0 }, "-rounds 0"},
		{func(l *limits) { l.rounds = 20; l.duration = 500 * time.Millisecond }, "-rounds 20"},
	} {
		l := ok
		c.mod(&l)
		if err := l.check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error naming %q, got %v", c.want, err)
		}
	}
}

// TestMeasurementsDirect runs every measurement briefly against a plain
// sandbox: the harness itself works and stays within its bounds.
func TestMeasurementsDirect(t *testing.T) {
	w := world.New(t, world.Options{NoCapture: true})
	p, err := w.AddPlainSandbox("direct")
	if err != nil {
		t.Fatal(err)
	}
	tg := target{name: "direct", netns: p.NetNS, roots: w.CAPool()}
	lim := limits{duration: 200 * time.Millisecond, samples: 20, maxConns: 30, workers: 2, bulk: 1 << 20, bulkReps: 1}
	l, err := measureEchoLatency(tg, echoAddr, lim)
	if err != nil || len(l.connect) == 0 || len(l.connect) > lim.samples || len(l.latency) != len(l.connect) {
		t.Fatalf("latency: %d/%d samples, %v", len(l.connect), len(l.latency), err)
	}
	for name, once := range map[string]func() error{
		"connect": func() error { return connectOnce(echoAddr) },
		"echo":    func() error { _, _, err := echoOnce(echoAddr); return err },
	} {
		s, err := measureConnRate(tg, once, lim)
		if err != nil || s.ops == 0 || s.ops > lim.maxConns {
			t.Fatalf("%s: %d connections, %v", name, s.ops, err)
		}
	}
	for _, keep := range []bool{true, false} {
		s, err := measureHTTPS(tg, httpsURL, keep, lim)
		if err != nil || s.ops == 0 || s.ops > lim.maxConns || len(s.latency) != s.ops {
			t.Fatalf("https keepAlive=%v: %d requests, %d samples, %v", keep, s.ops, len(s.latency), err)
		}
	}
	s, err := measureBulk(tg, "https://allowed.test/bytes?n=1048576", lim)
	if err != nil || len(s.mbs) != 1 || s.mbs[0] <= 0 {
		t.Fatalf("bulk: %v MB/s, %v", s.mbs, err)
	}
	if _, err := measureBulk(tg, "https://allowed.test/bytes?n=10", lim); err == nil {
		t.Fatal("bulk: a short body passed")
	}
}
