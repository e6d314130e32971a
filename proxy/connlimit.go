package proxy

import "sync"

// DefaultMaxConnsPerSandbox bounds the connections one sandbox holds open in
// the proxy at once. Every one costs the proxy a file descriptor for as long
// as the sandbox keeps it (a request whose headers never end is held for
// ReadHeaderTimeout, an idle keep-alive for IdleTimeout), and the proxy's
// descriptors are shared by every sandbox on the node.
const DefaultMaxConnsPerSandbox = 1024

// DefaultMaxRequestsPerSandbox bounds one sandbox's requests in flight
// upstream. Each may hold an upstream connection of its own, so one sandbox
// costs the proxy at most DefaultMaxConnsPerSandbox +
// DefaultMaxRequestsPerSandbox descriptors.
const DefaultMaxRequestsPerSandbox = 1024

// connLimiter counts open connections per sandbox attachment.
type connLimiter struct {
	max int

	mu    sync.Mutex
	open  map[string]int
	noted map[string]bool // the current run of refusals has been reported
}

func newConnLimiter(limit int) *connLimiter {
	if limit <= 0 {
		limit = DefaultMaxConnsPerSandbox
	}
	return &connLimiter{max: limit, open: map[string]int{}, noted: map[string]bool{}}
}

// acquire counts a connection for key unless key is at the cap. When it
// refuses, first is true for the first refusal since the last one it
// granted, so that a flood is reported once.
func (l *connLimiter) acquire(key string) (ok, first bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key] >= l.max {
		first = !l.noted[key]
		l.noted[key] = true
		return false, first
	}
	l.open[key]++
	delete(l.noted, key)
	return true, false
}

func (l *connLimiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key]--; l.open[key] <= 0 {
		delete(l.open, key)
	}
}
