package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/proxy"
	"github.com/paddock-sandbox/paddock/test/world"
)

// nodeFetch is a Node.js program using the built-in fetch, which ignores
// HTTP(S)_PROXY: only the transparent redirect can catch it.
const nodeFetch = `const url = process.argv[2];
fetch(url).then(async (r) => {
  console.log("STATUS " + r.status);
  console.log(await r.text());
}).catch((e) => {
  console.log("ERROR " + (e.cause && (e.cause.code || e.cause.message) || e.message));
  process.exit(3);
});
`

// nodeFetchTwice fetches its URL twice, 3 s apart, on one kept-alive
// connection, printing each status.
const nodeFetchTwice = `const url = process.argv[2];
(async () => {
  for (let i = 0; i < 2; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, 3000));
    const r = await fetch(url);
    await r.text();
    console.log("STATUS " + r.status);
  }
})().catch((e) => {
  console.log("ERROR " + (e.cause && (e.cause.code || e.cause.message) || e.message));
  process.exit(3);
});
`

// statusLine matches the status line curl -i prints, over HTTP/1.1 or 2.
func statusLine(out string, code int) bool {
	return regexp.MustCompile(fmt.Sprintf(`(?m)^HTTP/[0-9.]+ %d `, code)).MatchString(out)
}

// TestProxyRealClients: curl (transparent and through HTTPS_PROXY) and
// Node's fetch reach an allowed site through the proxy; a host the policy
// does not name gets the proxy's 403 body; every request is audited.
func TestProxyRealClients(t *testing.T) {
	p := newProxyWorld(t, "dns: allowlist\negress:\n  - domains: [allowed.test]\n")

	out, err := p.curl(t, "https://allowed.test/")
	if err != nil || !strings.Contains(out, "hello from allowed.test") {
		t.Fatalf("transparent curl to allowed.test: %v\n%s", err, out)
	}
	out, err = p.exec(t, 15*time.Second, "env", "HTTPS_PROXY="+p.explicitProxy(),
		"curl", "-sS", "-m", "10", "--cacert", p.ca, "-v", "https://allowed.test/")
	if err != nil || !strings.Contains(out, "hello from allowed.test") {
		t.Fatalf("curl through HTTPS_PROXY to allowed.test: %v\n%s", err, out)
	}
	if !strings.Contains(out, "CONNECT allowed.test:443") {
		t.Fatalf("curl did not use the explicit proxy %s:\n%s", p.explicitProxy(), out)
	}

	script := filepath.Join(t.TempDir(), "fetch.js")
	if err := os.WriteFile(script, []byte(nodeFetch), 0o644); err != nil {
		t.Fatal(err)
	}
	node := func(url string) (string, error) {
		return p.exec(t, 20*time.Second, "env", "NODE_EXTRA_CA_CERTS="+p.ca, "node", script, url)
	}
	out, err = node("https://allowed.test/")
	if err != nil || !strings.Contains(out, "STATUS 200") || !strings.Contains(out, "hello from allowed.test") {
		t.Fatalf("node fetch of allowed.test: %v\n%s", err, out)
	}
	// fetch ignores proxy variables, even one naming a dead proxy: only the
	// transparent redirect brings it to paddock.
	out, err = p.exec(t, 20*time.Second, "env", "NODE_EXTRA_CA_CERTS="+p.ca, "HTTPS_PROXY=http://192.0.2.99:1", "node", script, "https://allowed.test/")
	if err != nil || !strings.Contains(out, "STATUS 200") {
		t.Fatalf("node fetch with HTTPS_PROXY set: %v\n%s", err, out)
	}

	// The DNS guard does not resolve blocked.test, so a client that
	// resolves for itself gets no address; one that has an address (or
	// lets the explicit proxy resolve) gets the proxy's 403.
	out, err = node("https://blocked.test/")
	if err == nil || !strings.Contains(out, "ENOTFOUND") {
		t.Fatalf("node fetch of blocked.test: want ENOTFOUND from the DNS guard, got %v\n%s", err, out)
	}
	out, err = p.curl(t, "-i", "--resolve", "blocked.test:443:"+world.WebAddr.String(), "https://blocked.test/")
	if err != nil || !statusLine(out, 403) || !strings.Contains(out, `paddock: request to blocked.test denied by policy "default"`) {
		t.Fatalf("transparent curl to blocked.test: want the proxy's 403, got %v\n%s", err, out)
	}
	out, err = p.exec(t, 15*time.Second, "env", "HTTPS_PROXY="+p.explicitProxy(),
		"curl", "-sS", "-m", "10", "--cacert", p.ca, "-v", "https://blocked.test/")
	if err == nil || !strings.Contains(out, "< HTTP/1.1 403") {
		t.Fatalf("curl through HTTPS_PROXY to blocked.test: want CONNECT refused with 403, got %v\n%s", err, out)
	}
	out, err = p.exec(t, 15*time.Second, "curl", "-sS", "-m", "10", "-i", "-x", p.explicitProxy(), "http://blocked.test/")
	if err != nil || !statusLine(out, 403) || !strings.Contains(out, "paddock: request to blocked.test denied") {
		t.Fatalf("plain http through the explicit proxy to blocked.test: want the 403 body, got %v\n%s", err, out)
	}

	out, err = p.exec(t, 15*time.Second, "curl", "-sS", "-m", "10", "http://allowed.test/")
	if err != nil || !strings.Contains(out, "hello from allowed.test") {
		t.Fatalf("plain http to allowed.test: %v\n%s", err, out)
	}

	// Under "dns: all" the name resolves, so Node's fetch itself reaches the
	// proxy and gets its 403 body.
	if err := p.w.WritePolicy("open", "dns: all\negress:\n  - domains: [allowed.test]\n"); err != nil {
		t.Fatal(err)
	}
	open, err := p.w.AddSandbox(t, "open", world.SandboxOptions{Policy: "open"})
	if err != nil {
		t.Fatal(err)
	}
	var nodeOut []byte
	for i := 0; i < 20; i++ { // the proxy loads a new policy file within a poll interval
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		nodeOut, err = open.Exec(ctx, "env", "NODE_EXTRA_CA_CERTS="+p.ca, "node", script, "https://blocked.test/")
		cancel()
		if strings.Contains(string(nodeOut), "STATUS 403") {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil || !strings.Contains(string(nodeOut), "STATUS 403") || !strings.Contains(string(nodeOut), `paddock: request to blocked.test denied by policy "open"`) {
		t.Fatalf("node fetch of blocked.test under dns: all: want the proxy's 403 body, got %v\n%s", err, nodeOut)
	}

	id := p.sb.RuntimeConf().ContainerID
	mine := func(r proxy.AuditRecord) bool {
		return r.Sandbox != "" && strings.HasPrefix(id, r.Sandbox) && r.Kind == "http"
	}
	allow := p.waitAudit(t, "allowed.test via TLS", func(r proxy.AuditRecord) bool {
		return mine(r) && r.Decision == "allow" && r.SNI == "allowed.test" && r.Host == "allowed.test" && r.Status == 200
	})
	t.Logf("allow record: %+v", allow)
	p.waitAudit(t, "allowed.test via CONNECT", func(r proxy.AuditRecord) bool {
		return mine(r) && r.Decision == "allow" && r.SNI == "allowed.test" && r.Status == 200 && r.Dst == "allowed.test:443"
	})
	deny := p.waitAudit(t, "blocked.test via TLS", func(r proxy.AuditRecord) bool {
		return mine(r) && r.Decision == "deny" && r.SNI == "blocked.test" && r.Host == "blocked.test" && r.Status == 403
	})
	t.Logf("deny record: %+v", deny)
	p.waitAudit(t, "CONNECT blocked.test", func(r proxy.AuditRecord) bool {
		return mine(r) && r.Decision == "deny" && r.Method == "CONNECT" && r.Host == "blocked.test" && r.Status == 403
	})
	p.waitAudit(t, "plain http blocked.test", func(r proxy.AuditRecord) bool {
		return mine(r) && r.Decision == "deny" && r.Method == "GET" && r.Host == "blocked.test" && r.SNI == "" && r.Status == 403
	})
	p.w.AssertNoLeaks(t)
}

// TestProxyNftablesRedirect: with the TPROXY fallback instead of BPF,
// curl and Node's fetch reach the proxy the same way, DNS goes to the
// guard, and nothing leaks.
func TestProxyNftablesRedirect(t *testing.T) {
	p := newProxyWorldWith(t, []string{"--redirect", "nftables"}, "dns: allowlist\negress:\n  - domains: [allowed.test]\n")
	if st, err := p.d.WaitReady(5 * time.Second); err != nil || st.Redirect != "nftables" {
		t.Fatalf("paddockd redirect mode %q (%v), want nftables", st.Redirect, err)
	}
	if out, err := p.curl(t, "https://allowed.test/"); err != nil || !strings.Contains(out, "hello from allowed.test") {
		t.Fatalf("curl to allowed.test: %v\n%s", err, out)
	}
	script := filepath.Join(t.TempDir(), "fetch.js")
	if err := os.WriteFile(script, []byte(nodeFetch), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := p.exec(t, 20*time.Second, "env", "NODE_EXTRA_CA_CERTS="+p.ca, "node", script, "https://allowed.test/"); err != nil || !strings.Contains(out, "STATUS 200") {
		t.Fatalf("node fetch of allowed.test: %v\n%s", err, out)
	}
	out, err := p.curl(t, "-i", "--resolve", "blocked.test:443:"+world.WebAddr.String(), "https://blocked.test/")
	if err != nil || !statusLine(out, 403) || !strings.Contains(out, "paddock: request to blocked.test denied") {
		t.Fatalf("curl to blocked.test: want the proxy's 403, got %v\n%s", err, out)
	}
	out, err = p.exec(t, 10*time.Second, "dig", "+time=3", "+tries=1", "blocked.test")
	if err != nil || !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "EDE: 15 (Blocked)") {
		t.Fatalf("dig blocked.test: want NXDOMAIN with EDE 15, got %v\n%s", err, out)
	}
	p.waitAudit(t, "blocked.test denied", func(r proxy.AuditRecord) bool {
		return r.Decision == "deny" && r.SNI == "blocked.test" && r.Status == 403
	})
	p.w.AssertNoLeaks(t)
}

// TestProxyPassthrough: a passthrough rule splices the upstream's TLS: the
// client sees the upstream's own certificate (world CA), not paddock's.
func TestProxyPassthrough(t *testing.T) {
	p := newProxyWorld(t, "dns: allowlist\negress:\n  - domains: [passthrough.test]\n    tls: passthrough\n")
	out, err := p.exec(t, 15*time.Second, "curl", "-sS", "-v", "-m", "10", "--cacert", p.w.CAFile, "https://passthrough.test/")
	if err != nil || !strings.Contains(out, "hello from passthrough.test") {
		t.Fatalf("curl with the world CA to passthrough.test: %v\n%s", err, out)
	}
	if !strings.Contains(out, "issuer: O=paddock tests; CN=paddock test-world upstream CA") {
		t.Fatalf("passthrough.test certificate not issued by the world CA:\n%s", out)
	}
	if strings.Contains(out, "paddock node CA") {
		t.Fatalf("passthrough connection was terminated by paddock:\n%s", out)
	}
	// Trusting only paddock's CA must fail: nothing was re-signed.
	out, err = p.curl(t, "https://passthrough.test/")
	if err == nil {
		t.Fatalf("curl trusting only paddock's CA verified passthrough.test:\n%s", out)
	}
	p.waitAudit(t, "passthrough", func(r proxy.AuditRecord) bool {
		return r.Kind == "passthrough" && r.Decision == "allow" && r.SNI == "passthrough.test"
	})
	p.w.AssertNoLeaks(t)
}

// TestProxyInjectsSecret: the upstream receives the injected credentials,
// replacing what the sandbox sent, and the sandbox never sees them, not
// even when the upstream echoes them back.
func TestProxyInjectsSecret(t *testing.T) {
	const token, apiKey = "tok-6b1f0e9c2d4a", "key-93ac51d7e08f"
	dir := secretDir(t, map[string]string{"token": token, "apikey": apiKey})
	policy := fmt.Sprintf(`dns: allowlist
egress:
  - domains: [echo.test]
    ports: [443, 8443]
    inject:
      - header: Authorization
        value: "Bearer {secret}"
        secretFile: %s
      - header: X-Api-Key
        secretFile: %s
  - domains: [other.test]
    ports: [8443]
    inject:
      - header: Authorization
        secretFile: %s
`, filepath.Join(dir, "token"), filepath.Join(dir, "apikey"), filepath.Join(dir, "root-only"))
	// The proxy runs as nobody: a secret only root can read is unavailable.
	if err := os.WriteFile(filepath.Join(dir, "root-only"), []byte("never-sent\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := newProxyWorld(t, policy)
	rec := startHeaderRecorder(t, p.w, world.WebAddr.String()+":8443")

	out, err := p.curl(t, "-i", "-H", "Authorization: Bearer sandbox-guess", "https://echo.test:8443/echo")
	if err != nil || !statusLine(out, 200) {
		t.Fatalf("curl echo.test:8443/echo: %v\n%s", err, out)
	}
	seen := rec.received()
	if len(seen) != 1 {
		t.Fatalf("upstream got %d requests, want 1", len(seen))
	}
	if got := seen[0].Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+token {
		t.Fatalf("upstream Authorization = %q, want the injected token only", got)
	}
	if got := seen[0].Get("X-Api-Key"); got != apiKey {
		t.Fatalf("upstream X-Api-Key = %q, want the injected key", got)
	}

	for _, url := range []string{"https://echo.test/echo-secret", "https://echo.test/echo", "https://echo.test:8443/echo-secret"} {
		out, err := p.curl(t, "-i", url)
		if err != nil || !statusLine(out, 200) {
			t.Fatalf("curl %s: %v\n%s", url, err, out)
		}
		if strings.Contains(out, token) || strings.Contains(out, apiKey) {
			t.Fatalf("sandbox saw a secret in the response of %s:\n%s", url, out)
		}
		if !strings.Contains(out, proxy.Redacted) {
			t.Fatalf("response of %s shows no redacted credential; was anything injected?\n%s", url, out)
		}
	}
	// Through the explicit proxy and from Node's fetch the same holds.
	out, err = p.exec(t, 15*time.Second, "env", "HTTPS_PROXY="+p.explicitProxy(),
		"curl", "-sS", "-m", "10", "-i", "--cacert", p.ca, "https://echo.test/echo-secret")
	if err != nil || !statusLine(out, 200) || strings.Contains(out, token) || strings.Contains(out, apiKey) || !strings.Contains(out, proxy.Redacted) {
		t.Fatalf("echo-secret through HTTPS_PROXY: want 200 with redacted credentials, got %v\n%s", err, out)
	}
	script := filepath.Join(t.TempDir(), "fetch.js")
	if err := os.WriteFile(script, []byte(nodeFetch), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = p.exec(t, 20*time.Second, "env", "NODE_EXTRA_CA_CERTS="+p.ca, "node", script, "https://echo.test/echo-secret")
	if err != nil || !strings.Contains(out, "STATUS 200") || strings.Contains(out, token) || strings.Contains(out, apiKey) || !strings.Contains(out, proxy.Redacted) {
		t.Fatalf("node fetch of echo-secret: want 200 with redacted credentials, got %v\n%s", err, out)
	}
	// A streamed response with injected credentials reaches the sandbox as
	// it comes: the redactor holds back only what could begin a secret.
	out, err = p.curl(t, "-N", "-m", "1.5", "https://echo.test:8443/events")
	if !strings.Contains(out, "data: first") || strings.Contains(out, "data: second") {
		t.Fatalf("event stream with injection: want the first event within 1.5 s, got %v\n%q", err, out)
	}
	// The file is read on every request: a rotated secret is used at once.
	const rotated = "tok-rotated-77d1"
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(rotated+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := p.curl(t, "-i", "https://echo.test:8443/echo"); err != nil || !statusLine(out, 200) || strings.Contains(out, rotated) {
		t.Fatalf("after rotation: %v\n%s", err, out)
	}
	seen = rec.received()
	if got := seen[len(seen)-1].Get("Authorization"); got != "Bearer "+rotated {
		t.Fatalf("after rotation the upstream got Authorization %q, want the new token", got)
	}
	// A credential the proxy cannot read stops the request before it leaves.
	before := len(rec.received())
	out, err = p.curl(t, "-i", "https://other.test:8443/echo")
	if err != nil || !statusLine(out, 502) || !strings.Contains(out, "credential for header Authorization is unavailable") {
		t.Fatalf("unreadable secret: want 502 naming the header, got %v\n%s", err, out)
	}
	if n := len(rec.received()); n != before {
		t.Fatalf("a request without its credential reached the upstream (%d requests, had %d)", n, before)
	}
	r := p.waitAudit(t, "injected request", func(r proxy.AuditRecord) bool {
		return r.Decision == "allow" && r.Path == "/echo-secret" && len(r.Injected) == 2
	})
	t.Logf("audit: %+v", r)
	b, _ := os.ReadFile(filepath.Join(p.d.LogDir, "audit.jsonl"))
	if strings.Contains(string(b), token) || strings.Contains(string(b), apiKey) || strings.Contains(string(b), rotated) {
		t.Fatal("audit log contains a secret")
	}
	p.w.AssertNoLeaks(t)
}

// TestProxyMethodPathRule: a rule allowing GET on one path lets GET through
// and refuses POST to the same path, and GET elsewhere, with a 403.
func TestProxyMethodPathRule(t *testing.T) {
	p := newProxyWorld(t, `dns: allowlist
egress:
  - domains: [readonly.test]
    http:
      methods: [GET]
      paths: ["/echo"]
`, "readonly.test")
	out, err := p.curl(t, "-i", "https://readonly.test/echo")
	if err != nil || !statusLine(out, 200) || !strings.Contains(out, `"method":"GET"`) {
		t.Fatalf("GET /echo: %v\n%s", err, out)
	}
	out, err = p.curl(t, "-i", "-X", "POST", "-d", "payload", "https://readonly.test/echo")
	if err != nil || !statusLine(out, 403) || !strings.Contains(out, "denied by policy") {
		t.Fatalf("POST /echo: want 403, got %v\n%s", err, out)
	}
	out, err = p.curl(t, "-i", "https://readonly.test/bytes?n=10")
	if err != nil || !statusLine(out, 403) {
		t.Fatalf("GET /bytes: want 403, got %v\n%s", err, out)
	}
	// Dot segments cannot walk out of the allowed path.
	out, err = p.curl(t, "-i", "--path-as-is", "https://readonly.test/echo/../bytes?n=10")
	if err != nil || !statusLine(out, 403) || !strings.Contains(out, "not canonical") {
		t.Fatalf("GET /echo/../bytes: want 403, got %v\n%s", err, out)
	}
	p.waitAudit(t, "denied POST", func(r proxy.AuditRecord) bool {
		return r.Decision == "deny" && r.Method == "POST" && r.Path == "/echo" && r.Status == 403
	})
	p.w.AssertNoLeaks(t)
}

// TestProxyRefusesFrontingAndInternal: a Host header that differs from the
// SNI is refused even when both names are allowed, and policy names that
// resolve to loopback, private or link-local addresses are refused without
// a connection being attempted.
func TestProxyRefusesFrontingAndInternal(t *testing.T) {
	p := newProxyWorld(t, `dns: allowlist
egress:
  - domains: [allowed.test, other.test]
  - domains: [loopback.test, private.test, metadata.test, node.test]
`)
	web := world.WebAddr.String()
	out, err := p.curl(t, "-i", "--resolve", "allowed.test:443:"+web, "-H", "Host: other.test", "https://allowed.test/")
	if err != nil || !statusLine(out, 403) || !strings.Contains(out, "does not match TLS SNI") {
		t.Fatalf("SNI allowed.test with Host other.test: want 403, got %v\n%s", err, out)
	}
	out, err = p.curl(t, "-i", "https://other.test/")
	if err != nil || !strings.Contains(out, "hello from other.test") {
		t.Fatalf("other.test itself: %v\n%s", err, out)
	}

	// Listeners where a dial to the resolved addresses would land: loopback
	// and the node's own uplink address in node (where the proxy runs); the
	// private and link-local ones are given to the internet namespace, where
	// node's default route leads.
	for _, a := range []string{"10.0.0.1/32", "169.254.169.254/32"} {
		if out, err := p.w.ExecInternet("ip", "addr", "add", a, "dev", "lo"); err != nil {
			t.Fatalf("add %s in internet: %v %s", a, err, out)
		}
	}
	counters := []*connCounter{
		startConnCounter(t, p.w.InNode, "127.0.0.1:443"),
		startConnCounter(t, p.w.InNode, world.NodeAddr.String()+":443"),
		startConnCounter(t, p.w.InInternet, "10.0.0.1:443"),
		startConnCounter(t, p.w.InInternet, "169.254.169.254:443"),
	}
	for _, name := range []string{"loopback.test", "private.test", "metadata.test", "node.test"} {
		out, err := p.curl(t, "-i", "--resolve", name+":443:"+web, "https://"+name+"/")
		if err != nil || !statusLine(out, 403) || !strings.Contains(out, "internal address") {
			t.Fatalf("%s: want 403 for an internal address, got %v\n%s", name, err, out)
		}
		p.waitAudit(t, name+" refused", func(r proxy.AuditRecord) bool {
			return r.Decision == "deny" && r.Host == name && r.Status == 403
		})
	}
	// Without --resolve the guard hands the sandbox the internal address
	// itself; the connection to it is still redirected to the proxy.
	out, err = p.curl(t, "-i", "https://metadata.test/latest/meta-data/")
	if err != nil || !statusLine(out, 403) || !strings.Contains(out, "internal address") {
		t.Fatalf("metadata.test at its own address: want 403, got %v\n%s", err, out)
	}
	// The same through the explicit proxy, where the proxy resolves.
	out, err = p.exec(t, 15*time.Second, "env", "HTTPS_PROXY="+p.explicitProxy(),
		"curl", "-sS", "-m", "10", "-i", "--cacert", p.ca, "https://loopback.test/")
	if !statusLine(out, 403) || !strings.Contains(out, "internal address") {
		t.Fatalf("loopback.test through HTTPS_PROXY: want 403, got %v\n%s", err, out)
	}
	out, err = p.exec(t, 15*time.Second, "curl", "-sS", "-m", "10", "-i", "-x", p.explicitProxy(), "http://metadata.test/latest/meta-data/")
	if !statusLine(out, 403) || !strings.Contains(out, "internal address") {
		t.Fatalf("http://metadata.test through the explicit proxy: want 403, got %v\n%s", err, out)
	}
	// A TLS connection without SNI names nothing the policy could allow.
	out, err = p.exec(t, 15*time.Second, "curl", "-sS", "-m", "10", "-ik", "https://"+web+"/")
	if err == nil && !statusLine(out, 403) {
		t.Fatalf("TLS without SNI to %s: want refusal, got\n%s", web, out)
	}
	t.Logf("TLS without SNI: %v %s", err, out)
	for i, c := range counters {
		if n := c.count(); n != 0 {
			t.Fatalf("internal listener %d accepted %d connections", i, n)
		}
	}
	p.w.AssertNoLeaks(t)
}

// TestProxyDNSGuard: allowed names resolve through the guard (default
// resolv.conf and the gateway), others get NXDOMAIN with EDE 15 (Blocked),
// and tunnel-shaped TXT queries are refused.
func TestProxyDNSGuard(t *testing.T) {
	p := newProxyWorld(t, "dns: allowlist\negress:\n  - domains: [allowed.test]\n")
	dig := func(args ...string) string {
		t.Helper()
		out, err := p.exec(t, 15*time.Second, append([]string{"dig", "+time=3", "+tries=1"}, args...)...)
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return out
	}
	// Whatever server the sandbox asks (its resolv.conf, its gateway, an
	// address that runs no DNS at all, over UDP or TCP), the guard answers.
	for _, server := range []string{"", "@" + p.gw.String(), "@" + world.OtherWebAddr.String(), "+tcp"} {
		args := []string{"allowed.test", "A"}
		if server != "" {
			args = append([]string{server}, args...)
		}
		out := dig(args...)
		if !strings.Contains(out, "status: NOERROR") || !regexp.MustCompile(`allowed\.test\.\s+\d+\s+IN\s+A\s+192\.0\.2\.10`).MatchString(out) {
			t.Fatalf("dig %v: want 192.0.2.10\n%s", args, out)
		}
	}
	out := dig("@"+p.gw.String(), "blocked.test", "A")
	if !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "EDE: 15 (Blocked)") {
		t.Fatalf("blocked.test: want NXDOMAIN with EDE 15 (Blocked)\n%s", out)
	}
	const tunnel = "bWFkZSBieSBhbiBhZ2VudCBleGZpbHRyYXRpbmc" // base64 data as a label, as DNS tunnels send
	for _, q := range [][]string{
		{"allowed.test", "TXT"},
		{tunnel + ".allowed.test", "TXT"},
		{tunnel + ".blocked.test", "TXT"},
	} {
		out := dig(q...)
		if !strings.Contains(out, "status: REFUSED") || strings.Contains(out, "paddock test world") {
			t.Fatalf("dig %v: want REFUSED\n%s", q, out)
		}
	}
	// As A queries, data labels under a name the policy allows exactly are
	// names the policy does not name.
	if out := dig(tunnel+".allowed.test", "A"); !strings.Contains(out, "status: NXDOMAIN") {
		t.Fatalf("A query with a data label: want NXDOMAIN\n%s", out)
	}
	// Nothing the guard refused or blocked was asked upstream: the tunnel
	// carried no byte out.
	for _, q := range p.w.DNSQueries() {
		if strings.Contains(q, strings.ToLower(tunnel)) || strings.Contains(q, "blocked.test") {
			t.Fatalf("the world's DNS server was asked %q", q)
		}
	}
	p.waitAudit(t, "blocked DNS question", func(r proxy.AuditRecord) bool {
		return r.Kind == "dns" && r.Decision == "deny" && strings.Contains(r.Host+r.Path, "blocked.test")
	})
	p.w.AssertNoLeaks(t)
}

// TestProxyPolicyEditLive: removing a domain from the policy file while a
// download runs lets that download finish in full and denies new requests
// to the domain within 2 s.
func TestProxyPolicyEditLive(t *testing.T) {
	p := newProxyWorld(t, "dns: allowlist\negress:\n  - domains: [allowed.test]\n  - domains: [other.test]\n")
	const n = 2000000
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := p.exec(t, 30*time.Second, "curl", "-sS", "-m", "25", "--cacert", p.ca, "-o", "/dev/null",
			"-w", "%{http_code} %{size_download}", fmt.Sprintf("https://allowed.test/slow?seconds=4&n=%d", n))
		done <- result{out, err}
	}()
	// Node's fetch keeps its connection: its second request, after the
	// edit, travels on the connection the old policy allowed.
	script := filepath.Join(t.TempDir(), "twice.js")
	if err := os.WriteFile(script, []byte(nodeFetchTwice), 0o644); err != nil {
		t.Fatal(err)
	}
	nodeDone := make(chan result, 1)
	go func() {
		out, err := p.exec(t, 20*time.Second, "env", "NODE_EXTRA_CA_CERTS="+p.ca, "node", script, "https://allowed.test/")
		nodeDone <- result{out, err}
	}()
	// Let the download get going before the edit; it lasts 4 s.
	time.Sleep(1500 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("download ended before the policy edit: %v %q", r.err, r.out)
	default:
	}
	if err := p.w.WritePolicy("default", "dns: allowlist\negress:\n  - domains: [other.test]\n"); err != nil {
		t.Fatal(err)
	}
	edited := time.Now()
	var denied time.Duration
	for time.Since(edited) < 5*time.Second {
		out, _ := p.curl(t, "-i", "-m", "3", "--resolve", "allowed.test:443:"+world.WebAddr.String(), "https://allowed.test/")
		if statusLine(out, 403) {
			denied = time.Since(edited)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if denied == 0 {
		t.Fatal("allowed.test still allowed 5 s after it was removed from the policy")
	}
	// How fast is measured, not asserted (the loop above bounds it at 5 s).
	t.Logf("new request denied %s after the edit", denied)
	select {
	case r := <-done:
		if r.err != nil || strings.TrimSpace(r.out) != "200 "+strconv.Itoa(n) {
			t.Fatalf("download during the edit: want \"200 %d\", got %v %q", n, r.err, r.out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("download did not finish")
	}
	select {
	case r := <-nodeDone:
		if r.err != nil || !strings.Contains(r.out, "STATUS 200\nSTATUS 403") {
			t.Fatalf("node fetch before and after the edit: want 200 then 403, got %v\n%s", r.err, r.out)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("node did not finish")
	}
	first := p.waitAudit(t, "node's first request", func(r proxy.AuditRecord) bool {
		return r.Host == "allowed.test" && r.Path == "/" && r.Decision == "allow"
	})
	p.waitAudit(t, "node's second request on the same connection", func(r proxy.AuditRecord) bool {
		return r.Src == first.Src && r.Path == "/" && r.Decision == "deny" && r.Status == 403
	})
	p.w.AssertNoLeaks(t)
}

// TestProxyUnprivilegedAndRestarted: the proxy runs as a non-root user;
// killing it fails closed (nothing leaks while it is down) and paddockd
// starts a new one that serves again, in both redirect modes (TPROXY
// forwards what finds no socket, so the nftables mode matters most here).
func TestProxyUnprivilegedAndRestarted(t *testing.T) {
	for _, mode := range []string{"bpf", "nftables"} {
		t.Run(mode, func(t *testing.T) { proxyKillAndRestart(t, mode) })
	}
}

func proxyKillAndRestart(t *testing.T, mode string) {
	p := newProxyWorldWith(t, []string{"--redirect", mode}, "dns: allowlist\negress:\n  - domains: [allowed.test]\n")
	pid := p.waitProxyPid(t, 0, 5*time.Second)
	uids := procUIDs(t, pid)
	for _, u := range uids {
		if u == 0 {
			t.Fatalf("paddock-proxy %d runs with uid 0: Uid %v", pid, uids)
		}
	}
	if caps := procField(t, pid, "CapEff"); strings.Trim(caps, "0") != "" {
		t.Fatalf("paddock-proxy %d has effective capabilities %s", pid, caps)
	}
	t.Logf("paddock-proxy pid %d, uids %v", pid, uids)
	if out, err := p.curl(t, "https://allowed.test/"); err != nil || !strings.Contains(out, "hello from allowed.test") {
		t.Fatalf("before kill: %v\n%s", err, out)
	}

	p.w.ResetLeaks()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// While it is down a connection waits in the listener's backlog or
	// fails; either way it must not go around the proxy.
	var wg sync.WaitGroup
	var downOut string
	var downErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		downOut, downErr = p.exec(t, 15*time.Second, "curl", "-sS", "-m", "10", "--resolve", "allowed.test:443:"+world.WebAddr.String(),
			"--cacert", p.ca, "https://allowed.test/")
	}()
	newPid := p.waitProxyPid(t, pid, 10*time.Second)
	restarted := time.Now()
	t.Logf("paddock-proxy restarted as pid %d", newPid)
	wg.Wait()
	t.Logf("request while the proxy was down: %v %s", downErr, downOut)
	// The new proxy serves what queued while it was down, knowing the
	// sandbox from its first accept on.
	for _, r := range p.audit(t) {
		if strings.Contains(r.Error, "unknown source") {
			t.Errorf("the restarted proxy did not know the sandbox yet: %+v", r)
		}
	}
	if downErr != nil || !strings.Contains(downOut, "hello from allowed.test") {
		t.Errorf("request made while the proxy was down: want it served once the proxy is back, got %v\n%s", downErr, downOut)
	}
	if leaks := p.w.WaitLeak(time.Second); len(leaks) > 0 {
		t.Fatalf("traffic leaked while the proxy was down: %v", leaks)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := p.curl(t, "-m", "3", "https://allowed.test/")
		if err == nil && strings.Contains(out, "hello from allowed.test") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy does not serve after the restart: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := p.exec(t, 10*time.Second, "dig", "+time=3", "+tries=1", "+short", "allowed.test"); err != nil || strings.TrimSpace(out) != world.WebAddr.String() {
		t.Fatalf("DNS guard after the restart: %v %q", err, out)
	}
	p.waitAudit(t, "a request served by the new proxy", func(r proxy.AuditRecord) bool {
		return r.Decision == "allow" && r.Host == "allowed.test" && r.Status == 200 && r.Time.After(restarted)
	})
	for _, u := range procUIDs(t, newPid) {
		if u == 0 {
			t.Fatalf("restarted paddock-proxy %d runs as root", newPid)
		}
	}
	p.w.AssertNoLeaks(t)
}
