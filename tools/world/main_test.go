package main

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/paddock-sandbox/paddock/test/world"
)

// The command brings a world up for humans, serves it from a background
// child, and takes everything down again.
func TestUpExecDown(t *testing.T) {
	world.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "world")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	name := "t" + rand.Text()[:4]
	name = strings.ToLower(name)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("up", "-name", name); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = run("down", "-name", name) })
	if out, err := run("up", "-name", name); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("second up: %v\n%s", err, out)
	}
	out, err := run("status", "-name", name)
	if err != nil || !strings.Contains(out, "serve") || !strings.Contains(out, "running") || !strings.Contains(out, "leaks: none") {
		t.Errorf("status: %v\n%s", err, out)
	}
	ca := filepath.Join(stateRoot, name, "upstream-ca.pem")
	out, err = run("exec", "-name", name, "node", "--", "curl", "-sS", "--max-time", "5", "--cacert", ca, "--resolve", "allowed.test:443:192.0.2.10", "https://allowed.test/")
	if err != nil || out != "hello from allowed.test\n" {
		t.Errorf("curl from node: %v\n%s", err, out)
	}
	if out, err := run("exec", "-name", name, "nowhere", "--", "true"); err == nil {
		t.Errorf("exec in an unknown namespace succeeded:\n%s", out)
	}
	if out, err := run("down", "-name", name); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	list, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(list), "pw"+name+"-") {
		t.Errorf("namespaces left after down:\n%s", list)
	}
	for _, p := range []string{statePath(name), filepath.Join(stateRoot, name)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after down", p)
		}
	}
}
