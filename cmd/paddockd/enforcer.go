package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"syscall"

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
	// The audit log stays paddockd's (the proxy writes into a pipe), so it
	// can follow logrotate like the drop log.
	audit, err := enforcer.OpenLogFile(filepath.Join(cfg.LogDir, AuditFile))
	if err != nil {
		dp.Close()
		return nil, fmt.Errorf("audit log: %w", err)
	}
	var explicit *net.UnixListener
	if cfg.ExplicitSocket != "" {
		if explicit, err = listenExplicit(cfg.ExplicitSocket); err != nil {
			audit.Close()
			dp.Close()
			return nil, err
		}
	}
	sc := proxy.SupervisorConfig{
		Proxy: proxy.Config{
			PolicyDir:    cfg.PolicyDir,
			CADir:        cfg.CADir,
			Resolver:     cfg.Resolver,
			UpstreamCA:   cfg.UpstreamCA,
			ExplicitPort: cfg.ExplicitPort,
			MetricsAddr:  cfg.ProxyMetrics,
			Limits:       cfg.ProxyLimits,
		},
		User:   cfg.ProxyUser,
		TCP:    ls.TCP,
		DNSUDP: ls.DNSUDP,
		DNSTCP: ls.DNSTCP,
		Audit:  audit,
		Log:    cfg.Logger.With("component", "proxy-supervisor"),
	}
	if explicit != nil { // a nil *UnixListener would be a non-nil filer
		sc.Explicit = explicit
	}
	sup, err := proxy.NewSupervisor(sc)
	if err != nil {
		if explicit != nil {
			explicit.Close()
		}
		audit.Close()
		dp.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proxied{Datapath: dp, sup: sup, explicit: explicit, audit: audit, cancel: cancel, done: make(chan struct{})}
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
	sup      *proxy.Supervisor
	explicit *net.UnixListener // nil without --explicit-socket
	audit    *enforcer.LogFile
	cancel   context.CancelFunc
	done     chan struct{}
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
	p.audit.Close()
	if p.explicit != nil {
		p.explicit.Close() // also removes the socket file
	}
	return p.Datapath.Close()
}

// listenExplicit creates the explicit proxy's socket, root-only from the
// start: whoever connects is trusted to name its sandbox and policy. The
// API socket was claimed first, so a file left here is a killed
// paddockd's.
func listenExplicit(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create explicit socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("explicit socket %s exists and is not a socket: remove it or pick another --explicit-socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale explicit socket: %w", err)
		}
	}
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("explicit socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("explicit socket: %w", err)
	}
	return ln, nil
}
