package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy"
)

// Config is everything paddockd is told at start. Each setting is a flag and,
// under the same kebab-case name, a key of the --config YAML file; to add one,
// add a field here and bind it in bindFlags.
type Config struct {
	APISocket     string
	StateDir      string
	LogDir        string
	Redirect      enforcer.RedirectMode
	BPFFSDir      string
	NFLOGGroup    uint
	NFLOGTapGroup uint // 0: no operator tap group
	MetricsAddr   string
	PolicyDir     string
	CADir         string
	Resolver      string // upstream DNS server, ip:port
	UpstreamCA    string // extra CA bundle trusted for upstream TLS
	ProxyUser     string
	TCPListen     netip.AddrPort // transparent listener redirected TCP arrives on
	DNSListen     netip.AddrPort // transparent DNS listener (UDP and TCP)
	ExplicitPort  int            // HTTP proxy port on each sandbox's gateway (HTTP_PROXY)
	ProxyMetrics  string         // host:port of the proxy process's /metrics ("" disables)
	// ProxyLimits bound what one sandbox may hold of the shared proxy.
	ProxyLimits proxy.Limits
	// ExplicitSocket is the root-only Unix socket of the explicit proxy for
	// trusted relays (paddock run --network none); "" disables it.
	ExplicitSocket string

	// Runtime dependencies main hands to the enforcer and the proxy
	// supervisor; they are not read from flags or the file.
	Logger   *slog.Logger
	Metrics  *prometheus.Registry
	Registry *enforcer.Registry
}

// resolvConf is where the default --resolver comes from.
var resolvConf = "/etc/resolv.conf"

func defaultConfig() *Config {
	return &Config{
		APISocket:     api.DefaultSocket,
		StateDir:      "/var/lib/paddock",
		LogDir:        "/var/log/paddock",
		Redirect:      enforcer.RedirectBPF,
		BPFFSDir:      "/sys/fs/bpf/paddock",
		NFLOGGroup:    100,
		NFLOGTapGroup: 101,
		MetricsAddr:   "127.0.0.1:9464",
		PolicyDir:     "/etc/paddock/policies",
		CADir:         "/var/lib/paddock/ca",
		ProxyUser:     "paddock-proxy",
		TCPListen:     enforcer.DefaultTCPListen,
		DNSListen:     enforcer.DefaultDNSListen,
		ExplicitPort:  3128,
		ProxyMetrics:  "127.0.0.1:9465",
		ProxyLimits: proxy.Limits{
			ConnsPerSandbox:    proxy.DefaultMaxConnsPerSandbox,
			RequestsPerSandbox: proxy.DefaultMaxRequestsPerSandbox,
			DNSRate:            proxy.DefaultDNSRate,
			DNSBurst:           proxy.DefaultDNSBurst,
			DNSTCPConns:        proxy.DefaultDNSTCPConns,
		},
		ExplicitSocket: api.DefaultExplicitSocket,
	}
}

func bindFlags(fs *flag.FlagSet, c *Config) {
	fs.StringVar(&c.APISocket, "api-socket", c.APISocket, "`path` of the root-only API socket the CNI plugin and the CLI use")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "`dir` for the persisted sandbox registry")
	fs.StringVar(&c.LogDir, "log-dir", c.LogDir, "`dir` for audit logs")
	fs.Func("redirect", "how sandbox traffic reaches the proxy: bpf or nftables (default bpf)", func(s string) error {
		switch m := enforcer.RedirectMode(s); m {
		case enforcer.RedirectBPF, enforcer.RedirectNftables:
			c.Redirect = m
			return nil
		}
		return fmt.Errorf("%q is not a redirect mode: use bpf or nftables", s)
	})
	fs.StringVar(&c.BPFFSDir, "bpffs-dir", c.BPFFSDir, "`dir` on bpffs where BPF maps and links are pinned")
	fs.UintVar(&c.NFLOGGroup, "nflog-group", c.NFLOGGroup, "NFLOG `group` paddockd reads drops from")
	fs.UintVar(&c.NFLOGTapGroup, "nflog-tap-group", c.NFLOGTapGroup, "extra NFLOG `group` every drop is also logged to, for tcpdump -i nflog:N (0: none)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "`host:port` for /metrics and /healthz (empty: disabled)")
	fs.StringVar(&c.PolicyDir, "policy-dir", c.PolicyDir, "`dir` of policy files, one NAME.yaml per policy")
	fs.StringVar(&c.CADir, "ca-dir", c.CADir, "`dir` of the CA the proxy signs sandbox-facing certificates with")
	fs.StringVar(&c.Resolver, "resolver", c.Resolver, "upstream DNS server `ip:port` (default: first nameserver of /etc/resolv.conf)")
	fs.StringVar(&c.UpstreamCA, "upstream-ca", c.UpstreamCA, "PEM `file` of extra CAs trusted for upstream TLS")
	fs.StringVar(&c.ProxyUser, "proxy-user", c.ProxyUser, "unprivileged `user` the proxy runs as")
	fs.TextVar(&c.TCPListen, "tcp-listen", c.TCPListen, "`ip:port` of the transparent listener redirected TCP arrives on")
	fs.IntVar(&c.ExplicitPort, "explicit-port", c.ExplicitPort, "`port` on each sandbox's gateway that serves the explicit HTTP proxy (HTTP_PROXY, CONNECT)")
	fs.StringVar(&c.ProxyMetrics, "proxy-metrics-addr", c.ProxyMetrics, "`host:port` where the proxy process serves /metrics (empty: disabled)")
	fs.IntVar(&c.ProxyLimits.ConnsPerSandbox, "max-conns-per-sandbox", c.ProxyLimits.ConnsPerSandbox, "`n` connections one sandbox may hold open in the proxy; more are reset")
	fs.IntVar(&c.ProxyLimits.RequestsPerSandbox, "max-requests-per-sandbox", c.ProxyLimits.RequestsPerSandbox, "`n` requests one sandbox may have in flight upstream; more get 429")
	fs.Float64Var(&c.ProxyLimits.DNSRate, "dns-rate", c.ProxyLimits.DNSRate, "DNS questions per second one sandbox may send upstream (`rate`); more are REFUSED")
	fs.IntVar(&c.ProxyLimits.DNSBurst, "dns-burst", c.ProxyLimits.DNSBurst, "`n` DNS questions one sandbox may send at once above --dns-rate")
	fs.IntVar(&c.ProxyLimits.DNSTCPConns, "dns-tcp-conns", c.ProxyLimits.DNSTCPConns, "`n` DNS-over-TCP connections one source may hold open")
	fs.StringVar(&c.ExplicitSocket, "explicit-socket", c.ExplicitSocket, "`path` of the root-only Unix socket where `paddock run --network none` reaches the explicit proxy (empty: none)")
	fs.TextVar(&c.DNSListen, "dns-listen", c.DNSListen, "`ip:port` of the transparent DNS listener (keep port 53: replies are sent from it)")
}

// parseConfig reads the command line and, with --config, the YAML file. A
// flag given on the command line wins over the file; the file wins over the
// defaults.
func parseConfig(args []string, stderr io.Writer) (*Config, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("paddockd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bindFlags(fs, c)
	var file string
	fs.StringVar(&file, "config", "", "YAML `file` with the same keys as the flags (kebab-case); flags win")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: paddockd takes only flags", fs.Arg(0))
	}
	if file != "" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if err := applyFile(fs, file, set); err != nil {
			return nil, err
		}
	}
	if c.Resolver == "" {
		r, err := systemResolver()
		if err != nil {
			return nil, err
		}
		c.Resolver = r
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// applyFile sets every flag named in the YAML file that the command line did
// not set, through the flag's own parser so both sources validate alike.
func applyFile(fs *flag.FlagSet, path string, fromCommandLine map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file sets nothing
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: want a mapping of settings (key: value), line %d", path, root.Line)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		name := k.Value
		if fs.Lookup(name) == nil || name == "config" {
			return fmt.Errorf("config %s: unknown key %q at line %d; known keys: %s", path, name, k.Line, strings.Join(knownKeys(fs), ", "))
		}
		if seen[name] {
			return fmt.Errorf("config %s: key %q given twice (line %d)", path, name, k.Line)
		}
		seen[name] = true
		if v.Kind != yaml.ScalarNode {
			return fmt.Errorf("config %s: key %q at line %d: want a single value, not a list or mapping", path, name, k.Line)
		}
		if fromCommandLine[name] {
			continue
		}
		val := v.Value
		if v.Tag == "!!null" {
			val = ""
		}
		if err := fs.Set(name, val); err != nil {
			return fmt.Errorf("config %s: key %q at line %d: %w", path, name, k.Line, err)
		}
	}
	return nil
}

func knownKeys(fs *flag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "config" {
			names = append(names, f.Name)
		}
	})
	slices.Sort(names)
	return names
}

// systemResolver is the node's first nameserver: the proxy resolves upstream
// names itself, never with the sandbox's answer.
func systemResolver() (string, error) {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return "", fmt.Errorf("no --resolver given and %s is unreadable (%v): pass --resolver ip:port", resolvConf, err)
	}
	if len(cc.Servers) == 0 {
		return "", fmt.Errorf("no --resolver given and %s names no nameserver: pass --resolver ip:port", resolvConf)
	}
	return net.JoinHostPort(cc.Servers[0], cc.Port), nil
}

func (c *Config) validate() error {
	for _, d := range []struct{ name, val string }{
		{"api-socket", c.APISocket}, {"state-dir", c.StateDir}, {"log-dir", c.LogDir},
		{"policy-dir", c.PolicyDir}, {"ca-dir", c.CADir}, {"proxy-user", c.ProxyUser},
	} {
		if d.val == "" {
			return fmt.Errorf("--%s is empty: give a value or leave it out for the default", d.name)
		}
	}
	if c.Redirect == enforcer.RedirectBPF && c.BPFFSDir == "" {
		return fmt.Errorf("--bpffs-dir is empty: the bpf redirect pins its maps there")
	}
	if c.NFLOGGroup == 0 || c.NFLOGGroup > 65535 {
		return fmt.Errorf("--nflog-group %d: want a group number from 1 to 65535", c.NFLOGGroup)
	}
	if c.NFLOGTapGroup > 65535 {
		return fmt.Errorf("--nflog-tap-group %d: want a group number from 1 to 65535, or 0 for none", c.NFLOGTapGroup)
	}
	if c.NFLOGTapGroup == c.NFLOGGroup {
		return fmt.Errorf("--nflog-tap-group %d is --nflog-group too: an NFLOG group has one reader, pick another tap group or 0", c.NFLOGTapGroup)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr %q: want host:port, or empty to disable (%v)", c.MetricsAddr, err)
		}
	}
	for _, l := range []struct {
		name string
		val  int
	}{
		{"max-conns-per-sandbox", c.ProxyLimits.ConnsPerSandbox}, {"max-requests-per-sandbox", c.ProxyLimits.RequestsPerSandbox},
		{"dns-burst", c.ProxyLimits.DNSBurst}, {"dns-tcp-conns", c.ProxyLimits.DNSTCPConns},
	} {
		if l.val < 1 {
			return fmt.Errorf("--%s %d: want at least 1", l.name, l.val)
		}
	}
	if !(c.ProxyLimits.DNSRate > 0) {
		return fmt.Errorf("--dns-rate %g: want a rate above 0 questions a second", c.ProxyLimits.DNSRate)
	}
	if c.ExplicitPort < 1 || c.ExplicitPort > 65535 {
		return fmt.Errorf("--explicit-port %d: want a port from 1 to 65535", c.ExplicitPort)
	}
	if c.ExplicitSocket != "" && c.ExplicitSocket == c.APISocket {
		return fmt.Errorf("--explicit-socket %q is --api-socket too: give the explicit proxy its own path, or empty to disable it", c.ExplicitSocket)
	}
	if c.ProxyMetrics != "" {
		if _, _, err := net.SplitHostPort(c.ProxyMetrics); err != nil {
			return fmt.Errorf("--proxy-metrics-addr %q: want host:port, or empty to disable (%v)", c.ProxyMetrics, err)
		}
		if c.ProxyMetrics == c.MetricsAddr {
			return fmt.Errorf("--proxy-metrics-addr %q is --metrics-addr too: give the proxy process its own port", c.ProxyMetrics)
		}
	}
	if _, err := netip.ParseAddrPort(c.Resolver); err != nil {
		return fmt.Errorf("--resolver %q: want ip:port, e.g. 192.0.2.53:53", c.Resolver)
	}
	if c.UpstreamCA != "" {
		if _, err := os.Stat(c.UpstreamCA); err != nil {
			return fmt.Errorf("--upstream-ca: %w", err)
		}
	}
	return nil
}
