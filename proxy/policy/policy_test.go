package policy

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

const example = `dns: allowlist
egress:
  - domains: [api.example.com]
    inject: [{header: x-api-key, secretFile: /etc/paddock/secrets/k}]
  - domains: [github.com, "*.githubusercontent.com"]
    http: {methods: [GET, HEAD], paths: ["/org/*"]}
  - domains: [github.com]
    http: {methods: [POST], paths: ["/*/git-upload-pack"]}
  - domains: [registry.npmjs.org]
    tls: passthrough
  - tcp: ["db.example.com:5432", "203.0.113.7:6379"]
  - deny: [evil.githubusercontent.com]
`

func TestDecide(t *testing.T) {
	p, err := Parse("t.yaml", "t", []byte(example))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		q     Query
		allow bool
		rule  string
	}{
		{Query{Host: "api.example.com", Port: 443}, true, "egress[0]"},
		{Query{Host: "API.Example.com.", Port: 443}, true, "egress[0]"},
		{Query{Host: "api.example.com", Port: 8443}, false, ""},
		{Query{Host: "raw.githubusercontent.com", Port: 443, Method: "GET", Path: "/org/x"}, true, "egress[1]"},
		{Query{Host: "githubusercontent.com", Port: 443}, false, ""},
		{Query{Host: "evil.githubusercontent.com", Port: 443}, false, "egress[5]"},
		{Query{Host: "github.com", Port: 443, Method: "GET", Path: "/org/repo.git/info/refs"}, true, "egress[1]"},
		{Query{Host: "github.com", Port: 443, Method: "POST", Path: "/org/repo.git/git-upload-pack"}, true, "egress[2]"},
		{Query{Host: "github.com", Port: 443, Method: "POST", Path: "/org/repo.git/git-receive-pack"}, false, ""},
		{Query{Host: "github.com", Port: 443, Method: "GET", Path: "/org/../other/x"}, false, ""},
		{Query{Host: "github.com", Port: 443, Method: "GET", Path: "/other/x"}, false, ""},
		{Query{Host: "registry.npmjs.org", Port: 443}, true, "egress[3]"},
	}
	for _, c := range cases {
		d := p.Decide(c.q)
		if d.Allow != c.allow || d.RuleID() != c.rule {
			t.Errorf("%+v: allow=%v rule=%q (%s), want %v %q", c.q, d.Allow, d.RuleID(), d.Reason, c.allow, c.rule)
		}
	}
	resolve := func(h string) []netip.Addr {
		if h == "db.example.com" {
			return []netip.Addr{netip.MustParseAddr("198.51.100.5")}
		}
		return nil
	}
	if d := p.DecideTCP(netip.MustParseAddrPort("198.51.100.5:5432"), "", resolve); !d.Allow {
		t.Errorf("tcp by name: %s", d.Reason)
	}
	if d := p.DecideTCP(netip.MustParseAddrPort("203.0.113.7:6379"), "", resolve); !d.Allow {
		t.Errorf("tcp by address: %s", d.Reason)
	}
	if d := p.DecideTCP(netip.MustParseAddrPort("198.51.100.5:22"), "", resolve); d.Allow {
		t.Error("tcp on an unlisted port allowed")
	}
	for name, want := range map[string]bool{"api.example.com": true, "x.githubusercontent.com": true, "evil.githubusercontent.com": false, "db.example.com": true, "other.com": false} {
		if got, _ := p.AllowsName(name); got != want {
			t.Errorf("AllowsName(%s) = %v", name, got)
		}
	}
}

func TestParseErrorsNameLineAndField(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"egress:\n  - domains: [a.com]\n    tls: bogus\n", `f.yaml:3: egress[0].tls: "bogus" is not terminate or passthrough`},
		{"egress:\n  - domains: [a.com]\n    colour: red\n", "f.yaml:3: colour: unknown field"},
		{"egress:\n  - domains: [a.com]\n    ports: [443, 70000]\n", "f.yaml:3: egress[0].ports[1]: 70000 is not a port"},
		{"egress:\n  - domains: [a.com]\n    tcp: [\"b.com:1\"]\n", "f.yaml:2: egress[0]: a rule needs exactly one"},
		{"egress:\n  - domains: [\"a.*.com\"]\n", "f.yaml:2: egress[0].domains[0]"},
		{"egress:\n  - domains: [a.com]\n    inject: [{header: x, secretFile: rel}]\n", "egress[0].inject[0].secretFile"},
		{"egress:\n  - domains: [a.com]\n    inject: [{header: x}]\n", "f.yaml:3: egress[0].inject[0]: needs exactly one of secretFile or secretEnv"},
		{"egress:\n  - domains: [a.com]\n    tls: passthrough\n    http: {methods: [GET]}\n", "passthrough cannot apply http"},
		{"egress:\n  - tcp: [\"*.a.com:1\"]\n", "not wildcards"},
		{"dns: open\n", `f.yaml:1: dns: "open" is not allowlist or all`},
		{"egress: [\n", "f.yaml:"},
		{"egress:\n  - domains: [a.com]\n    http: {methods: [get]}\n", "egress[0].http.methods[0]"},
	}
	for _, c := range cases {
		_, err := Parse("f.yaml", "f", []byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to contain %q", c.yaml, err, c.want)
		}
	}
	if p, err := Parse("empty.yaml", "empty", nil); err != nil || len(p.Egress) != 0 {
		t.Errorf("empty policy: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("egress:\n  - deny: [a.com]\n"))
	f.Add([]byte("egress:\n  - tcp: [\"[::1]:5\"]\n    allowPrivate: true\n"))
	f.Add([]byte("dns: all\negress: []\n"))
	f.Add([]byte("egress:\n  - domains: [a.com]\n    http: {paths: [\"/*x*\"]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", "fuzz", data)
		if err != nil {
			return
		}
		// A parsed policy must decide without panicking.
		p.Decide(Query{Host: "a.com", Port: 443, Method: "GET", Path: "/x"})
		p.Decide(Query{Host: "a.com", Port: 443})
		p.DecideTCP(netip.MustParseAddrPort("192.0.2.1:5"), "a.com", func(string) []netip.Addr { return nil })
		p.AllowsName("a.com")
	})
}

func TestStoreReload(t *testing.T) {
	if _, err := NewStore("/nonexistent/paddock-policies", nil); err == nil {
		t.Fatal("missing policy dir accepted")
	}
	dir := t.TempDir()
	file := dir + "/web.yaml"
	write := func(s string, age time.Duration) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Now().Add(age)
		_ = os.Chtimes(file, mt, mt)
	}
	write("egress:\n  - domains: [a.test]\n", -time.Hour)
	s, err := NewStore(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := s.Get("web"); !ok || len(p.Egress) != 1 {
		t.Fatal("policy not loaded")
	}
	write("egress: [oops\n", -time.Minute)
	s.Reload()
	if p, ok := s.Get("web"); !ok || p.Egress[0].Domains[0] != "a.test" {
		t.Fatal("broken file dropped the last good version")
	}
	write("egress:\n  - domains: [b.test]\n", 0)
	s.Reload()
	if p, _ := s.Get("web"); p.Egress[0].Domains[0] != "b.test" {
		t.Fatal("fixed file not reloaded")
	}
	os.Remove(file)
	s.Reload()
	if _, ok := s.Get("web"); ok {
		t.Fatal("removed policy still served")
	}
}
