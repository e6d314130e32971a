package test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
	"github.com/vishvananda/netlink"
)

// crictlModule is the crictl the CRI tests drive containerd with; it is
// built from the Go module proxy into the test's temp dir, outside paddock's
// module so go.mod stays as it is.
const crictlModule = "sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0"

// criImage serves as the pause image and as every container's image:
// busybox-static (which sleeps as the sandbox's pause process) plus curl and
// the libraries it links, all copied from this machine.
const criImage = "paddock.test/cri:1"

// criTimeout bounds one crictl or ctr call.
const criTimeout = 90 * time.Second

// criEnv is a containerd running inside a world's node namespace with
// everything private: root, state, socket, CNI configuration and plugins.
type criEnv struct {
	w         *world.World
	dir       string
	socket    string
	crictl    string
	cgroup    string // the pods' cgroup parent, unique to the test
	verbLog   string // one line per CNI call the wrapper plugin saw
	crictlCfg string
	chained   bool // paddock runs after ptp in the conflist
	proc      *exec.Cmd
	exited    chan struct{}
	logFile   *os.File
}

// requireContainerd skips unless containerd, ctr, runc, the runc shim and
// busybox-static are installed (Debian: containerd busybox-static).
func requireContainerd(t *testing.T) {
	t.Helper()
	for _, b := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("containerd CRI tests need %s: apt-get install containerd (%v)", b, err)
		}
	}
	if !staticBinary("/bin/busybox") {
		t.Skip("containerd CRI tests build their image from a static /bin/busybox: apt-get install busybox-static")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("containerd CRI tests copy curl into their image: apt-get install curl")
	}
}

// staticBinary reports whether path is an ELF without a program
// interpreter, so it runs in an image without libraries.
func staticBinary(path string) bool {
	out, err := exec.Command("ldd", path).CombinedOutput()
	return err != nil && strings.Contains(string(out), "not a dynamic executable")
}

// goTool runs the go command (from PATH, else /usr/local/go) in dir.
func goTool(t *testing.T, dir string, env []string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// buildCRITools builds crictl (outside the module, with go install) and the
// loopback CNI plugin containerd calls for every pod into dir.
func buildCRITools(t *testing.T, dir string) (crictl, loopback string) {
	t.Helper()
	crictl, loopback = filepath.Join(dir, "crictl"), filepath.Join(dir, "loopback")
	goTool(t, os.TempDir(), []string{"GOBIN=" + dir, "GOFLAGS=", "GO111MODULE=on", "GOWORK=off"}, "install", crictlModule)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	goTool(t, filepath.Dir(wd), nil, "build", "-o", loopback, "github.com/containernetworking/plugins/plugins/main/loopback")
	return crictl, loopback
}

// buildImage writes criImage as a docker-archive tar (what `docker save`
// writes and `ctr images import` reads) to path.
func buildImage(t *testing.T, path string) {
	t.Helper()
	layer, err := imageLayer()
	if err != nil {
		t.Fatalf("image layer: %v", err)
	}
	sum := sha256.Sum256(layer)
	diffID := "sha256:" + hex.EncodeToString(sum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/bin:/bin"},
			"Entrypoint": []string{"/bin/sleep", "2147483647"},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]string{{"created_by": "paddock test: busybox-static and curl from the host"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   "config.json",
		"RepoTags": []string{criImage},
		"Layers":   []string{"layer.tar"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		data []byte
	}{{"layer.tar", layer}, {"config.json", config}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// lddPath matches the library paths in ldd's output.
var lddPath = regexp.MustCompile(`(?m)(/\S+) \(0x`)

// curlAndLibs returns the host's curl and every library ldd names for it:
// what a container root (the CRI image, the podman rootfs) needs to run it.
func curlAndLibs() (curl string, libs []string, err error) {
	curl, err = exec.LookPath("curl")
	if err != nil {
		return "", nil, err
	}
	out, err := exec.Command("ldd", curl).Output()
	if err != nil {
		return "", nil, fmt.Errorf("ldd %s: %w", curl, err)
	}
	for _, m := range lddPath.FindAllStringSubmatch(string(out), -1) {
		libs = append(libs, m[1])
	}
	return curl, libs, nil
}

// imageLayer is the image's only layer: busybox with the applets the tests
// use, curl and every library ldd names for it, and empty mount points.
func imageLayer() ([]byte, error) {
	curl, libs, err := curlAndLibs()
	if err != nil {
		return nil, err
	}
	files := map[string]string{"bin/busybox": "/bin/busybox", "usr/bin/curl": curl}
	for _, lib := range libs {
		files[strings.TrimPrefix(lib, "/")] = lib
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addDir := func(d string) error {
		var parts []string
		for _, p := range strings.Split(d, "/") {
			parts = append(parts, p)
			name := strings.Join(parts, "/")
			if dirs[name] {
				continue
			}
			dirs[name] = true
			if err := tw.WriteHeader(&tar.Header{Name: name + "/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range []string{"etc", "tmp", "proc", "sys", "dev", "paddock-ca"} {
		if err := addDir(d); err != nil {
			return nil, err
		}
	}
	for name, src := range files {
		data, err := os.ReadFile(src) // follows the library's symlinks
		if err != nil {
			return nil, err
		}
		if err := addDir(filepath.Dir(name)); err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	for _, applet := range []string{"sh", "sleep", "cat", "ls", "ping"} {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// containerdConfig is containerd 1.6's configuration (version 2 format)
// for a contained CRI: nothing under the host's /var/lib, /run or /opt, the
// native snapshotter (overlayfs over a temp dir is not a given), and no
// oom_score_adj below the daemon's own (the VM lacks CAP_SYS_RESOURCE).
var containerdConfig = template.Must(template.New("config.toml").Parse(`version = 2
root = "{{.Dir}}/root"
state = "{{.Dir}}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Dir}}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.Image}}"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.BinDir}}"
    conf_dir = "{{.ConfDir}}"
    max_conf_num = 1
`))

// verbWrapper is the CNI plugin containerd calls as "paddock": it logs the
// verb, the container id, the netns and whether a prevResult came on stdin,
// then hands the same input to the real plugin.
const verbWrapper = `#!/bin/sh
in=$(cat)
prev=no
case "$in" in *'"prevResult"'*) prev=yes ;; esac
echo "$CNI_COMMAND $CNI_CONTAINERID netns=$CNI_NETNS prevResult=$prev" >> '%s'
printf '%%s' "$in" | exec '%s' "$@"
`

// startContainerd builds the tools and the image, then runs containerd in
// the world's node namespace: nsenter --net (ip netns exec would hide
// /sys/fs/cgroup) and a private mount namespace with tmpfs over
// /var/run/netns, /var/lib/cni and /run/containerd, so neither the host's
// containerd state nor its namespaces are touched. conflist is the paddock
// network containerd configures every pod with.
func startContainerd(t *testing.T, w *world.World, conflist []byte) *criEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "paddock-cri-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &criEnv{
		w:         w,
		dir:       dir,
		socket:    filepath.Join(dir, "containerd.sock"),
		cgroup:    "/paddock-" + w.Prefix,
		verbLog:   filepath.Join(dir, "cni-verbs.log"),
		crictlCfg: filepath.Join(dir, "crictl.yaml"),
	}
	binDir, confDir := filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf")
	for _, d := range []string{binDir, confDir, filepath.Join(dir, "tools"), filepath.Join(dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var loopback string
	e.crictl, loopback = buildCRITools(t, filepath.Join(dir, "tools"))
	if err := os.Rename(loopback, filepath.Join(binDir, "loopback")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"host-local", "ptp"} {
		if _, err := os.Stat(filepath.Join(w.CNIPath(), p)); err != nil {
			t.Skipf("containerd CRI tests need %s: run `make build` first (or set PADDOCK_BIN)", filepath.Join(w.CNIPath(), p))
		}
		if err := os.Symlink(filepath.Join(w.CNIPath(), p), filepath.Join(binDir, p)); err != nil {
			t.Fatal(err)
		}
	}
	wrapper := fmt.Sprintf(verbWrapper, e.verbLog, filepath.Join(w.CNIPath(), "paddock"))
	if err := os.WriteFile(filepath.Join(binDir, "paddock"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-paddock.conflist"), conflist, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.toml")
	f, err := os.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = containerdConfig.Execute(f, map[string]string{"Dir": dir, "Socket": e.socket, "Image": criImage, "BinDir": binDir, "ConfDir": confDir})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	crictlYAML := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n", e.socket, e.socket)
	if err := os.WriteFile(e.crictlCfg, []byte(crictlYAML), 0o644); err != nil {
		t.Fatal(err)
	}

	script := `set -e
for d in /var/run/netns /var/lib/cni /run/containerd; do mkdir -p "$d"; mount -t tmpfs -o mode=0755 tmpfs "$d"; done
exec containerd --config "$1"`
	if e.logFile, err = os.Create(filepath.Join(dir, "containerd.log")); err != nil {
		t.Fatal(err)
	}
	e.proc = exec.Command("nsenter", "--net="+w.NodePath(), "--", "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "containerd", cfg)
	e.proc.Stdout, e.proc.Stderr = e.logFile, e.logFile
	if err := e.proc.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	e.exited = make(chan struct{})
	go func() { _ = e.proc.Wait(); close(e.exited) }()
	t.Cleanup(func() { e.stop(t) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := e.ctr(context.Background(), "version"); err == nil {
			break
		}
		select {
		case <-e.exited:
			t.Fatalf("containerd exited at start:\n%s", e.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer on %s within 30s:\n%s", e.socket, e.log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	img := filepath.Join(dir, "image.tar")
	buildImage(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), criTimeout)
	defer cancel()
	version, err := e.ctr(ctx, "version")
	if err != nil {
		t.Fatalf("ctr version: %v: %s", err, version)
	}
	t.Logf("containerd: %s", strings.Join(strings.Fields(string(version)), " "))
	importArgs := []string{"-n", "k8s.io", "images", "import", "--snapshotter", "native"}
	if regexp.MustCompile(`Version:\s+v?2\.`).Match(version) {
		// 2.x imports through the transfer service by default, which
		// does not unpack for the CRI's snapshotter here.
		importArgs = append(importArgs, "--local")
	}
	if out, err := e.ctr(ctx, append(importArgs, img)...); err != nil {
		t.Fatalf("ctr images import: %v\n%s\ncontainerd log:\n%s", err, out, e.log())
	}
	return e
}

// stop removes every pod containerd still has, stops it, and removes the
// pods' cgroup parent.
func (e *criEnv) stop(t *testing.T) {
	select {
	case <-e.exited:
	default:
		ctx, cancel := context.WithTimeout(context.Background(), criTimeout)
		if out, err := e.crictlRun(ctx, "rmp", "--all", "--force"); err != nil {
			t.Errorf("crictl rmp --all: %v: %s", err, out)
		}
		cancel()
		_ = e.proc.Process.Signal(os.Interrupt)
		select {
		case <-e.exited:
		case <-time.After(20 * time.Second):
			_ = e.proc.Process.Kill()
			<-e.exited
		}
	}
	// Shims outlive containerd by design; with the pods removed theirs
	// have exited, but a failed test may leave one: end those serving this
	// containerd's socket, by pid.
	for _, pid := range shimsOf(e.socket) {
		t.Logf("killing leftover shim %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	e.logFile.Close()
	if t.Failed() {
		t.Logf("containerd log:\n%s", e.log())
	}
	for _, root := range cgroupRoots() {
		removeCgroup(filepath.Join(root, e.cgroup))
	}
}

// shimsOf lists the pids of the processes whose command line names socket.
func shimsOf(socket string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", en.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte("containerd-shim")) && bytes.Contains(b, []byte(socket+"\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cgroupRoots lists the mounted cgroup hierarchies.
func cgroupRoots() []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var roots []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
			roots = append(roots, f[1])
		}
	}
	return roots
}

// removeCgroup removes dir and its (empty) children, deepest first.
func removeCgroup(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, en := range entries {
		if en.IsDir() {
			removeCgroup(filepath.Join(dir, en.Name()))
		}
	}
	_ = os.Remove(dir)
}

func (e *criEnv) log() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "containerd.log"))
	return string(criTail(b, 8000))
}

func criTail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (e *criEnv) ctr(ctx context.Context, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, "ctr", append([]string{"--address", e.socket}, args...)...).CombinedOutput()
}

// crictlArgs is nsenter's command line for crictl args: crictl runs in
// node, because exec streams through containerd's stream server, which
// listens on node's loopback.
func (e *criEnv) crictlArgs(args ...string) []string {
	return append([]string{"--net=" + e.w.NodePath(), "--", e.crictl, "--config", e.crictlCfg}, args...)
}

// crictlRun runs crictl against this containerd; stdout only, stderr in
// the error.
func (e *criEnv) crictlRun(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", e.crictlArgs(args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), err
}

func (e *criEnv) mustCrictl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), criTimeout)
	defer cancel()
	out, err := e.crictlRun(ctx, args...)
	if err != nil {
		t.Fatalf("%v\ncontainerd log:\n%s", err, e.log())
	}
	return out
}

// podSpec is what crictl runp reads: a pod in namespace ns named name, in
// the test's cgroup parent, resolving through the world's DNS server.
func (e *criEnv) podSpec(t *testing.T, ns, name string, annotations map[string]string) string {
	t.Helper()
	spec := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": ns, "uid": name + "-uid", "attempt": 0},
		"log_directory": filepath.Join(e.dir, "logs", ns+"-"+name),
		"dns_config":    map[string]any{"servers": []string{"192.0.2.53"}},
		"annotations":   annotations,
		"linux":         map[string]any{"cgroup_parent": e.cgroup},
	}
	return e.writeJSON(t, "pod-"+ns+"-"+name+".json", spec)
}

// containerSpec runs sleep in criImage with the paddock CA certificate
// (not its key, which sits beside it in caDir) mounted at
// /paddock-ca/ca.pem.
func (e *criEnv) containerSpec(t *testing.T, name, caDir string) string {
	t.Helper()
	spec := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": criImage},
		"command":  []string{"/bin/sleep", "3600"},
		"log_path": name + ".log",
		"mounts":   []map[string]any{{"container_path": "/paddock-ca/ca.pem", "host_path": filepath.Join(caDir, "ca.pem"), "readonly": true}},
		"linux":    map[string]any{},
	}
	return e.writeJSON(t, "ctr-"+name+".json", spec)
}

func (e *criEnv) writeJSON(t *testing.T, name string, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// cniVerb is one call the wrapper plugin recorded.
type cniVerb struct {
	Command, ContainerID, Netns string
	PrevResult                  bool
}

// verbLogLines returns the lines a verb-logging wrapper plugin (CRI's and
// podman's) wrote to path, none when it has not been called yet.
func verbLogLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// verbs returns the CNI calls containerd made to paddock so far.
func (e *criEnv) verbs(t *testing.T) []cniVerb {
	t.Helper()
	var out []cniVerb
	for _, l := range verbLogLines(t, e.verbLog) {
		f := strings.Fields(l)
		if len(f) != 4 {
			continue
		}
		out = append(out, cniVerb{Command: f[0], ContainerID: f[1], Netns: strings.TrimPrefix(f[2], "netns="), PrevResult: f[3] == "prevResult=yes"})
	}
	return out
}

// inspectPod is the part of `crictl inspectp` the tests read.
type inspectPod struct {
	Status struct {
		ID      string `json:"id"`
		State   string `json:"state"`
		Network struct {
			IP string `json:"ip"`
		} `json:"network"`
	} `json:"status"`
	Info struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	} `json:"info"`
}

func (e *criEnv) inspectp(t *testing.T, id string) inspectPod {
	t.Helper()
	out := e.mustCrictl(t, "inspectp", "-o", "json", id)
	var p inspectPod
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("crictl inspectp %s: %v: %s", id, err, out)
	}
	return p
}

// netns is the pod's network namespace path, as containerd passed it to CNI.
func (p inspectPod) netns() string {
	for _, n := range p.Info.RuntimeSpec.Linux.Namespaces {
		if n.Type == "network" {
			return n.Path
		}
	}
	return ""
}

// execIn runs argv in container id; stdout and stderr together.
func (e *criEnv) execIn(id string, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", e.crictlArgs(append([]string{"exec", id}, argv...)...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// linkInNode reports whether node holds a link named name.
func linkInNode(t *testing.T, w *world.World, name string) bool {
	t.Helper()
	found := false
	err := w.InNode(func() error {
		_, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		switch {
		case err == nil:
			found = true
		case errors.As(err, &nf):
		default:
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("look up link %s in node: %v", name, err)
	}
	return found
}
