package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
)

const smokePolicy = `dns: allowlist
egress:
  - domains: [allowed.test]
`

// TestProxyPathSmoke: a sandbox's curl reaches an allowed site through the
// transparent path and is refused a blocked one, with nothing leaked.
func TestProxyPathSmoke(t *testing.T) {
	w := world.New(t, world.Options{})
	w.WritePolicy("default", smokePolicy)
	d := w.StartDaemon(t)
	_ = d
	sb, err := w.AddSandbox(t, "agent", world.SandboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := sb.Exec(ctx, "curl", "-sS", "-m", "10", "--cacert", d.CADir+"/ca.pem", "https://allowed.test/")
	t.Logf("allowed: %s %v", out, err)
	if err != nil || !strings.Contains(string(out), "hello from allowed.test") {
		t.Fatalf("allowed: %s %v", out, err)
	}
	out, err = sb.Exec(ctx, "curl", "-sS", "-m", "10", "--cacert", d.CADir+"/ca.pem", "https://blocked.test/")
	t.Logf("blocked: %s %v", out, err)
	w.AssertNoLeaks(t)
}
