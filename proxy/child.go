package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
)

// ChildArg is the hidden argv[1] that makes paddockd's binary run the proxy.
const ChildArg = "__proxy"

// ConfigEnv carries the child's JSON Config.
const ConfigEnv = "PADDOCK_PROXY_CONFIG"

// ChildMain is the proxy process's main: paddockd calls it when started with
// argv[1] == ChildArg. It reads Config from ConfigEnv, takes its listeners and
// audit log from inherited descriptors and the sandbox feed from stdin.
func ChildMain() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "proxy")
	if err := childMain(log); err != nil {
		log.Error("proxy exited", "reason", err.Error())
		os.Exit(1)
	}
}

func childMain(log *slog.Logger) error {
	// Nothing this process runs may gain privileges (setuid binaries, file caps).
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv(ConfigEnv)), &cfg); err != nil {
		return fmt.Errorf("read %s: %w", ConfigEnv, err)
	}
	os.Unsetenv(ConfigEnv)
	if cfg.ListenerFD > 0 {
		l, err := net.FileListener(os.NewFile(uintptr(cfg.ListenerFD), "proxy-listener"))
		if err != nil {
			return fmt.Errorf("listener fd %d: %w", cfg.ListenerFD, err)
		}
		cfg.Listener = l
	}
	if cfg.DNSUDPFD > 0 {
		pc, err := net.FilePacketConn(os.NewFile(uintptr(cfg.DNSUDPFD), "dns-udp"))
		if err != nil {
			return fmt.Errorf("dns udp fd %d: %w", cfg.DNSUDPFD, err)
		}
		u, ok := pc.(*net.UDPConn)
		if !ok {
			return fmt.Errorf("dns udp fd %d is not a UDP socket", cfg.DNSUDPFD)
		}
		cfg.DNSUDP = u
	}
	if cfg.DNSTCPFD > 0 {
		l, err := net.FileListener(os.NewFile(uintptr(cfg.DNSTCPFD), "dns-tcp"))
		if err != nil {
			return fmt.Errorf("dns tcp fd %d: %w", cfg.DNSTCPFD, err)
		}
		cfg.DNSTCP = l
	}
	if cfg.ExplicitFD > 0 {
		l, err := net.FileListener(os.NewFile(uintptr(cfg.ExplicitFD), "explicit-socket"))
		if err != nil {
			return fmt.Errorf("explicit socket fd %d: %w", cfg.ExplicitFD, err)
		}
		cfg.Explicit = l
	}
	if cfg.AuditFD > 0 {
		cfg.Audit = os.NewFile(uintptr(cfg.AuditFD), "audit.jsonl")
	}
	cfg.Log, cfg.Sandboxes = log, os.Stdin
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if cfg.MetricsAddr != "" {
		reg := prometheus.NewRegistry()
		cfg.Registerer = reg
		ms := &http.Server{Addr: cfg.MetricsAddr, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := ms.ListenAndServe(); err != nil && err != http.ErrServerClosed {
				log.Error("proxy metrics", "reason", err.Error())
			}
		}()
		defer ms.Close()
	}
	log.Info("proxy started", "uid", os.Getuid(), "gid", os.Getgid())
	return Run(ctx, cfg)
}
