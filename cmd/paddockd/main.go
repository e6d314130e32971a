// Command paddockd is paddock's node daemon. It keeps the persisted sandbox
// registry, drives the enforcer (the eBPF and nftables data path) for every
// sandbox the CNI plugin registers, and serves the plugin/CLI API on a
// root-only Unix socket plus Prometheus metrics on a TCP address.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3"); without
// it the module version from the build info is used.
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func main() {
	// The proxy runs as a child of this same binary, under its own
	// unprivileged user, on the listeners paddockd hands it.
	if len(os.Args) > 1 && os.Args[1] == proxy.ChildArg {
		proxy.ChildMain()
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// run is paddockd from flags to shutdown; it returns the exit status.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "paddockd: %v\n", err)
		return 2
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, nil))
	cfg.Metrics = prometheus.NewRegistry()
	if err := serve(ctx, cfg); err != nil {
		cfg.Logger.Error("paddockd stopped", "reason", err.Error())
		return 1
	}
	return 0
}

// serve runs paddockd until ctx is cancelled. On the way out it closes the
// API and removes its socket, but leaves every sandbox attached: pinned BPF
// state and the nftables table keep enforcing while paddockd is down.
func serve(ctx context.Context, cfg *Config) error {
	log := cfg.Logger
	ver := buildVersion()
	reg, err := enforcer.OpenRegistry(cfg.StateDir)
	if err != nil {
		return err
	}
	cfg.Registry = reg
	if err := os.MkdirAll(cfg.LogDir, 0o750); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}
	if err := registerMetrics(cfg.Metrics, reg, ver); err != nil {
		return err
	}

	// The metrics port is claimed first: if it is taken, paddockd stops
	// before the API ever answered. The API socket is claimed before the
	// data path starts, so a second paddockd stops here instead of taking
	// over the running one's listeners and pinned links.
	var mln net.Listener
	if cfg.MetricsAddr != "" {
		if mln, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	ln, err := listenAPI(cfg.APISocket)
	if err != nil {
		if mln != nil {
			mln.Close()
		}
		return err
	}
	enf, err := newEnforcer(cfg)
	if err != nil {
		ln.Close()
		os.Remove(cfg.APISocket)
		if mln != nil {
			mln.Close()
		}
		return fmt.Errorf("start enforcer: %w", err)
	}
	defer func() {
		if err := enf.Close(); err != nil {
			log.Error("close enforcer", "reason", err.Error())
		}
	}()
	b := &backend{
		reg:      reg,
		enf:      enf,
		log:      log,
		redirect: cfg.Redirect,
		version:  ver,
		started:  time.Now().UTC(),
		vethGone: hostVethGone,
		// A sandbox registered under a policy with no file would only
		// ever be denied: refuse it at ADD with a clear error instead.
		policyDir: cfg.PolicyDir,
	}
	b.reconcile(ctx)

	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	apiSrv := &http.Server{Handler: api.Handler(b), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("api: %w", apiSrv.Serve(ln)) }()
	b.serving.Store(true)
	var metricsSrv *http.Server
	if mln != nil {
		metricsSrv = &http.Server{Handler: metricsHandler(cfg.Metrics, b), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
		go func() { errc <- fmt.Errorf("metrics: %w", metricsSrv.Serve(mln)) }()
	}
	log.Info("paddockd started", "version", ver, "api_socket", cfg.APISocket, "metrics_addr", cfg.MetricsAddr,
		"redirect", string(cfg.Redirect), "state_dir", cfg.StateDir, "sandboxes", reg.Len())

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down; sandboxes stay enforced", "sandboxes", reg.Len())
	case runErr = <-errc:
	}
	b.serving.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := apiSrv.Shutdown(sctx); err != nil {
		log.Warn("api shutdown", "reason", err.Error())
	}
	if metricsSrv != nil {
		if err := metricsSrv.Shutdown(sctx); err != nil {
			log.Warn("metrics shutdown", "reason", err.Error())
		}
	}
	if err := os.Remove(cfg.APISocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove api socket", "reason", err.Error())
	}
	return runErr
}

// listenAPI opens the root-only API socket. A socket file left by a killed
// paddockd is replaced; one that still answers belongs to a running paddockd
// and is an error, as is any other kind of file at that path.
func listenAPI(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create api socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("api socket %s exists and is not a socket: remove it or pick another --api-socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("api socket %s is served by a running paddockd: stop it first", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale api socket: %w", err)
		}
	}
	// The umask makes the socket 0600 from its creation, so there is no
	// window in which another user could connect.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket: %w", err)
	}
	return ln, nil
}
