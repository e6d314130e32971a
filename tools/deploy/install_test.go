package deploy_test

import (
	"bytes"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// repoRoot is the module root, two levels up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// buildBin stages what `make build` produces: the real paddock CLI (the cni
// commands run from it below) and stand-ins for paddockd and the plugin,
// which install only copies.
func buildBin(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(bin, "paddock"), "./cmd/paddock")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/paddock: %v\n%s", err, out)
	}
	if err := os.MkdirAll(filepath.Join(bin, "cni"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"paddockd", "cni/paddock"} {
		if err := os.WriteFile(filepath.Join(bin, f), []byte("#!/bin/sh\n# stand-in for "+f+"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

func run(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := run(t, dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// tree lists every file and directory under root as "mode /path", sorted.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, info.Mode().String()+" "+strings.TrimPrefix(p, root))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func sameTree(t *testing.T, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			t.Errorf("%s: unexpected %s", what, g)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: missing %s", what, w)
		}
	}
}

// withParents adds every parent directory of the files in paths, mode 0755.
func withParents(paths []string) []string {
	seen := map[string]bool{}
	for _, p := range paths {
		seen[strings.SplitN(p, " ", 2)[1]] = true
	}
	out := slices.Clone(paths)
	for _, p := range paths {
		for d := filepath.Dir(strings.SplitN(p, " ", 2)[1]); d != "/"; d = filepath.Dir(d) {
			if !seen[d] {
				seen[d] = true
				out = append(out, "drwxr-xr-x "+d)
			}
		}
	}
	slices.Sort(out)
	return out
}

// operatorData is the operator's configuration and data: install creates
// it, uninstall keeps it.
var operatorData = []string{
	"drwxr-xr-x /etc/paddock",
	"-rw-r--r-- /etc/paddock/paddockd.yaml",
	"drwxr-xr-x /etc/paddock/policies",
	"-rw-r--r-- /etc/paddock/policies/default.yaml",
	"drwx------ /etc/paddock/secrets",
	"drwx--x--x /var/lib/paddock",
	"drwxr-x--- /var/log/paddock",
}

var installed = withParents(append([]string{
	"-rwxr-xr-x /usr/local/bin/paddock",
	"-rwxr-xr-x /usr/local/sbin/paddockd",
	"-rwxr-xr-x /opt/cni/bin/paddock",
	"-rw-r--r-- /usr/local/lib/systemd/system/paddockd.service",
	"-rw-r--r-- /usr/local/lib/sysusers.d/paddock.conf",
	"-rw-r--r-- /usr/local/lib/tmpfiles.d/paddock.conf",
}, operatorData...))

// kept is what uninstall leaves: the operator's configuration and data, and
// the directories paddock's files were installed into.
var kept = withParents(append([]string{
	"drwxr-xr-x /usr/local/bin",
	"drwxr-xr-x /usr/local/sbin",
	"drwxr-xr-x /opt/cni/bin",
	"drwxr-xr-x /usr/local/lib/systemd/system",
	"drwxr-xr-x /usr/local/lib/sysusers.d",
	"drwxr-xr-x /usr/local/lib/tmpfiles.d",
}, operatorData...))

func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	repo, bin := repoRoot(t), buildBin(t)
	dest := t.TempDir()
	setUmask(t)
	make := func(target string, env ...string) (string, error) {
		return run(t, repo, env, "make", "-s", target, "DESTDIR="+dest, "BIN="+bin)
	}

	out, err := make("install")
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	sameTree(t, "after make install", tree(t, dest), installed)
	for _, want := range []string{"systemd-sysusers /usr/local/lib/sysusers.d/paddock.conf", "useradd --system --no-create-home", "systemctl daemon-reload"} {
		if !strings.Contains(out, want) {
			t.Errorf("a staged install should print %q for the target:\n%s", want, out)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "usr/local/lib/systemd/system/paddockd.service"))
	if !bytes.Contains(unit, []byte("ExecStart=/usr/local/sbin/paddockd --config /etc/paddock/paddockd.yaml\n")) || bytes.Contains(unit, []byte("@SBINDIR@")) {
		t.Errorf("unit's ExecStart not substituted:\n%s", unit)
	}
	if tmpfiles, _ := os.ReadFile(filepath.Join(dest, "usr/local/lib/tmpfiles.d/paddock.conf")); !bytes.Contains(tmpfiles, []byte("d /etc/paddock/secrets  0700 paddock-proxy paddock-proxy -")) {
		t.Errorf("tmpfiles.d does not hand the secrets dir to the proxy user:\n%s", tmpfiles)
	}

	// A second install keeps the operator's edits to the configuration.
	conf := filepath.Join(dest, "etc/paddock/paddockd.yaml")
	if err := os.WriteFile(conf, []byte("proxy-user: 64000:64000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := make("install"); err != nil {
		t.Fatalf("second make install: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(conf); string(b) != "proxy-user: 64000:64000\n" {
		t.Errorf("make install overwrote the operator's paddockd.yaml: %q", b)
	}
	sameTree(t, "after a second make install", tree(t, dest), installed)

	// The installed CLI chains paddock onto a ptp network and Calico's,
	// writes the standalone one, and refuses podman's bridge network.
	netd := filepath.Join(dest, "etc/cni/net.d")
	if err := os.MkdirAll(netd, 0o755); err != nil {
		t.Fatal(err)
	}
	fixtures := filepath.Join(repo, "plugin/conflist/testdata")
	for _, f := range []string{"20-ptp.conflist", "10-calico.conflist", "87-podman-bridge.conflist"} {
		b, err := os.ReadFile(filepath.Join(fixtures, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(netd, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := tree(t, netd)
	beforeBytes := contents(t, netd)
	cli := filepath.Join(dest, "usr/local/bin/paddock")
	flags := []string{"--conf-dir", netd, "--bin-dir", filepath.Join(dest, "opt/cni/bin")}
	for _, network := range []string{"ptp-net", "k8s-pod-network"} {
		mustRun(t, repo, nil, cli, append([]string{"cni", "install", "--chain", network}, flags...)...)
	}
	if out, err := run(t, repo, nil, cli, append([]string{"cni", "install", "--chain", "podman"}, flags...)...); err == nil || !strings.Contains(out, `primary plugin is "bridge"`) {
		t.Errorf("cni install --chain podman (a bridge network): err %v, want a refusal naming the bridge primary\n%s", err, out)
	}
	mustRun(t, repo, nil, cli, append([]string{"cni", "install", "--policy", "ci"}, flags...)...)
	sameTree(t, "after cni install", tree(t, netd), []string{
		"-rw-r--r-- /10-calico.conflist",
		"-rw-r--r-- /10-calico.conflist.paddock-backup",
		"-rw-r--r-- /10-paddock.conflist",
		"-rw-r--r-- /20-ptp.conflist",
		"-rw-r--r-- /20-ptp.conflist.paddock-backup",
		"-rw-r--r-- /87-podman-bridge.conflist",
	})

	// uninstall refuses while a conflist still names the plugin.
	out, err = make("uninstall")
	if err == nil || !strings.Contains(out, "paddock cni uninstall") {
		t.Errorf("make uninstall with paddock still in a conflist: err %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dest, "opt/cni/bin/paddock")); err != nil {
		t.Errorf("refused uninstall removed the plugin: %v", err)
	}

	for _, network := range []string{"ptp-net", "k8s-pod-network", ""} {
		mustRun(t, repo, nil, cli, append([]string{"cni", "uninstall", "--chain", network}, flags...)...)
	}
	sameTree(t, "after cni uninstall", tree(t, netd), before)
	if got := contents(t, netd); !maps.Equal(got, beforeBytes) {
		t.Errorf("cni uninstall did not restore the conflists byte for byte")
	}
	if err := os.RemoveAll(filepath.Join(dest, "etc/cni")); err != nil {
		t.Fatal(err)
	}

	out, err = make("uninstall")
	if err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	sameTree(t, "after make uninstall", tree(t, dest), kept)
	if !strings.Contains(out, "kept: /etc/paddock") {
		t.Errorf("make uninstall does not say what it kept:\n%s", out)
	}
}

// TestMakeInstallPaths checks that PREFIX and CNI_BIN_DIR move the files.
func TestMakeInstallPaths(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	repo, bin := repoRoot(t), buildBin(t)
	dest := t.TempDir()
	setUmask(t)
	mustRun(t, repo, nil, "make", "-s", "install", "DESTDIR="+dest, "BIN="+bin, "PREFIX=/usr", "CNI_BIN_DIR=/usr/libexec/cni")
	for _, f := range []string{"usr/bin/paddock", "usr/sbin/paddockd", "usr/libexec/cni/paddock", "usr/lib/systemd/system/paddockd.service"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("PREFIX=/usr CNI_BIN_DIR=/usr/libexec/cni: %v", err)
		}
	}
	if unit, _ := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/paddockd.service")); !bytes.Contains(unit, []byte("ExecStart=/usr/sbin/paddockd ")) {
		t.Errorf("ExecStart does not follow PREFIX")
	}
	out, err := run(t, repo, nil, "make", "-s", "install", "DESTDIR="+dest, "BIN="+t.TempDir())
	if err == nil || !strings.Contains(out, "make build") {
		t.Errorf("install without a build: err %v, want a hint to run make build\n%s", err, out)
	}
}

func contents(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = string(b)
	}
	return m
}

// setUmask gives make the usual 022, so parent directories come out 0755.
func setUmask(t *testing.T) {
	old := syscall.Umask(0o022)
	t.Cleanup(func() { syscall.Umask(old) })
}

// TestCNIInstallRefusals runs paddock cni install with bad input: each run
// fails with a message naming the problem and leaves both directories as
// they were (no plugin copied, no conflist touched).
func TestCNIInstallRefusals(t *testing.T) {
	repo, bin := repoRoot(t), buildBin(t)
	cli := filepath.Join(bin, "paddock")
	netd, cniBin := t.TempDir(), t.TempDir()
	for _, f := range []string{"87-podman-bridge.conflist", "20-ptp.conflist", "99-single.conf"} {
		b, err := os.ReadFile(filepath.Join(repo, "plugin/conflist/testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(netd, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := contents(t, netd)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"single-plugin conf", []string{"--chain", "single"}, "99-single.conf"},
		{"unknown network", []string{"--chain", "nope"}, `no network "nope"`},
		{"bridge primary", []string{"--chain", "podman"}, `primary plugin is "bridge"`},
		{"bad policy", []string{"--chain", "ptp-net", "--policy", "Has Spaces"}, `--policy "Has Spaces"`},
		{"relative socket", []string{"--chain", "ptp-net", "--socket", "run/x.sock"}, "not an absolute path"},
		{"ipv6 subnet", []string{"--subnet", "2001:db8::/64"}, "--subnet"},
		{"stray argument", []string{"--chain", "ptp-net", "extra"}, `unexpected argument "extra"`},
		{"missing plugin", []string{"--chain", "ptp-net", "--copy-binary", filepath.Join(bin, "nonexistent")}, "nonexistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"cni", "install", "--conf-dir", netd, "--bin-dir", cniBin, "--copy-binary", cli}, tc.args...)
			out, err := run(t, repo, nil, cli, args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("err %v, want a message with %q:\n%s", err, tc.want, out)
			}
			if got := contents(t, netd); !maps.Equal(got, before) {
				t.Errorf("conf dir changed")
			}
			if ents, _ := os.ReadDir(cniBin); len(ents) != 0 {
				t.Errorf("bin dir holds %d files after a refused install", len(ents))
			}
		})
	}
}
