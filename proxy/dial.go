package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Dialer opens upstream connections. It resolves names itself (never trusting
// the address the sandbox chose) and refuses internal addresses unless
// allowPrivate is set.
type Dialer interface {
	Dial(ctx context.Context, host string, port int, allowPrivate bool) (net.Conn, error)
	// Lookup resolves host to IPv4 addresses.
	Lookup(ctx context.Context, host string) ([]netip.Addr, error)
}

// ErrForbiddenAddr marks a dial refused by the internal-address guard.
var ErrForbiddenAddr = errors.New("address is internal (loopback, private, link-local, CGNAT, multicast or the node's own)")

var (
	cgnat     = netip.MustParsePrefix("100.64.0.0/10")
	thisNet   = netip.MustParsePrefix("0.0.0.0/8")
	benchmark = netip.MustParsePrefix("198.18.0.0/15")
	reserved  = netip.MustParsePrefix("240.0.0.0/4")
)

// Guard decides which resolved addresses may be dialled.
type Guard struct {
	// Internal reports addresses that are paddock's own besides the node's
	// interfaces: sandbox gateways and the sandboxes themselves (lateral
	// movement), whatever range they were given.
	Internal func(netip.Addr) bool

	mu      sync.Mutex
	local   map[netip.Addr]bool
	fetched time.Time
}

// Forbidden reports why a may not be dialled without allowPrivate, or nil.
func (g *Guard) Forbidden(a netip.Addr) error {
	a = a.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsLoopback(), a.IsLinkLocalUnicast(),
		a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.IsMulticast(), a.IsPrivate(),
		cgnat.Contains(a), thisNet.Contains(a), benchmark.Contains(a), reserved.Contains(a):
		return fmt.Errorf("%s: %w", a, ErrForbiddenAddr)
	}
	if g.isLocal(a) {
		return fmt.Errorf("%s: %w", a, ErrForbiddenAddr)
	}
	return nil
}

func (g *Guard) isLocal(a netip.Addr) bool {
	if g.Internal != nil && g.Internal(a) {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.local == nil || time.Since(g.fetched) > 5*time.Second {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			// Cannot tell: treat everything as local (fail closed).
			return true
		}
		g.local = map[netip.Addr]bool{}
		for _, ad := range addrs {
			if p, err := netip.ParsePrefix(ad.String()); err == nil {
				g.local[p.Addr().Unmap()] = true
			}
		}
		g.fetched = time.Now()
	}
	return g.local[a]
}

// NetDialer is the default Dialer: IPv4 only, names resolved by its own
// resolver, every address checked by Guard in the socket's Control hook, i.e.
// on the very address connect(2) gets, so DNS rebinding cannot slip past.
type NetDialer struct {
	Resolver *net.Resolver
	Guard    *Guard
	Timeout  time.Duration
}

// NewNetDialer resolves with the DNS server at resolver ("ip:port"), or the
// system resolver when it is empty.
func NewNetDialer(resolver string, g *Guard) *NetDialer {
	r := net.DefaultResolver
	if resolver != "" {
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, resolver)
		}}
	}
	return &NetDialer{Resolver: r, Guard: g, Timeout: 10 * time.Second}
}

func (d *NetDialer) Lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	addrs, err := d.Resolver.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	return addrs, nil
}

func (d *NetDialer) Dial(ctx context.Context, host string, port int, allowPrivate bool) (net.Conn, error) {
	addrs, err := d.Lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	nd := net.Dialer{Timeout: d.Timeout, Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("guard: %w", err)
		}
		if allowPrivate {
			return nil
		}
		return d.Guard.Forbidden(ap.Addr())
	}}
	nd.SetMultipathTCP(false)
	var firstErr error
	for _, a := range addrs {
		if !a.Is4() {
			continue
		}
		c, err := nd.DialContext(ctx, "tcp4", net.JoinHostPort(a.String(), strconv.Itoa(port)))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("%s has no IPv4 address", host)
	}
	return nil, fmt.Errorf("dial %s:%d: %w", host, port, firstErr)
}
