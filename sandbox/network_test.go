package sandbox_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
)

// TestNetworkPaddock runs curl under `paddock run` in a test world: the
// launcher attaches its namespace with the real CNI plugin from inside the
// world's node namespace (as a runtime would), paddockd enforces, and the
// proxy's CA is trusted through the CA variables with no per-tool step.
func TestNetworkPaddock(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	w := world.New(t, world.Options{})
	if _, err := os.Stat(filepath.Join(w.CNIPath(), "paddock")); err != nil {
		t.Skipf("the CNI plugin is not built in %s: run make build", w.CNIPath())
	}
	if err := w.WritePolicy("default", "dns: allowlist\negress:\n  - domains: [allowed.test]\n"); err != nil {
		t.Fatal(err)
	}
	d := w.StartDaemon(t)
	confDir := t.TempDir()
	conf, err := w.ConfListBytes(world.SandboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "paddock.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	ws, state := t.TempDir(), t.TempDir()
	run := func(flags []string, argv ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := append([]string{"netns", "exec", w.NodeNS, paddockBin, "run",
			"--cni-conf-dir", confDir, "--cni-bin-dir", w.CNIPath(), "--state-dir", state, "--workspace", ws}, flags...)
		out, err := exec.CommandContext(ctx, "ip", append(append(args, "--"), argv...)...).CombinedOutput()
		return string(out), err
	}
	attached := func() int {
		list, err := d.Client().List(context.Background())
		if err != nil {
			t.Fatalf("paddockd list: %v", err)
		}
		return len(list)
	}

	// Attach, see the interface inside, detach on exit (also on failure).
	out, err := run([]string{"--verbose"}, "sh", "-c", "cat /sys/class/net/eth0/address && exit 3")
	if strings.Contains(out, "is not ready") {
		t.Skipf("paddockd refuses attachments (its enforcer or proxy is not wired yet):\n%s", out)
	}
	if code := exitStatus(err); code != 3 || !strings.Contains(out, "network: paddock via CNI") {
		t.Fatalf("run on the paddock network: exit %d\n%s", code, out)
	}
	if n := attached(); n != 0 {
		t.Errorf("paddockd still holds %d attachments after the run exited", n)
	}

	// The proxy creates its CA when paddockd starts it.
	ca := filepath.Join(w.Dir, "ca", "ca.pem")
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(ca); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(ca); err != nil {
		t.Skipf("no proxy CA at %s: paddockd did not start the proxy, so curl through it cannot be tested yet", ca)
	}
	curl := func(url string) (string, error) {
		return run([]string{"--ca-bundle", ca}, "curl", "-sS", "--max-time", "10", url)
	}
	out, err = curl("https://allowed.test/")
	if err != nil || !strings.Contains(out, "hello") {
		t.Errorf("allowed site not reached: %v\n%s", err, out)
	}
	out, err = curl("https://blocked.test/")
	if err == nil {
		t.Errorf("blocked site reached:\n%s", out)
	}
	w.AssertNoLeaks(t)
	// Every exit path detaches: paddockd holds no attachment afterwards.
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Errorf("runs left state behind: %v", ents)
	}
}

func exitStatus(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
