package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaults(t *testing.T) {
	resolvConf = writeFile(t, "resolv.conf", "search example.test\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n")
	t.Cleanup(func() { resolvConf = "/etc/resolv.conf" })
	c, err := parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := defaultConfig()
	want.Resolver = "192.0.2.53:53"
	if c.APISocket != api.DefaultSocket || c.StateDir != want.StateDir || c.Redirect != enforcer.RedirectBPF ||
		c.NFLOGGroup != 100 || c.NFLOGTapGroup != 101 || c.MetricsAddr != "127.0.0.1:9464" ||
		c.ProxyUser != "paddock-proxy" || c.Resolver != want.Resolver || c.BPFFSDir != "/sys/fs/bpf/paddock" {
		t.Fatalf("defaults = %+v, want %+v", c, want)
	}
}

func TestConfigFileAndFlagPrecedence(t *testing.T) {
	file := writeFile(t, "paddockd.yaml", `
# the operator's file
api-socket: /run/from-file.sock
state-dir: /var/lib/from-file
redirect: nftables
nflog-group: 200
nflog-tap-group: 0
metrics-addr: ""
resolver: 198.51.100.53:5353
proxy-user: file-user
`)
	c, err := parseConfig([]string{"--config", file, "--state-dir", "/tmp/from-flag", "--nflog-group=300", "--resolver", "203.0.113.53:53"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, chk := range []struct{ name, got, want string }{
		{"api-socket (file)", c.APISocket, "/run/from-file.sock"},
		{"state-dir (flag wins)", c.StateDir, "/tmp/from-flag"},
		{"redirect (file)", string(c.Redirect), "nftables"},
		{"metrics-addr (file, empty disables)", c.MetricsAddr, ""},
		{"resolver (flag wins)", c.Resolver, "203.0.113.53:53"},
		{"proxy-user (file)", c.ProxyUser, "file-user"},
		{"log-dir (default)", c.LogDir, "/var/log/paddock"},
	} {
		if chk.got != chk.want {
			t.Errorf("%s = %q, want %q", chk.name, chk.got, chk.want)
		}
	}
	if c.NFLOGGroup != 300 || c.NFLOGTapGroup != 0 {
		t.Errorf("nflog groups = %d/%d, want 300 (flag) / 0 (file)", c.NFLOGGroup, c.NFLOGTapGroup)
	}
}

func TestConfigErrors(t *testing.T) {
	resolver := "--resolver=192.0.2.53:53"
	for _, tc := range []struct {
		name, file string
		args       []string
		want       string
	}{
		{name: "unknown key", file: "api-socket: /x.sock\napi_socket: /y.sock\n", want: `unknown key "api_socket" at line 2`},
		{name: "config key in file", file: "config: other.yaml\n", want: `unknown key "config"`},
		{name: "duplicate key", file: "state-dir: /a\nstate-dir: /b\n", want: `"state-dir" given twice`},
		{name: "list value", file: "resolver: [192.0.2.1:53]\n", want: `key "resolver" at line 1: want a single value`},
		{name: "not a mapping", file: "- a\n- b\n", want: "want a mapping"},
		{name: "bad yaml", file: "state-dir: [\n", want: "paddockd.yaml"},
		{name: "bad redirect in file", file: "redirect: iptables\n", want: `key "redirect" at line 1`},
		{name: "bad nflog group in file", file: "nflog-group: many\n", want: `key "nflog-group"`},
		{name: "bad redirect flag", args: []string{"--redirect", "iptables"}, want: `"iptables" is not a redirect mode`},
		{name: "same nflog groups", args: []string{"--nflog-group=7", "--nflog-tap-group=7"}, want: "--nflog-tap-group 7 is --nflog-group too"},
		{name: "nflog group zero", args: []string{"--nflog-group=0"}, want: "--nflog-group 0"},
		{name: "bad resolver", args: []string{"--resolver", "dns.example:53"}, want: `--resolver "dns.example:53": want ip:port`},
		{name: "bad metrics addr", args: []string{"--metrics-addr", "9464"}, want: `--metrics-addr "9464"`},
		{name: "missing upstream ca", args: []string{"--upstream-ca", "/nonexistent/ca.pem"}, want: "/nonexistent/ca.pem"},
		{name: "empty state dir", args: []string{"--state-dir="}, want: "--state-dir is empty"},
		{name: "zero conns per sandbox", args: []string{"--max-conns-per-sandbox=0"}, want: "--max-conns-per-sandbox 0: want at least 1"},
		{name: "zero dns rate", args: []string{"--dns-rate=0"}, want: "--dns-rate 0: want a rate above 0"},
		{name: "positional argument", args: []string{"start"}, want: `unexpected argument "start"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{resolver}, tc.args...)
			if tc.file != "" {
				args = append(args, "--config", writeFile(t, "paddockd.yaml", tc.file))
			}
			_, err := parseConfig(args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseConfig(%v) = %v, want an error containing %q", args, err, tc.want)
			}
		})
	}
}

func TestConfigMissingFile(t *testing.T) {
	_, err := parseConfig([]string{"--resolver=192.0.2.53:53", "--config", "/nonexistent/paddockd.yaml"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/paddockd.yaml") {
		t.Fatalf("err = %v", err)
	}
}

func TestConfigEmptyFile(t *testing.T) {
	c, err := parseConfig([]string{"--resolver=192.0.2.53:53", "--config", writeFile(t, "empty.yaml", "# nothing yet\n")}, io.Discard)
	if err != nil || c.StateDir != "/var/lib/paddock" {
		t.Fatalf("empty file: %v, %+v", err, c)
	}
}

func TestConfigNoResolver(t *testing.T) {
	resolvConf = writeFile(t, "resolv.conf", "search example.test\n")
	t.Cleanup(func() { resolvConf = "/etc/resolv.conf" })
	_, err := parseConfig(nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "pass --resolver") {
		t.Fatalf("err = %v", err)
	}
}
