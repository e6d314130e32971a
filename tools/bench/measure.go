package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
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
}

// limits bound every measurement in time and in count.
type limits struct {
	duration time.Duration // per timed measurement
	samples  int           // sequential latency samples
	maxConns int           // connections one rate measurement may open
	workers  int           // concurrent clients in rate measurements
	bulk     int           // bytes per bulk download
	bulkReps int
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

// echoOnce dials the echo server, sends echoMsg, reads it back and closes,
// returning the handshake time and the time until the echo arrived.
func echoOnce(addr string) (connect, echo time.Duration, err error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	start := time.Now()
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		return 0, 0, fmt.Errorf("dial %s: %w", addr, err)
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

// echoLatency is the sequential connect and connect+echo latency.
type echoLatency struct{ connect, echo []time.Duration }

func measureEchoLatency(t target, addr string, lim limits) (echoLatency, error) {
	var r echoLatency
	err := inNetns(t.netns, func() error {
		deadline := time.Now().Add(lim.duration)
		for i := 0; i < lim.samples && time.Now().Before(deadline); i++ {
			c, e, err := echoOnce(addr)
			if err != nil {
				return err
			}
			r.connect = append(r.connect, c)
			r.echo = append(r.echo, e)
		}
		return nil
	})
	return r, err
}

// measureEchoRate is complete connect+echo+close cycles per second with
// lim.workers clients in parallel.
func measureEchoRate(t target, addr string, lim limits) (float64, error) {
	return parallel(lim, func(budget *counter) (int, error) {
		n := 0
		err := inNetns(t.netns, func() error {
			deadline := time.Now().Add(lim.duration)
			for time.Now().Before(deadline) && budget.take() {
				if _, _, err := echoOnce(addr); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		return n, err
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
// operations they completed within lim.duration, and returns operations per
// second over the wall time.
func parallel(lim limits, work func(budget *counter) (int, error)) (float64, error) {
	budget := &counter{n: lim.maxConns}
	var wg sync.WaitGroup
	counts := make([]int, lim.workers)
	errs := make([]error, lim.workers)
	start := time.Now()
	for i := range lim.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[i], errs[i] = work(budget)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	return float64(total) / elapsed.Seconds(), nil
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

// measureHTTPS is requests per second for GET url with lim.workers clients,
// each on its own connection (keepAlive) or a new one per request; it also
// returns the sampled request latencies.
func measureHTTPS(t target, url string, keepAlive bool, lim limits) (float64, []time.Duration, error) {
	c, err := httpsClient(t, keepAlive)
	if err != nil {
		return 0, nil, err
	}
	defer c.CloseIdleConnections()
	// One warm-up request: the proxy mints its certificate for the name
	// once, and that is not what a rate measures.
	if _, err := get(c, url); err != nil {
		return 0, nil, err
	}
	var mu sync.Mutex
	var lat []time.Duration
	rate, err := parallel(lim, func(budget *counter) (int, error) {
		n := 0
		var mine []time.Duration
		deadline := time.Now().Add(lim.duration)
		for time.Now().Before(deadline) && budget.take() {
			start := time.Now()
			if _, err := get(c, url); err != nil {
				return n, err
			}
			mine = append(mine, time.Since(start))
			n++
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
		return n, nil
	})
	return rate, lat, err
}

// measureBulk downloads lim.bulk bytes lim.bulkReps times on one kept-alive
// connection and returns the median throughput in MB/s (10^6 bytes).
func measureBulk(t target, url string, lim limits) (float64, error) {
	c, err := httpsClient(t, true)
	if err != nil {
		return 0, err
	}
	defer c.CloseIdleConnections()
	var rates []float64
	for range lim.bulkReps {
		start := time.Now()
		n, err := get(c, url)
		if err != nil {
			return 0, err
		}
		if n != int64(lim.bulk) {
			return 0, fmt.Errorf("GET %s: %d bytes, want %d", url, n, lim.bulk)
		}
		rates = append(rates, float64(n)/1e6/time.Since(start).Seconds())
	}
	sort.Float64s(rates)
	return rates[len(rates)/2], nil
}

var webAddr = world.WebAddr.String() + ":443"
