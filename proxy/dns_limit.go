package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults for DNSGuard's per-sandbox limit on questions sent upstream.
const (
	DefaultDNSRate  = 100 // questions per second
	DefaultDNSBurst = 200
)

// dnsLimiter is a token bucket per sandbox on the questions the guard sends
// to the upstream resolver. Without it one sandbox flooding names under an
// allowed wildcard fills the resolver and the guard with its own questions,
// and other sandboxes' lookups time out; it also bounds how fast data can
// ride out in query names, which a wildcard rule otherwise allows at line rate.
type dnsLimiter struct {
	rate, burst float64

	mu      sync.Mutex
	buckets map[string]*dnsBucket
}

type dnsBucket struct {
	tokens float64
	last   time.Time
	noted  bool // the current run of refusals has been reported
}

func newDNSLimiter(rate float64, burst int) *dnsLimiter {
	if rate <= 0 {
		rate = DefaultDNSRate
	}
	if burst <= 0 {
		burst = DefaultDNSBurst
	}
	return &dnsLimiter{rate: rate, burst: float64(burst), buckets: map[string]*dnsBucket{}}
}

// allow takes a token for sandbox. When it refuses, first is true for the
// first refusal since the bucket last granted one, so that a flood is
// reported once, not once per question.
func (l *dnsLimiter) allow(sandbox string, now time.Time) (ok, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[sandbox]
	if b == nil {
		if len(l.buckets) >= 4096 {
			l.prune(now)
		}
		b = &dnsBucket{tokens: l.burst, last: now}
		l.buckets[sandbox] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		b.noted = false
		return true, false
	}
	first = !b.noted
	b.noted = true
	return false, first
}

// prune forgets buckets that have refilled: their sandboxes are idle or gone.
func (l *dnsLimiter) prune(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// DefaultDNSTCPConns bounds the DNS-over-TCP connections one source address
// holds open in the guard: each is a file descriptor of the proxy process,
// kept for as long as a question arrives now and then.
const DefaultDNSTCPConns = 64

// limitListener resets accepted connections beyond a per-source-address
// cap. Sources are sandbox addresses, which the data path keeps unspoofed.
type limitListener struct {
	net.Listener
	lim *connLimiter
	log *slog.Logger
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := c.RemoteAddr().String()
		if ap, err := netip.ParseAddrPort(key); err == nil {
			key = ap.Addr().String()
		}
		ok, first := l.lim.acquire(key)
		if !ok {
			if first && l.log != nil {
				l.log.Warn("dns tcp connections over the cap", "src", key, "reason", fmt.Sprintf("over %d open connections: new ones are reset", l.lim.max))
			}
			reset(c)
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.lim.release(key) }}, nil
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
