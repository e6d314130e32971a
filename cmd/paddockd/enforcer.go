package main

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy"
)

// AuditFile is the proxy's audit log inside --log-dir.
const AuditFile = "audit.jsonl"

// newEnforcer creates the data path paddockd drives, in paddockd's network
// namespace: policy routing, transparent listeners, the tcx redirect (or
// TPROXY) and the nftables table with its drop logger; then it hands the
// listeners to the unprivileged proxy process and keeps it fed with the
// registry. paddockd keeps its own copies of the listeners open, so while
// the proxy is down (crashed, restarting) connections wait or fail: they
// never go around it.
func newEnforcer(cfg *Config) (enforcer.Enforcer, error) {
	o := enforcer.Options{
		Mode:       cfg.Redirect,
		BPFFSDir:   cfg.BPFFSDir,
		TCPListen:  cfg.TCPListen,
		DNSListen:  cfg.DNSListen,
		NFLOGGroup: uint16(cfg.NFLOGGroup),
		TapGroup:   uint16(cfg.NFLOGTapGroup),
		LogDir:     cfg.LogDir,
		Lookup:     cfg.Registry.ByIP,
		ByIfIndex:  cfg.Registry.ByIfIndex,
		Logger:     cfg.Logger,
	}
	if cfg.Metrics != nil {
		o.Metrics = cfg.Metrics
	}
	dp, err := enforcer.New(context.Background(), o)
	if err != nil {
		return nil, err
	}
	ls := dp.Listeners()
	sup, err := proxy.NewSupervisor(proxy.SupervisorConfig{
		Proxy: proxy.Config{
			PolicyDir:    cfg.PolicyDir,
			CADir:        cfg.CADir,
			Resolver:     cfg.Resolver,
			UpstreamCA:   cfg.UpstreamCA,
			ExplicitPort: cfg.ExplicitPort,
			MetricsAddr:  cfg.ProxyMetrics,
		},
		User:      cfg.ProxyUser,
		TCP:       ls.TCP,
		DNSUDP:    ls.DNSUDP,
		DNSTCP:    ls.DNSTCP,
		AuditPath: filepath.Join(cfg.LogDir, AuditFile),
		Log:       cfg.Logger.With("component", "proxy-supervisor"),
	})
	if err != nil {
		dp.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proxied{Datapath: dp, sup: sup, cancel: cancel, done: make(chan struct{})}
	cfg.Registry.OnChange(func(list []api.Sandbox) {
		if err := sup.SetSandboxes(list); err != nil {
			cfg.Logger.Warn("feed proxy", "reason", err.Error())
		}
	})
	go func() {
		defer close(p.done)
		_ = sup.Run(ctx)
	}()
	return p, nil
}

// proxied is the data path plus the proxy process it feeds.
type proxied struct {
	*enforcer.Datapath
	sup    *proxy.Supervisor
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *proxied) Components() map[string]string {
	c := maps.Clone(p.Datapath.Components())
	if c == nil {
		c = map[string]string{}
	}
	c["proxy"] = "ok"
	if !p.sup.Running() {
		c["proxy"] = "proxy process is not running (restarting; see paddockd's log)"
	}
	return c
}

// Close stops the proxy process, then closes the data path's listeners;
// pinned BPF state and the nftables table stay and keep enforcing.
func (p *proxied) Close() error {
	p.cancel()
	<-p.done
	return p.Datapath.Close()
}
