package enforcer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// DefaultBPFFSDir is where maps and links are pinned unless told otherwise.
const DefaultBPFFSDir = "/sys/fs/bpf/paddock"

// Options configure the data path.
type Options struct {
	Mode     RedirectMode // RedirectBPF (default) or RedirectNftables
	BPFFSDir string       // pins; DefaultBPFFSDir if empty
	// TCPListen and DNSListen are the transparent listeners; the defaults
	// are DefaultTCPListen and DefaultDNSListen.
	TCPListen, DNSListen netip.AddrPort
	// NFLOGGroup is the group paddockd reads drops from; TapGroup (0 = none)
	// is the operator's copy for tcpdump.
	NFLOGGroup, TapGroup uint16
	LogDir               string // drops.jsonl lives here
	Lookup               Lookup // source IP → sandbox, for the listeners
	ByIfIndex            func(int) (api.Sandbox, bool)
	Logger               *slog.Logger
	Metrics              prometheus.Registerer
}

// Datapath is the Enforcer paddockd drives: policy routing, transparent
// listeners, the tcx redirect (BPF mode) and the nftables table with its
// drop logger.
type Datapath struct {
	o      Options
	log    *slog.Logger
	cancel context.CancelFunc
	ls     Listeners
	bpf    *bpfRedirect // nil in nftables mode
	fw     *Firewall
	drops  *DropLogger

	mu     sync.Mutex // serialises changes to links, maps and the firewall
	closed bool
}

var _ Enforcer = (*Datapath)(nil)

func (o *Options) defaults() error {
	if o.Mode == "" {
		o.Mode = RedirectBPF
	}
	if o.Mode != RedirectBPF && o.Mode != RedirectNftables {
		return fmt.Errorf("redirect mode %q is unknown: use %q or %q", o.Mode, RedirectBPF, RedirectNftables)
	}
	if o.BPFFSDir == "" {
		o.BPFFSDir = DefaultBPFFSDir
	}
	if !o.TCPListen.IsValid() {
		o.TCPListen = DefaultTCPListen
	}
	if !o.DNSListen.IsValid() {
		o.DNSListen = DefaultDNSListen
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ByIfIndex == nil {
		o.ByIfIndex = func(int) (api.Sandbox, bool) { return api.Sandbox{}, false }
	}
	return nil
}

// New sets up the whole data path in the calling thread's network
// namespace. On error nothing it opened stays open; the routes and the
// nftables table may stay, and both only ever deny.
func New(ctx context.Context, o Options) (_ *Datapath, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	d := &Datapath{o: o, log: o.Logger, cancel: cancel}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := ensureRoutes(); err != nil {
		return nil, fmt.Errorf("policy routing: %w", err)
	}
	if d.ls, err = listenTransparent(ctx, o.TCPListen, o.DNSListen); err != nil {
		return nil, err
	}
	if o.Mode == RedirectNftables {
		if err := removeBPFLinks(o.BPFFSDir); err != nil {
			return nil, err
		}
	}
	if o.Mode == RedirectBPF {
		if d.bpf, err = loadBPF(o.BPFFSDir); err != nil {
			return nil, err
		}
		if err := d.bpf.setListener(slotTCP, d.ls.TCP); err != nil {
			return nil, err
		}
		if err := d.bpf.setListener(slotDNSUDP, d.ls.DNSUDP); err != nil {
			return nil, err
		}
		if err := d.bpf.setListener(slotDNSTCP, d.ls.DNSTCP); err != nil {
			return nil, err
		}
	}
	d.fw, err = NewFirewall(FirewallConfig{
		Mode: o.Mode, NFLOGGroup: o.NFLOGGroup, TapGroup: o.TapGroup,
		TCPListen: o.TCPListen, DNSListen: o.DNSListen,
		Logger: o.Logger, Metrics: o.Metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	d.drops, err = StartDropLogger(ctx, DropLoggerConfig{
		Group: o.NFLOGGroup, Path: DropsPath(o.LogDir), ByIfIndex: o.ByIfIndex,
		Logger: o.Logger, Metrics: o.Metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("drop logger: %w", err)
	}
	go d.fw.Watch(ctx)
	if o.Metrics != nil && d.bpf != nil {
		if err := o.Metrics.Register(bpfCollector{d}); err != nil {
			return nil, fmt.Errorf("register bpf metrics: %w", err)
		}
	}
	d.log.Info("data path ready", "mode", string(o.Mode), "tcp_listen", o.TCPListen.String(), "dns_listen", o.DNSListen.String())
	return d, nil
}

// Listeners are the transparent sockets, for handing to the proxy.
func (d *Datapath) Listeners() Listeners { return d.ls }

// ServeDefault answers redirected traffic until ctx ends: TCP connections are
// logged and closed, DNS queries refused. The proxy replaces it.
func (d *Datapath) ServeDefault(ctx context.Context) {
	denyServer{lookup: d.o.Lookup, log: d.log}.serve(ctx, d.ls)
}

func validateSandbox(sb api.Sandbox) error {
	if err := validVeth(sb); err != nil {
		return err
	}
	_, err := sandboxEntry(sb)
	return err
}

// Attach enforces sb: nft first (deny by default), then the redirect. A
// failure undoes what this call added.
func (d *Datapath) Attach(_ context.Context, sb api.Sandbox) error {
	if err := validateSandbox(sb); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := noForwarding(sb.HostVeth); err != nil {
		return err
	}
	if err := d.fw.AddSandbox(sb); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if d.bpf != nil {
		if err := d.bpf.attach(sb); err != nil {
			_ = d.fw.RemoveSandbox(sb)
			return err
		}
	}
	return nil
}

// Detach removes sb from every layer; what is already gone is fine.
func (d *Datapath) Detach(_ context.Context, sb api.Sandbox) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.bpf != nil {
		errs = append(errs, d.bpf.detach(sb))
	}
	if err := d.fw.RemoveSandbox(sb); err != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	}
	errs = append(errs, allowForwarding(sb.HostVeth))
	return errors.Join(errs...)
}

// Check reports the first missing layer of sb's enforcement.
func (d *Datapath) Check(_ context.Context, sb api.Sandbox) error {
	if err := validateSandbox(sb); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.bpf != nil {
		if err := d.bpf.check(sb); err != nil {
			return err
		}
	}
	if err := d.fw.CheckSandbox(sb); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	return checkRoutes()
}

// Reconcile makes links, maps and nft sets match sbs exactly and restores
// the policy routing.
func (d *Datapath) Reconcile(_ context.Context, sbs []api.Sandbox) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	valid := make([]api.Sandbox, 0, len(sbs))
	for _, sb := range sbs {
		if err := validateSandbox(sb); err != nil {
			errs = append(errs, err)
			continue
		}
		valid = append(valid, sb)
	}
	if err := ensureRoutes(); err != nil {
		errs = append(errs, fmt.Errorf("policy routing: %w", err))
	}
	for _, sb := range valid {
		errs = append(errs, noForwarding(sb.HostVeth))
	}
	if err := d.fw.Sync(valid); err != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	}
	if d.bpf != nil {
		errs = append(errs, d.bpf.reconcile(valid))
	}
	return errors.Join(errs...)
}

// Components reports each part's health: "ok" or what is wrong.
func (d *Datapath) Components() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := map[string]string{
		"nftables":  d.fw.Health(),
		"nflog":     d.drops.Health(),
		"route":     "ok",
		"listeners": "ok",
	}
	if err := checkRoutes(); err != nil {
		c["route"] = err.Error()
	}
	if d.closed {
		c["listeners"] = "closed"
	}
	if d.bpf != nil {
		c["bpf"] = "ok"
		if h := d.bpf.health(); h != "ok" {
			c["listeners"] = h
		}
	}
	return c
}

// Close stops the drop logger and the nft watcher and closes the listeners.
// Pinned links and maps stay: they keep enforcing while paddockd is down.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.cancel()
	err := d.ls.Close()
	if d.bpf != nil {
		err = errors.Join(err, d.bpf.Close())
	}
	return err
}

// stopOnDone unblocks the listeners' pending calls when ctx ends and clears
// the deadline afterwards, so the sockets stay usable for the proxy.
func stopOnDone(ctx context.Context, l Listeners) (restore func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			now := time.Now()
			_ = l.TCP.SetDeadline(now)
			_ = l.DNSTCP.SetDeadline(now)
			_ = l.DNSUDP.SetReadDeadline(now)
		case <-done:
		}
	}()
	return func() {
		close(done)
		_ = l.TCP.SetDeadline(time.Time{})
		_ = l.DNSTCP.SetDeadline(time.Time{})
		_ = l.DNSUDP.SetReadDeadline(time.Time{})
	}
}
