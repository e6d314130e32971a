package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/paddock-sandbox/paddock/test/world"
)

// target is one column of the table: a namespace whose sockets the
// measurements open, and the roots its HTTPS client trusts (the world CA
// when direct, paddock's CA when the proxy terminates TLS).
type target struct {
	name  string
	netns string
	roots *x509.CertPool
	proxy *world.World // the world whose paddockd enforces on netns; nil when direct
}

// limits bound every measurement in time and in count. The measure
// functions take the bounds of one round (limits.round).
type limits struct {
	duration time.Duration // per timed measurement and target
	samples  int           // sequential latency samples
	maxConns int           // connections one rate measurement may open
	workers  int           // concurrent clients in rate measurements
	bulk     int           // bytes per bulk download
	bulkReps int           // downloads per round
	rounds   int           // every measurement is split into rounds, targets taking turns
}

// round is the share of l one round of a measurement may use.
func (l limits) round() limits {
	r := l
	r.duration = l.duration / time.Duration(l.rounds)
	r.samples = max(1, l.samples/l.rounds)
	r.maxConns = l.maxConns / l.rounds
	r.rounds = 1
	return r
}

// echoMsg starts with a byte that is neither a TLS record nor an HTTP
// method, so the proxy classifies the connection as opaque TCP at once.
var echoMsg = []byte("\x00paddock")

// inNetns runs fn on an OS thread locked inside the namespace at path:
// sockets opened there stay in that namespace, and per-dial namespace
// switches stay out of the timings.
func inNetns(path string, fn func() error) error {
	h, err := ns.GetNS(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return fn() })
}

// dial connects to addr from the calling thread's namespace. The
// connection closes with a reset (linger 0): thousands of short connections
// must not leave TIME_WAIT sockets behind that eat the sandbox's ephemeral
// ports and skew later measurements.
func dial(addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	tc := c.(*net.TCPConn)
	if err := tc.SetLinger(0); err != nil {
		tc.Close()
		return nil, fmt.Errorf("linger: %w", err)
	}
	return tc, nil
}

// connectOnce only completes the handshake and closes: under paddock that
// is the redirect and the proxy's accept, nothing upstream.
func connectOnce(addr string) error {
	c, err := dial(addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// echoOnce dials the echo server, sends echoMsg, reads it back and closes,
// returning the handshake time and the time until the echo arrived.
func echoOnce(addr string) (connect, echo time.Duration, err error) {
	start := time.Now()
	c, err := dial(addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	connect = time.Since(start)
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, 0, err
	}
	if _, err := c.Write(echoMsg); err != nil {
		return 0, 0, fmt.Errorf("write %s: %w", addr, err)
	}
	buf := make([]byte, len(echoMsg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return 0, 0, fmt.Errorf("read echo from %s: %w", addr, err)
	}
	return connect, time.Since(start), nil
}

// sample is what one measurement round of one target yields; rounds of the
// same target add up (add) before the table's figures are computed.
type sample struct {
	ops     int           // completed operations (connections, requests)
	elapsed time.Duration // wall time they took
	connect []time.Duration
	latency []time.Duration
	mbs     []float64 // bulk throughput per download, MB/s
}

func (s *sample) add(o sample) {
	s.ops += o.ops
	s.elapsed += o.elapsed
	s.connect = append(s.connect, o.connect...)
	s.latency = append(s.latency, o.latency...)
	s.mbs = append(s.mbs, o.mbs...)
}

// rate is operations per second; NaN before any round ran.
func (s sample) rate() float64 {
	if s.elapsed <= 0 {
		return math.NaN()
	}
	return float64(s.ops) / s.elapsed.Seconds()
}

// medianMBs is the median bulk throughput; NaN without downloads.
func (s sample) medianMBs() float64 {
	if len(s.mbs) == 0 {
		return math.NaN()
	}
	m := slices.Clone(s.mbs)
	slices.Sort(m)
	return m[len(m)/2]
}

// measureEchoLatency connects to the echo server one connection after the
// other: connect is the handshake, latency until the echo arrived.
func measureEchoLatency(t target, addr string, lim limits) (sample, error) {
	var r sample
	err := inNetns(t.netns, func() error {
		deadline := time.Now().Add(lim.duration)
		for i := 0; i < lim.samples && time.Now().Before(deadline); i++ {
			c, e, err := echoOnce(addr)
			if err != nil {
				return err
			}
			r.connect = append(r.connect, c)
			r.latency = append(r.latency, e)
		}
		return nil
	})
	return r, err
}

// measureConnRate runs cycles of once with lim.workers clients in parallel,
// each on an OS thread in t's namespace.
func measureConnRate(t target, once func() error, lim limits) (sample, error) {
	return parallel(lim, func(budget *counter) (int, []time.Duration, error) {
		n := 0
		err := inNetns(t.netns, func() error {
			deadline := time.Now().Add(lim.duration)
			for time.Now().Before(deadline) && budget.take() {
				if err := once(); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		return n, nil, err
	})
}

// counter hands out at most n tokens across workers.
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) take() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n <= 0 {
		return false
	}
	c.n--
	return true
}

// parallel runs lim.workers copies of work, which report how many
// operations they completed within lim.duration and, optionally, their
// latencies; together they may take lim.maxConns operations at most.
func parallel(lim limits, work func(budget *counter) (int, []time.Duration, error)) (sample, error) {
	budget := &counter{n: lim.maxConns}
	var wg sync.WaitGroup
	counts := make([]int, lim.workers)
	lats := make([][]time.Duration, lim.workers)
	errs := make([]error, lim.workers)
	start := time.Now()
	for i := range lim.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[i], lats[i], errs[i] = work(budget)
		}()
	}
	wg.Wait()
	r := sample{elapsed: time.Since(start)}
	if err := errors.Join(errs...); err != nil {
		return sample{}, err
	}
	for i, n := range counts {
		r.ops += n
		r.latency = append(r.latency, lats[i]...)
	}
	return r, nil
}

// httpsClient dials webAddr from inside t's namespace whatever the URL's
// host (no DNS in the timings), speaks HTTP/1.1 and trusts t.roots.
func httpsClient(t target, keepAlive bool) (*http.Client, error) {
	h, err := ns.GetNS(t.netns)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", t.netns, err)
	}
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := h.Do(func(ns.NetNS) error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, "tcp4", webAddr)
			return err
		})
		return c, err
	}
	tr := &http.Transport{
		DialContext:         dial,
		TLSClientConfig:     &tls.Config{RootCAs: t.roots},
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 on both sides of the comparison
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}, nil
}

// get fetches url and discards the body, returning its size.
func get(c *http.Client, url string) (int64, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return n, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("GET %s: status %s", url, resp.Status)
	}
	return n, nil
}

// measureHTTPS runs GET url with lim.workers clients, each on its own
// kept-alive connection (keepAlive) or a new one per request.
func measureHTTPS(t target, url string, keepAlive bool, lim limits) (sample, error) {
	c, err := httpsClient(t, keepAlive)
	if err != nil {
		return sample{}, err
	}
	defer c.CloseIdleConnections()
	// One warm-up request: the proxy mints its certificate for the name
	// once, and that is not what a rate measures.
	if _, err := get(c, url); err != nil {
		return sample{}, err
	}
	return parallel(lim, func(budget *counter) (int, []time.Duration, error) {
		var lat []time.Duration
		deadline := time.Now().Add(lim.duration)
		for time.Now().Before(deadline) && budget.take() {
			start := time.Now()
			if _, err := get(c, url); err != nil {
				return len(lat), lat, err
			}
			lat = append(lat, time.Since(start))
		}
		return len(lat), lat, nil
	})
}

// measureBulk downloads lim.bulk bytes lim.bulkReps times on one kept-alive
// connection, recording MB/s (10^6 bytes) for each download.
func measureBulk(t target, url string, lim limits) (sample, error) {
	c, err := httpsClient(t, true)
	if err != nil {
		return sample{}, err
	}
	defer c.CloseIdleConnections()
	var r sample
	for range lim.bulkReps {
		start := time.Now()
		n, err := get(c, url)
		if err != nil {
			return sample{}, err
		}
		if n != int64(lim.bulk) {
			return sample{}, fmt.Errorf("GET %s: %d bytes, want %d", url, n, lim.bulk)
		}
		r.mbs = append(r.mbs, float64(n)/1e6/time.Since(start).Seconds())
	}
	return r, nil
}

var webAddr = world.WebAddr.String() + ":443"
