package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/plugin/api/origdst"
	"github.com/paddock-sandbox/paddock/proxy/policy"
)

// Config is the proxy process's configuration. The JSON fields travel from
// paddockd to the child; the others are set in-process (by ChildMain from
// inherited file descriptors, or by tests).
type Config struct {
	PolicyDir    string `json:"policyDir"`
	CADir        string `json:"caDir"`
	Resolver     string `json:"resolver"`             // ip:port of the DNS server upstream names are resolved with
	UpstreamCA   string `json:"upstreamCA,omitempty"` // extra PEM roots for upstream TLS (tests)
	ExplicitPort int    `json:"explicitPort,omitempty"`
	MetricsAddr  string `json:"metricsAddr,omitempty"` // the child serves /metrics here when set
	Limits       Limits `json:"limits"`

	// Inherited descriptor numbers in the child (0: none).
	ListenerFD int `json:"listenerFD,omitempty"`
	DNSUDPFD   int `json:"dnsUDPFD,omitempty"`
	DNSTCPFD   int `json:"dnsTCPFD,omitempty"`
	AuditFD    int `json:"auditFD,omitempty"`
	ExplicitFD int `json:"explicitFD,omitempty"`

	Listener   net.Listener          `json:"-"` // transparent TCP listener
	DNSUDP     *net.UDPConn          `json:"-"`
	DNSTCP     net.Listener          `json:"-"`
	Audit      io.Writer             `json:"-"` // audit.jsonl
	Explicit   net.Listener          `json:"-"` // paddockd's root-only explicit socket
	Log        *slog.Logger          `json:"-"`
	Registerer prometheus.Registerer `json:"-"`
	// Sandboxes carries the full sandbox list as one JSON line ([]api.Sandbox)
	// per change; Run returns when it ends (the parent is gone).
	Sandboxes io.Reader `json:"-"`
}

// Limits bound what one sandbox may hold of the proxy, which all sandboxes
// share; zero fields take the defaults (DefaultMaxConnsPerSandbox,
// DefaultMaxRequestsPerSandbox, DefaultDNSRate, DefaultDNSBurst,
// DefaultDNSTCPConns).
type Limits struct {
	ConnsPerSandbox    int     `json:"connsPerSandbox,omitempty"`
	RequestsPerSandbox int     `json:"requestsPerSandbox,omitempty"`
	DNSRate            float64 `json:"dnsRate,omitempty"`
	DNSBurst           int     `json:"dnsBurst,omitempty"`
	DNSTCPConns        int     `json:"dnsTCPConns,omitempty"`
}

// sandboxTable maps source addresses to sandboxes; replaced wholesale.
type sandboxTable struct {
	byIP     map[netip.Addr]api.Sandbox
	internal map[netip.Addr]bool // every sandbox address and gateway
}

type sandboxes struct {
	v       atomic.Pointer[sandboxTable]
	mu      sync.Mutex
	changed chan struct{} // closed by the next set
	waiters chan struct{} // one slot per lookupSoon waiting
}

// feedGrace bounds how long a connection or query from an unknown source
// waits for the sandbox list to name it; maxFeedWaiters bounds how many
// wait, so that a flood from unknown sources (node-local processes can
// reach the listeners) costs no more than it did before.
const (
	feedGrace      = 2 * time.Second
	maxFeedWaiters = 256
)

func (s *sandboxes) set(list []api.Sandbox) {
	t := &sandboxTable{byIP: map[netip.Addr]api.Sandbox{}, internal: map[netip.Addr]bool{}}
	for _, sb := range list {
		for _, p := range sb.IPs {
			t.byIP[p.Addr().Unmap()] = sb
			t.internal[p.Addr().Unmap()] = true
		}
		if sb.Gateway.IsValid() {
			t.internal[sb.Gateway.Unmap()] = true
		}
	}
	s.v.Store(t)
	s.mu.Lock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	s.mu.Unlock()
}

// lookupSoon is lookup for a source the list may not name yet: paddockd
// answers a sandbox's CNI ADD once it has written the new list to this
// process, so the sandbox's first packet can arrive before the list is read,
// and connections queued while this process restarted are accepted before
// its first list. Those wait for the list (up to feedGrace) instead of being
// refused as unknown.
func (s *sandboxes) lookupSoon(a netip.Addr) (api.Sandbox, bool) {
	if sb, ok := s.lookup(a); ok {
		return sb, true
	}
	s.mu.Lock()
	if s.waiters == nil {
		s.waiters = make(chan struct{}, maxFeedWaiters)
	}
	waiters := s.waiters
	s.mu.Unlock()
	select {
	case waiters <- struct{}{}:
		defer func() { <-waiters }()
	default:
		return api.Sandbox{}, false
	}
	deadline := time.NewTimer(feedGrace)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		changed := s.changed
		s.mu.Unlock()
		if sb, ok := s.lookup(a); ok {
			return sb, true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return api.Sandbox{}, false
		}
	}
}

func (s *sandboxes) lookup(a netip.Addr) (api.Sandbox, bool) {
	t := s.v.Load()
	if t == nil {
		return api.Sandbox{}, false
	}
	sb, ok := t.byIP[a.Unmap()]
	return sb, ok
}

// isInternal reports whether a is a sandbox's or a sandbox gateway's
// address: the proxy never dials those, so no sandbox reaches another one or
// the node through it, even when sandboxes hold public addresses.
func (s *sandboxes) isInternal(a netip.Addr) bool {
	t := s.v.Load()
	return t != nil && t.internal[a.Unmap()]
}

// Run is the body of the proxy process: it serves the listeners in cfg with
// the policies of cfg.PolicyDir until ctx ends or the sandbox feed closes.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if cfg.PolicyDir == "" || cfg.CADir == "" {
		return errors.New("proxy: policy dir and CA dir are required")
	}
	ca, err := LoadOrCreateCA(cfg.CADir)
	if err != nil {
		return fmt.Errorf("proxy ca (dir %s must be writable by the proxy user): %w", cfg.CADir, err)
	}
	store, err := policy.NewStore(cfg.PolicyDir, log)
	if err != nil {
		return err
	}
	roots, err := LoadRoots(cfg.UpstreamCA)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var sbs sandboxes
	dialer := NewNetDialer(cfg.Resolver, &Guard{Internal: sbs.isInternal})
	metrics := NewMetrics(cfg.Registerer)
	audit := NewAuditor(cfg.Audit)
	decider := &StoreDecider{Store: store, Lookup: dialer.Lookup}
	srv, err := NewServer(Options{CA: ca, Decider: decider, Dialer: dialer, Audit: audit, Metrics: metrics,
		Log: log, UpstreamRoots: roots, ExplicitPort: cfg.ExplicitPort,
		MaxConnsPerSandbox: cfg.Limits.ConnsPerSandbox, MaxRequestsPerSandbox: cfg.Limits.RequestsPerSandbox})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { store.Watch(ctx, time.Second) })
	feedDone := make(chan error, 1)
	if cfg.Sandboxes != nil {
		go func() { feedDone <- readSandboxFeed(cfg.Sandboxes, &sbs, log) }()
	}
	if cfg.Listener != nil {
		go func() { <-ctx.Done(); cfg.Listener.Close() }()
		wg.Go(func() {
			for {
				c, err := cfg.Listener.Accept()
				if err != nil {
					if ctx.Err() == nil {
						log.Error("proxy accept failed", "reason", err.Error())
						cancel()
					}
					return
				}
				src := netip.AddrPort{}
				if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
					src = a.AddrPort()
				}
				go func() {
					sb, _ := sbs.lookupSoon(src.Addr())
					srv.ServeConn(c, sb, origdst.OriginalDst(c))
				}()
			}
		})
	}
	if cfg.Explicit != nil {
		go func() { <-ctx.Done(); cfg.Explicit.Close() }()
		wg.Go(func() {
			if err := srv.ServeExplicitSocket(cfg.Explicit); err != nil && ctx.Err() == nil {
				log.Error("explicit socket stopped", "reason", err.Error())
				cancel()
			}
		})
	}
	guard := &DNSGuard{Decider: decider, Lookup: sbs.lookupSoon, Resolver: cfg.Resolver, Audit: audit, Metrics: metrics, Log: log,
		Rate: cfg.Limits.DNSRate, Burst: cfg.Limits.DNSBurst, MaxTCPConns: cfg.Limits.DNSTCPConns}
	if cfg.DNSUDP != nil {
		wg.Go(func() {
			if err := guard.ServeUDP(ctx, cfg.DNSUDP); err != nil {
				log.Error("dns udp stopped", "reason", err.Error())
				cancel()
			}
		})
	}
	if cfg.DNSTCP != nil {
		wg.Go(func() {
			if err := guard.ServeTCP(ctx, cfg.DNSTCP); err != nil {
				log.Error("dns tcp stopped", "reason", err.Error())
				cancel()
			}
		})
	}
	log.Info("proxy running", "policyDir", cfg.PolicyDir, "caDir", cfg.CADir, "resolver", cfg.Resolver)
	select {
	case <-ctx.Done():
		return nil
	case err := <-feedDone:
		cancel()
		return err
	}
}

// readSandboxFeed applies each JSON line of r as the new sandbox list.
func readSandboxFeed(r io.Reader, sbs *sandboxes, log *slog.Logger) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var list []api.Sandbox
		if err := json.Unmarshal(sc.Bytes(), &list); err != nil {
			// Keep the last good list: a garbled line must not open anything.
			log.Error("sandbox feed: bad line", "reason", err.Error())
			continue
		}
		sbs.set(list)
		log.Info("sandboxes updated", "count", len(list))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("sandbox feed: %w", err)
	}
	return errors.New("sandbox feed closed: paddockd is gone")
}
