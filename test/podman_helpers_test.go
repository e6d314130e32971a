package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/world"
)

// podmanEnv is Debian 12's podman 4.3.1 (CNI backend) run inside a world's
// node namespace with storage, run root, containers.conf, CNI plugin dir
// and conflist dir of its own, so the host's podman state, networks and
// root namespace are never touched.
type podmanEnv struct {
	w       *world.World
	d       *world.Daemon
	dir     string
	conf    string // containers.conf, named by CONTAINERS_CONF
	rootfs  string // busybox-static + curl, run with --rootfs
	netDir  string // network_config_dir: the conflists podman reads
	cniDir  string // cni_plugin_dirs: the verb-logging paddock wrapper and links to bin/cni
	ipamDir string // host-local's dataDir
	verbLog string
}

// podmanNetwork is the name of the paddock network podman attaches
// containers to.
func (e *podmanEnv) network() string { return e.w.Prefix + "-pm" }

// podmanVerbWrapper is the plugin podman calls as "paddock": it logs the
// verb, container id, netns, CNI_ARGS and whether a prevResult came on
// stdin, then hands the same input to the real plugin.
const podmanVerbWrapper = `#!/bin/sh
in=$(cat)
prev=no
case "$in" in *'"prevResult"'*) prev=yes ;; esac
echo "$CNI_COMMAND $CNI_CONTAINERID netns=$CNI_NETNS prevResult=$prev args=$CNI_ARGS" >> '%s'
printf '%%s' "$in" | exec '%s' "$@"
`

// podmanContainersConf is the containers.conf podman reads. The DEL of a
// container whose process exits comes from `podman container cleanup`,
// which conmon spawns with a cut-down environment and flags that carry the
// network config dir but not the plugin dirs: it finds the plugins only
// because podman hands CONTAINERS_CONF on to conmon. The ulimits: podman
// raises nofile and nproc for root by default, and without
// CAP_SYS_RESOURCE (this VM) runc then fails with "error setting rlimits";
// even the hard limits podman itself runs under were refused.
const podmanContainersConf = `[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "cni"
cni_plugin_dirs = [%[1]q]
network_config_dir = %[2]q
default_network = %[3]q
`

// requirePodman skips unless podman and what the image is built from are
// installed (.ci/run installs them).
func requirePodman(t *testing.T) {
	t.Helper()
	for _, f := range []string{"podman", "conmon", "busybox", "curl"} {
		if _, err := exec.LookPath(f); err != nil {
			t.Skipf("needs %s: apt-get install --no-install-recommends podman busybox-static curl (see .ci/run)", f)
		}
	}
}

// newPodman builds a world with a ready paddockd, then the podman setup
// around it; plugins is the network's plugin list (cniVersion 1.0.0).
// Everything podman created is removed at the end of the test, before the
// world is torn down.
func newPodman(t *testing.T, policies map[string]string, plugins func(e *podmanEnv) []any) *podmanEnv {
	t.Helper()
	requirePodman(t)
	w := newWorld(t)
	for name, yaml := range policies {
		if err := w.WritePolicy(name, yaml); err != nil {
			t.Fatal(err)
		}
	}
	d := readyDaemon(t, w)
	dir, err := os.MkdirTemp("", w.Prefix+"-podman-")
	if err != nil {
		t.Fatal(err)
	}
	e := &podmanEnv{
		w: w, d: d, dir: dir,
		conf:    filepath.Join(dir, "containers.conf"),
		rootfs:  filepath.Join(dir, "rootfs"),
		netDir:  filepath.Join(dir, "net.d"),
		cniDir:  filepath.Join(dir, "cni"),
		ipamDir: filepath.Join(dir, "ipam"),
		verbLog: filepath.Join(dir, "cni-verbs.log"),
	}
	// Registered after the world's teardown, so it runs before it.
	t.Cleanup(func() { e.cleanup(t) })
	for _, d := range []string{e.netDir, e.cniDir, e.ipamDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"host-local", "ptp"} {
		if _, err := os.Stat(filepath.Join(w.CNIPath(), p)); err != nil {
			t.Skipf("needs %s: run `make build` first (or set PADDOCK_BIN)", filepath.Join(w.CNIPath(), p))
		}
		if err := os.Symlink(filepath.Join(w.CNIPath(), p), filepath.Join(e.cniDir, p)); err != nil {
			t.Fatal(err)
		}
	}
	wrapper := fmt.Sprintf(podmanVerbWrapper, e.verbLog, filepath.Join(w.CNIPath(), "paddock"))
	if err := os.WriteFile(filepath.Join(e.cniDir, "paddock"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(podmanContainersConf, e.cniDir, e.netDir, e.network())
	if err := os.WriteFile(e.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       e.network(),
		"plugins":    plugins(e),
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.netDir, e.network()+".conflist"), list, 0o644); err != nil {
		t.Fatal(err)
	}
	buildPodmanRootfs(t, e.rootfs)
	return e
}

// buildPodmanRootfs makes the container's root: busybox-static for a shell
// and sleep, curl with the shared libraries ldd names, and the system CA
// bundle dir (the tests pass --cacert anyway).
func buildPodmanRootfs(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev", "paddock-ca"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busybox, _ := exec.LookPath("busybox")
	podmanCopyFile(t, busybox, filepath.Join(root, "bin/busybox"))
	for _, a := range []string{"sh", "sleep", "cat", "ip"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	curl, libs, err := curlAndLibs()
	if err != nil {
		t.Fatal(err)
	}
	podmanCopyFile(t, curl, filepath.Join(root, "bin/curl"))
	for _, lib := range libs {
		podmanCopyFile(t, lib, filepath.Join(root, lib))
	}
	if out, err := exec.Command("cp", "-rL", "/etc/ssl", filepath.Join(root, "etc/ssl")).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc/ssl: %v: %s", err, out)
	}
}

func podmanCopyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// cmd is podman in node's network namespace (nsenter --net keeps the
// mount namespace, so /sys/fs/cgroup stays visible and the netns podman
// makes under /run/netns is one paddockd can open) with private storage.
// One piece of podman's state is not private: podman 4.3's CNI backend
// keeps libcni's result cache in /var/lib/cni/results, with no setting to
// move it; its entries go at DEL, and cleanup's `rm --all` DELs everything.
func (e *podmanEnv) cmd(ctx context.Context, env []string, args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + e.w.NodePath(), "podman",
		"--root", filepath.Join(e.dir, "storage"), "--runroot", filepath.Join(e.dir, "run"),
		"--tmpdir", filepath.Join(e.dir, "libpod-tmp"),
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"}, args...)
	c := exec.CommandContext(ctx, "nsenter", argv...)
	c.Env = append(append(os.Environ(), "CONTAINERS_CONF="+e.conf), env...)
	return c
}

// run runs podman with a bound and returns its trimmed stdout and stderr.
func (e *podmanEnv) run(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	c := e.cmd(ctx, env, args...)
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	out := strings.TrimSpace(stdout.String())
	if err != nil {
		return out, fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func (e *podmanEnv) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.run(nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runArgs are the `podman run` flags every test container gets: the
// paddock network, the world's DNS server (the DNS guard answers in its
// place), the paddock CA mounted read-only, the local rootfs.
func (e *podmanEnv) runArgs(name string, extra ...string) []string {
	args := []string{"run", "--name", name, "--network", e.network(), "--dns", world.DNSAddr.String(),
		"-v", e.d.CADir + ":/paddock-ca:ro"}
	return append(append(args, extra...), "--rootfs", e.rootfs)
}

// detach starts container name running `sleep seconds` and returns its id.
func (e *podmanEnv) detach(t *testing.T, name, seconds string) string {
	t.Helper()
	id := e.mustRun(t, append(e.runArgs(name, "-d"), "sleep", seconds)...)
	if len(id) != 64 {
		t.Fatalf("podman run -d %s printed %q, want a container id", name, id)
	}
	return id
}

// podmanCurl fetches https://host/ trusting the paddock CA.
func podmanCurl(host string) []string {
	return []string{"curl", "-sS", "-m", "10", "--cacert", "/paddock-ca/ca.pem", "https://" + host + "/"}
}

func (e *podmanEnv) expectReach(t *testing.T, id, host string) {
	t.Helper()
	out, err := e.run(nil, append([]string{"exec", id}, podmanCurl(host)...)...)
	if err != nil || !strings.Contains(out, "hello from "+host) {
		t.Errorf("container %.12s: curl %s: %v: %s", id, host, err, out)
	}
}

func (e *podmanEnv) expectRefused(t *testing.T, id, host string) {
	t.Helper()
	out, err := e.run(nil, append([]string{"exec", id}, podmanCurl(host)...)...)
	if err == nil || strings.Contains(out, "hello from") {
		t.Errorf("container %.12s reached %s, which its policy does not name: %v: %s", id, host, err, out)
	}
}

// podmanVerb is one call the wrapper plugin recorded.
type podmanVerb struct {
	Command, ContainerID, Netns, Args string
	PrevResult                        bool
}

func (v podmanVerb) String() string {
	return fmt.Sprintf("%s %.12s netns=%s prevResult=%v", v.Command, v.ContainerID, v.Netns, v.PrevResult)
}

// verbs returns the CNI calls podman made to paddock so far.
func (e *podmanEnv) verbs(t *testing.T) []podmanVerb {
	t.Helper()
	var out []podmanVerb
	for _, l := range verbLogLines(t, e.verbLog) {
		f := strings.SplitN(l, " ", 5)
		if len(f) != 5 {
			continue
		}
		out = append(out, podmanVerb{
			Command: f[0], ContainerID: f[1], Netns: strings.TrimPrefix(f[2], "netns="),
			PrevResult: f[3] == "prevResult=yes", Args: strings.TrimPrefix(f[4], "args="),
		})
	}
	return out
}

// verbsSince returns the calls after the first n, excluding VERSION (which
// podman sends before every ADD and DEL).
func (e *podmanEnv) verbsSince(t *testing.T, n int) []podmanVerb {
	t.Helper()
	var out []podmanVerb
	for _, v := range e.verbs(t)[n:] {
		if v.Command != "VERSION" {
			out = append(out, v)
		}
	}
	return out
}

// registration is paddockd's record of container id as `paddock status
// --json` shows it.
func (e *podmanEnv) registration(t *testing.T, id string) (api.SandboxStatus, bool) {
	t.Helper()
	return cliStatus(t, e.w).registered(api.Key{Network: e.network(), ContainerID: id, IfName: "eth0"})
}

func (e *podmanEnv) mustRegistration(t *testing.T, id string) api.SandboxStatus {
	t.Helper()
	sb, ok := e.registration(t, id)
	if !ok {
		t.Fatalf("container %.12s is not registered with paddockd: %+v", id, cliStatus(t, e.w).Sandboxes)
	}
	if sb.Enforced != "ok" || len(sb.IPs) != 1 {
		t.Fatalf("registration of %.12s: enforced %q, ips %v; want ok and one address", id, sb.Enforced, sb.IPs)
	}
	if out := e.sandboxIfs(t); !strings.Contains(out, `"`+sb.HostVeth+`"`) {
		t.Errorf("sandbox_ifs lacks host veth %s of container %.12s:\n%s", sb.HostVeth, id, out)
	}
	return sb
}

// assertGone checks that nothing of sb is left: registration, host veth in
// node, host-local lease, nftables elements (sandbox_ifs and the address
// sets). DEL may come from `podman container cleanup` after podman
// returned, so it waits a bounded while first.
func (e *podmanEnv) assertGone(t *testing.T, sb api.SandboxStatus) {
	t.Helper()
	ip := sb.IPs[0].Addr().String()
	lease := filepath.Join(e.ipamDir, e.network(), ip)
	gone := func() bool {
		_, registered := e.registration(t, sb.ContainerID)
		_, leased := os.Stat(lease)
		return !registered && errors.Is(leased, os.ErrNotExist) && !e.hasLink(t, sb.HostVeth)
	}
	if !waitFor(15*time.Second, gone) {
		_, registered := e.registration(t, sb.ContainerID)
		_, leased := os.Stat(lease)
		t.Errorf("container %.12s left state: registered %v, lease %s %v, host veth %s present %v",
			sb.ContainerID, registered, ip, leased, sb.HostVeth, e.hasLink(t, sb.HostVeth))
	}
	out, err := e.w.ExecNode("nft", "list", "table", "inet", "paddock")
	if err != nil {
		t.Fatalf("nft list table inet paddock: %v: %s", err, out)
	}
	for _, word := range []string{sb.HostVeth, ip} {
		if regexp.MustCompile(`(^|[^0-9.a-z])` + regexp.QuoteMeta(word) + `($|[^0-9a-z])`).Match(out) {
			t.Errorf("nftables still names %s of container %.12s:\n%s", word, sb.ContainerID, out)
		}
	}
}

// sandboxIfs is nftables' set of sandbox interfaces as `nft list set`
// prints it.
func (e *podmanEnv) sandboxIfs(t *testing.T) string {
	t.Helper()
	out, err := e.w.ExecNode("nft", "list", "set", "inet", "paddock", "sandbox_ifs")
	if err != nil {
		t.Fatalf("nft list set inet paddock sandbox_ifs: %v: %s", err, out)
	}
	return string(out)
}

// assertNoSandboxIfs checks that the set is empty once every container is
// gone.
func (e *podmanEnv) assertNoSandboxIfs(t *testing.T) {
	t.Helper()
	if out := e.sandboxIfs(t); strings.Contains(out, "elements") {
		t.Errorf("sandbox_ifs still has elements after every container is gone:\n%s", out)
	}
}

// hasLink reports whether node holds a link of that name.
func (e *podmanEnv) hasLink(t *testing.T, name string) bool {
	t.Helper()
	return linkInNode(t, e.w, name)
}

// cleanup removes every container (their DELs run while paddockd is still
// up) and the podman dir.
func (e *podmanEnv) cleanup(t *testing.T) {
	if out, err := e.run(nil, "rm", "--all", "--force", "--time", "0"); err != nil {
		t.Errorf("podman rm --all: %v: %s", err, out)
	}
	if b, err := os.ReadFile(e.verbLog); err == nil {
		t.Logf("CNI calls podman made to paddock:\n%s", b)
	}
	if err := os.RemoveAll(e.dir); err != nil {
		t.Errorf("remove %s: %v", e.dir, err)
	}
}
