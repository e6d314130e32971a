package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/testutil"
	"github.com/paddock-sandbox/paddock/test/world"
)

func goBuild(t *testing.T, pkg string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if b, err := exec.Command(goBin, "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// startPaddockd runs a freshly built paddockd inside a world's node
// namespace (its policy routing, nftables table and BPF pins must never land
// in the root namespace), waits until it is ready and returns the world and
// the API socket. Skips unless root.
func startPaddockd(t *testing.T) (*world.World, string) {
	t.Helper()
	w := world.New(t, world.Options{})
	for _, f := range []string{"paddock", "host-local"} {
		if _, err := os.Stat(filepath.Join(w.CNIPath(), f)); err != nil {
			t.Skipf("needs the CNI plugins in %s: run `make build` first (or set PADDOCK_BIN)", w.CNIPath())
		}
	}
	for _, name := range []string{"default", "claude"} {
		if err := w.WritePolicy(name, "dns: allowlist\negress:\n  - domains: [allowed.test]\n"); err != nil {
			t.Fatal(err)
		}
	}
	bin := goBuild(t, "github.com/paddock-sandbox/paddock/cmd/paddockd")
	args := append([]string{"--net=" + w.NodePath(), "--", bin}, w.DefaultDaemonFlags()...)
	args = append(args, "--metrics-addr", "", "--proxy-metrics-addr", "")
	cmd := exec.Command("nsenter", args...)
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	socket := w.DaemonSocket()
	c := api.NewClient(socket)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if st, err := c.Status(t.Context()); err == nil && st.Ready {
			return w, socket
		}
		select {
		case <-done:
			t.Fatalf("paddockd exited:\n%s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("paddockd not ready within 15s:\n%s", stderr.String())
		}
	}
}

func TestStatusAgainstPaddockd(t *testing.T) {
	w, socket := startPaddockd(t)
	const containerID = "0123456789abcdef0123"
	sb, err := w.AddSandbox(t, "agent", world.SandboxOptions{Policy: "claude", ContainerID: containerID})
	if err != nil {
		t.Fatal(err)
	}

	var out, errb bytes.Buffer
	if err := status([]string{"--socket", socket, "--json"}, &out, &errb); err != nil {
		t.Fatalf("status --json: %v\n%s", err, errb.String())
	}
	var rep struct {
		Status    api.Status          `json:"status"`
		Sandboxes []api.SandboxStatus `json:"sandboxes"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("status --json is not one JSON document: %v\n%s", err, out.String())
	}
	if rep.Status.Sandboxes != 1 || rep.Status.Redirect != "bpf" || !rep.Status.Ready {
		t.Fatalf("status = %+v", rep.Status)
	}
	if len(rep.Sandboxes) != 1 || rep.Sandboxes[0].ContainerID != containerID || rep.Sandboxes[0].Enforced != "ok" ||
		rep.Sandboxes[0].HostVeth != sb.HostVeth || rep.Sandboxes[0].Policy != "claude" {
		t.Fatalf("sandboxes = %+v", rep.Sandboxes)
	}

	out.Reset()
	if err := status([]string{"--socket", socket}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	for _, want := range []string{"ready yes\n", "redirect:   bpf", "bpf: ok", "nftables: ok", "proxy: ok", "CONTAINER",
		containerID[:12] + " ", sb.HostVeth, sb.IP.String() + "/", "claude", " ok\n"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, containerID) {
		t.Errorf("table shows the full container id, want 12 characters:\n%s", table)
	}
}

func TestStatusUnreachable(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "absent.sock")
	err := status([]string{"--socket", socket}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), socket) || !strings.Contains(err.Error(), "start paddockd") {
		t.Fatalf("err = %v, want the socket named and a hint to start paddockd", err)
	}

	// The CLI turns it into exit status 1 with the message on stderr.
	cmd := exec.Command(goBuild(t, "github.com/paddock-sandbox/paddock/cmd/paddock"), "status", "--socket", socket)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), socket) {
		t.Fatalf("paddock status: %v, stderr %q; want exit 1 naming %s", err, stderr.String(), socket)
	}
}

func TestStatusRejectsArguments(t *testing.T) {
	if err := status([]string{"extra"}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("status accepted a positional argument")
	}
}
