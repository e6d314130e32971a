package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
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

// startPaddockd runs a real paddockd (with its no-op enforcer) on a temp
// socket and state dir.
func startPaddockd(t *testing.T) string {
	t.Helper()
	bin := goBuild(t, "github.com/paddock-sandbox/paddock/cmd/paddockd")
	dir := t.TempDir()
	socket := filepath.Join(dir, "run", "paddockd.sock")
	cmd := exec.Command(bin, "--api-socket", socket, "--state-dir", filepath.Join(dir, "state"),
		"--log-dir", filepath.Join(dir, "log"), "--metrics-addr", "", "--resolver", "192.0.2.53:53")
	var stderr bytes.Buffer
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
	c := api.NewClient(socket)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := c.Status(t.Context()); err == nil {
			return socket
		}
		select {
		case <-done:
			t.Fatalf("paddockd exited:\n%s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("paddockd not up within 15s:\n%s", stderr.String())
		}
	}
}

func TestStatusAgainstPaddockd(t *testing.T) {
	socket := startPaddockd(t)
	sb := api.Sandbox{
		Network: "paddock-test", ContainerID: "0123456789abcdef0123", IfName: "eth0",
		HostVeth: "pdk0123", HostIfIndex: 4242,
		IPs: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24")}, Policy: "claude",
	}
	if _, err := api.NewClient(socket).Register(t.Context(), sb); err != nil {
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
	if rep.Status.Sandboxes != 1 || rep.Status.Redirect != "bpf" || rep.Status.Ready {
		t.Fatalf("status = %+v", rep.Status)
	}
	if len(rep.Sandboxes) != 1 || rep.Sandboxes[0].Key() != sb.Key() || rep.Sandboxes[0].Enforced != "not built yet" {
		t.Fatalf("sandboxes = %+v", rep.Sandboxes)
	}

	out.Reset()
	if err := status([]string{"--socket", socket}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	for _, want := range []string{"ready no (enforcer: not built yet)", "redirect:   bpf", "CONTAINER", "0123456789ab ", "pdk0123", "10.99.0.2/24", "claude", "not built yet"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, sb.ContainerID) {
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
