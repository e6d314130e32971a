package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

func TestParseExplicitHeader(t *testing.T) {
	sb, err := api.ParseExplicitHeader("PADDOCK-EXPLICIT/1 sandbox=0a1b2c3d4e5f policy=team.web-1\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := (api.Sandbox{Network: api.ExplicitNetwork, ContainerID: "0a1b2c3d4e5f", Policy: "team.web-1"}); sb.Network != want.Network || sb.ContainerID != want.ContainerID || sb.Policy != want.Policy {
		t.Fatalf("parsed %+v, want %+v", sb, want)
	}
	for _, bad := range []string{
		"",
		"PADDOCK-EXPLICIT/1 sandbox=a policy=p", // no newline
		"PADDOCK-EXPLICIT/1 sandbox=a policy=p\r\n", // CR
		"PADDOCK-EXPLICIT/2 sandbox=a policy=p\n",
		"PADDOCK-EXPLICIT/1 policy=p sandbox=a\n",
		"PADDOCK-EXPLICIT/1  sandbox=a policy=p\n",
		"PADDOCK-EXPLICIT/1 sandbox=a policy=p \n",
		"PADDOCK-EXPLICIT/1 sandbox=a policy=p extra=1\n",
		"PADDOCK-EXPLICIT/1 sandbox= policy=p\n",
		"PADDOCK-EXPLICIT/1 sandbox=a/b policy=p\n",
		"PADDOCK-EXPLICIT/1 sandbox=" + strings.Repeat("a", 65) + " policy=p\n",
		"PADDOCK-EXPLICIT/1 sandbox=a policy=Default\n",
		"PADDOCK-EXPLICIT/1 sandbox=a policy=-p\n",
		"PADDOCK-EXPLICIT/1 sandbox=a policy=../p\n",
		"PADDOCK-EXPLICIT/1 sandbox=a policy=" + strings.Repeat("p", 64) + "\n",
		"CONNECT allowed.test:443 HTTP/1.1\n",
	} {
		if sb, err := api.ParseExplicitHeader(bad); err == nil {
			t.Errorf("header %q accepted as %+v", bad, sb)
		}
	}
	if _, err := api.ExplicitHeader("a b", "p"); err == nil {
		t.Error("ExplicitHeader formatted a sandbox id with a space")
	}
}

// TestExplicitSocket serves the root-only explicit socket: a client that
// names its sandbox and policy is proxied under them (policy, audit with
// sandbox=id); a bad header, or none in time, closes the connection and is
// audited as a deny.
func TestExplicitSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the explicit socket serves root clients only (SO_PEERCRED): run as root")
	}
	w := newWorld(t, basePolicy)
	sock := filepath.Join(t.TempDir(), "explicit.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { _ = w.srv.ServeExplicitSocket(l) }()
	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	hdr, err := api.ExplicitHeader("run0123abcd", "default")
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: "paddock.invalid"}),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c := dial()
			_, err := io.WriteString(c, hdr)
			return c, err
		},
		TLSClientConfig: &tls.Config{RootCAs: w.nodeRoots},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if code, body, _ := w.get(c, "GET", "https://allowed.test:{TLS}/x", nil); code != 200 || !strings.Contains(body, "hello from allowed.test") {
		t.Fatalf("allowed through the explicit socket: %d %q", code, body)
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Sandbox == "run0123abcd" && r.Host == "allowed.test" && r.Decision == "allow"
	})
	if _, err := c.Get(w.expand("https://blocked.test:{TLS}/")); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("blocked through the explicit socket: %v", err)
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Sandbox == "run0123abcd" && r.Host == "blocked.test" && r.Decision == "deny"
	})

	for _, bad := range []string{
		"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n",
		"PADDOCK-EXPLICIT/1 sandbox=x policy=Nope\nCONNECT allowed.test:443 HTTP/1.1\r\n\r\n",
		"PADDOCK-EXPLICIT/1 sandbox=x policy=default " + strings.Repeat("z", 300),
	} {
		cn := dial()
		_ = cn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(cn, bad)
		// Unread input makes the close a reset: either way no answer.
		if b, err := io.ReadAll(cn); (err != nil && !errors.Is(err, syscall.ECONNRESET)) || len(b) != 0 {
			t.Errorf("header %.40q: want the connection closed without an answer, got %q %v", bad, b, err)
		}
		cn.Close()
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Decision == "deny" && strings.Contains(r.Error, `policy name "Nope"`)
	})
	w.auditFor(func(r AuditRecord) bool {
		return r.Decision == "deny" && strings.Contains(r.Error, "longer than 256 bytes")
	})

	// Silence: closed after the header deadline.
	cn := dial()
	defer cn.Close()
	_ = cn.SetDeadline(time.Now().Add(3 * explicitHeaderTimeout))
	start := time.Now()
	if b, err := io.ReadAll(cn); err != nil || len(b) != 0 {
		t.Errorf("silent client: want the connection closed, got %q %v", b, err)
	}
	if d := time.Since(start); d > 2*explicitHeaderTimeout {
		t.Errorf("silent client held for %s", d)
	}
	w.auditFor(func(r AuditRecord) bool {
		return r.Decision == "deny" && strings.Contains(r.Error, "read explicit header")
	})
}
