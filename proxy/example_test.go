package proxy_test

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy"
)

// startProxy is how paddockd wires the proxy: the three transparent
// listeners it created, its flags, and a sandbox list on every change. At the
// very top of paddockd's main:
//
//	if len(os.Args) > 1 && os.Args[1] == proxy.ChildArg { proxy.ChildMain(); return }
func startProxy(ctx context.Context, tcp, dnsTCP *net.TCPListener, dnsUDP *net.UDPConn,
	policyDir, caDir, logDir, resolver, proxyUser string, log *slog.Logger) (*proxy.Supervisor, error) {
	sup, err := proxy.NewSupervisor(proxy.SupervisorConfig{
		Proxy:     proxy.Config{PolicyDir: policyDir, CADir: caDir, Resolver: resolver},
		User:      proxyUser, // "paddock-proxy" or "64000:64000"
		TCP:       tcp,
		DNSUDP:    dnsUDP,
		DNSTCP:    dnsTCP,
		AuditPath: filepath.Join(logDir, "audit.jsonl"),
		Log:       log,
	})
	if err != nil {
		return nil, err
	}
	go func() { _ = sup.Run(ctx) }() // restarts the child until ctx ends
	return sup, nil
}

func ExampleSupervisor() {
	var sup *proxy.Supervisor // from startProxy
	onSandboxesChanged := func(all []api.Sandbox) {
		// Full list each time; the proxy maps source IP -> sandbox from it.
		if err := sup.SetSandboxes(all); err != nil {
			slog.Warn("proxy feed", "reason", err.Error())
		}
	}
	_ = onSandboxesChanged
	_ = startProxy
}
