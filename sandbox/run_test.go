package sandbox_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// paddockBin is the CLI under test: $PADDOCK_BIN/paddock when the Makefile
// built it, else built here once. probeDir holds the probe helper
// (testdata/probe), mounted into sandboxes at /probe.
var paddockBin, probeDir string

func TestMain(m *testing.M) {
	code := func() int {
		tmp, err := os.MkdirTemp("", "paddock-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(tmp)
		if err := os.Chmod(tmp, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		probeDir = tmp
		builds := [][]string{{"-o", filepath.Join(tmp, "probe"), "./testdata/probe"}}
		paddockBin = filepath.Join(os.Getenv("PADDOCK_BIN"), "paddock")
		if _, err := os.Stat(paddockBin); os.Getenv("PADDOCK_BIN") == "" || err != nil {
			paddockBin = filepath.Join(tmp, "paddock")
			builds = append(builds, []string{"-o", paddockBin, "github.com/paddock-sandbox/paddock/cmd/paddock"})
		}
		for _, b := range builds {
			if out, err := exec.Command("go", append([]string{"build"}, b...)...).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go build %v: %v\n%s", b, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("paddock run needs root (namespaces, cgroups, mounts): run the tests as root")
	}
}

type result struct {
	stdout, stderr string
	code           int
}

// env is a fresh workspace and state directory per test.
type env struct {
	t     *testing.T
	ws    string
	state string
}

func newEnv(t *testing.T) *env {
	needRoot(t)
	e := &env{t: t, ws: t.TempDir(), state: t.TempDir()}
	// The sandbox user must be able to read (and, for rw tests, write) it.
	if err := os.Chmod(e.ws, 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) paddock(args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return e.paddockCtx(ctx, args...)
}

// paddockCtx runs the paddock CLI in the workspace until it exits or ctx
// ends, returning its output and exit code; only failing to start it fails
// the test.
func (e *env) paddockCtx(ctx context.Context, args ...string) result {
	e.t.Helper()
	cmd := exec.CommandContext(ctx, paddockBin, args...)
	cmd.Dir = e.ws
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		e.t.Fatalf("paddock %v: %v", args, err)
	}
	return r
}

// startLine starts cmd (a paddock run that prints a line once its command
// is up) in the workspace and returns that first line; the caller kills and
// waits for it. A cmd that cannot start or prints no line is killed and
// fails the test.
func (e *env) startLine(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	cmd.Dir = e.ws
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("%v: no first line: %v", cmd.Args, err)
	}
	return line
}

// run runs a shell script in a --network none sandbox over the workspace.
func (e *env) run(flags []string, script string) result {
	e.t.Helper()
	args := append([]string{"run", "--network", "none", "--state-dir", e.state}, flags...)
	return e.paddock(append(args, "--", "sh", "-c", script)...)
}

func (e *env) write(rel, content string) {
	e.t.Helper()
	p := filepath.Join(e.ws, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func TestConfinementInside(t *testing.T) {
	e := newEnv(t)
	r := e.run(nil, `grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; id -u; cat /proc/self/uid_map`)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if strings.Contains(r.stdout, "4294967295") {
		t.Errorf("the command runs in the initial user namespace:\n%s", r.stdout)
	}
	for _, want := range []string{"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
		"CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2", "65534"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q in:\n%s", want, r.stdout)
		}
	}
}

func TestFilesystem(t *testing.T) {
	e := newEnv(t)
	e.write("file.txt", "data\n")
	// A top-level directory of the host that is not a system directory.
	other, err := os.MkdirTemp("/", "paddock-test-other-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	cases := []struct {
		name, script string
		flags        []string
		wantOK       bool
	}{
		{"root is read-only", `touch /newfile`, nil, false},
		{"etc is read-only", `echo x >> /etc/hostname`, nil, false},
		{"ro workspace", `echo x > file.txt`, nil, false},
		{"ro workspace new file", `touch new.txt`, nil, false},
		{"tmp writable", `echo x > /tmp/f && cat /tmp/f`, nil, true},
		{"tmp not executable", `cp /bin/true /tmp/t && chmod +x /tmp/t && /tmp/t`, nil, false},
		{"home writable", `echo x > "$HOME/f"`, nil, true},
		{"proc sys read-only", `echo 1 > /proc/sys/kernel/sysrq`, nil, false},
		{"sysrq-trigger read-only", `echo h > /proc/sysrq-trigger`, nil, false},
		{"paddock state hidden", `test -z "$(ls -A /var/lib/paddock 2>/dev/null)"`, nil, true},
		{"bpffs hidden", `test -z "$(ls -A /sys/fs/bpf 2>/dev/null)"`, nil, true},
		{"dev minimal", `test "$(ls /dev | sort | tr '\n' ' ')" = "core fd full null ptmx pts random shm stderr stdin stdout tty urandom zero "`, nil, true},
		{"dev null writable", `echo x > /dev/null`, nil, true},
		{"non-system top-level dirs hidden", `test ! -e ` + other, nil, true},
		{"home dirs hidden", `test -z "$(ls -A /home)"`, nil, true},
		{"host pids invisible", `test "$(ls -d /proc/[0-9]* | wc -l)" -lt 10`, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.run(c.flags, c.script)
			if (r.code == 0) != c.wantOK {
				t.Errorf("%s: exit %d (want success=%v)\nstdout: %s\nstderr: %s", c.script, r.code, c.wantOK, r.stdout, r.stderr)
			}
		})
	}
	if b, _ := os.ReadFile(filepath.Join(e.ws, "file.txt")); string(b) != "data\n" {
		t.Errorf("read-only workspace changed: %q", b)
	}
}

func TestPrivateMountOfAnotherUser(t *testing.T) {
	e := newEnv(t)
	// A 0700 tree owned by someone else: the init (root of the user
	// namespace) must still reach it, and only its owner reads it inside.
	dir := filepath.Join(t.TempDir(), "private")
	if err := os.MkdirAll(filepath.Join(dir, "inner"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "inner", "f"), []byte("owner-only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "inner"), filepath.Join(dir, "inner", "f")} {
		if err := os.Chown(p, 4321, 4321); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if r := e.run([]string{"--uid", "4321", "--mount", filepath.Join(dir, "inner") + ":/data"}, `cat /data/f`); r.code != 0 || r.stdout != "owner-only\n" {
		t.Errorf("owner could not read its mount: %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := e.run([]string{"--mount", filepath.Join(dir, "inner") + ":/data"}, `cat /data/f`); r.code == 0 {
		t.Errorf("uid 65534 read another user's 0600 file: %q", r.stdout)
	}
}

func TestRWWorkspace(t *testing.T) {
	e := newEnv(t)
	if err := os.Chown(e.ws, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	r := e.run([]string{"--workspace", e.ws + ":rw", "--uid", "65534"}, `echo hello > out.txt`)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(e.ws, "out.txt")); string(b) != "hello\n" {
		t.Errorf("rw workspace write lost: %q", b)
	}
}

// secretPaths covers every default mask pattern.
var secretPaths = []string{
	".env", ".env.local", ".git-credentials", ".aws/credentials", ".config/gcloud/application_default_credentials.json",
	".azure/accessTokens.json", ".docker/config.json", ".kube/config", ".npmrc", ".pypirc",
	"deploy-service-account.json", "tls.pem", "server.key", ".ssh/id_ed25519", "sub/dir/.env",
}

func TestSecretsMasked(t *testing.T) {
	e := newEnv(t)
	home := t.TempDir()
	if err := os.Chmod(home, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range secretPaths {
		e.write(p, "TOPSECRET\n")
		full := filepath.Join(home, p)
		_ = os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte("TOPSECRET\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.write("notes.txt", "visible\n")
	e.write("custom.secret", "TOPSECRET\n")
	var script strings.Builder
	for _, p := range secretPaths {
		fmt.Fprintf(&script, "cat %q 2>/dev/null; cat %q 2>/dev/null; ", p, "/fakehome/"+p)
	}
	script.WriteString("cat custom.secret 2>/dev/null; cat notes.txt; echo x > /fakehome/.npmrc 2>/dev/null && echo WROTE")
	r := e.run([]string{"--mount", home + ":/fakehome:rw", "--mask", "*.secret"}, script.String())
	if strings.Contains(r.stdout, "TOPSECRET") || strings.Contains(r.stdout, "WROTE") {
		t.Errorf("a secret leaked or a mask was writable:\n%s\n%s", r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "visible") {
		t.Errorf("ordinary file not readable: %q %s", r.stdout, r.stderr)
	}
	// A masked directory reads as empty.
	r = e.run(nil, `ls -A .aws .ssh .config/gcloud | grep -v ':$' | grep . && exit 1; exit 0`)
	if r.code != 0 {
		t.Errorf("masked directories not empty: %s %s", r.stdout, r.stderr)
	}
}

func TestSeccompDenials(t *testing.T) {
	e := newEnv(t)
	r := e.paddock("run", "--network", "none", "--state-dir", e.state, "--mount", probeDir+":/probe", "--", "/probe/probe", "syscalls")
	for _, n := range []string{"mount", "unshare", "ptrace", "bpf", "raw", "packet"} {
		if !strings.Contains(r.stdout, n+" EPERM") {
			t.Errorf("%s not refused with EPERM:\n%s\n%s", n, r.stdout, r.stderr)
		}
	}
	if !strings.Contains(r.stdout, "tcp ALLOWED") {
		t.Errorf("ordinary sockets broken: %s %s", r.stdout, r.stderr)
	}
}

func TestCustomSeccompProfile(t *testing.T) {
	e := newEnv(t)
	prof := filepath.Join(t.TempDir(), "profile.json")
	err := os.WriteFile(prof, []byte(`{"defaultAction": "SCMP_ACT_ALLOW",
		"syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	r := e.paddock("run", "--network", "none", "--state-dir", e.state, "--seccomp", prof, "--mount", probeDir+":/probe",
		"--", "sh", "-c", "mkdir /tmp/d 2>&1; /probe/probe syscalls")
	if !strings.Contains(r.stdout, "Permission denied") {
		t.Errorf("profile's mkdir rule (EACCES) not applied: %s %s", r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "ptrace EPERM") || !strings.Contains(r.stdout, "raw EPERM") {
		t.Errorf("paddock's own denials must hold under any profile: %s", r.stdout)
	}
}

func TestLimits(t *testing.T) {
	e := newEnv(t)
	t.Run("pids", func(t *testing.T) {
		r := e.run([]string{"--pids", "40", "--verbose"}, `n=0; for i in $(seq 200); do sleep 3 & n=$((n+1)); done 2>/dev/null; echo started $n`)
		if strings.Contains(r.stdout, "started 200") && !strings.Contains(r.stderr, "fork") {
			t.Errorf("fork bomb was not stopped at 40:\n%s\n%s", r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "pids.max=40") {
			t.Errorf("--verbose does not say which pids limit applied: %s", r.stderr)
		}
	})
	t.Run("memory", func(t *testing.T) {
		r := e.paddock("run", "--network", "none", "--state-dir", e.state, "--memory", "64m", "--mount", probeDir+":/probe",
			"--", "/probe/probe", "hog")
		if r.code != 128+int(syscall.SIGKILL) || strings.Contains(r.stdout, "survived") {
			t.Errorf("memory hog not killed at 64m: exit %d %s %s", r.code, r.stdout, r.stderr)
		}
	})
}

func TestCleanEnvironment(t *testing.T) {
	e := newEnv(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "hostsecret")
	t.Setenv("PASSME", "passed")
	r := e.run([]string{"--env", "FOO=bar", "--env-pass", "PASSME"}, `env`)
	if strings.Contains(r.stdout, "hostsecret") {
		t.Errorf("host secret leaked:\n%s", r.stdout)
	}
	for _, want := range []string{"FOO=bar", "PASSME=passed", "PATH=", "HOME="} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %s in:\n%s", want, r.stdout)
		}
	}
}

func TestCABundle(t *testing.T) {
	e := newEnv(t)
	ca := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run([]string{"--ca-bundle", ca}, `for v in SSL_CERT_FILE NODE_EXTRA_CA_CERTS REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO PIP_CERT; do eval f=\$$v; grep -q fake "$f" || { echo "$v unusable"; exit 1; }; done; grep -c BEGIN "$SSL_CERT_FILE"`)
	if r.code != 0 {
		t.Errorf("CA bundle not usable through the trust variables: %s %s", r.stdout, r.stderr)
	}
	// The bare CA was joined with the system roots (passthrough sites).
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil && strings.TrimSpace(r.stdout) == "1" {
		t.Errorf("bare CA not joined with the system roots")
	}
}

func TestExitCodesAndSignals(t *testing.T) {
	e := newEnv(t)
	if r := e.run(nil, `exit 42`); r.code != 42 {
		t.Errorf("exit 42 became %d", r.code)
	}
	if r := e.run(nil, `kill -KILL $$`); r.code != 137 {
		t.Errorf("SIGKILL became %d", r.code)
	}
	e.write("script.sh", "#!/bin/sh\nexit 5\n")
	if err := os.Chmod(filepath.Join(e.ws, "script.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := e.paddock("run", "--network", "none", "--state-dir", e.state, "--", "./script.sh"); r.code != 5 {
		t.Errorf("a relative command in the workspace: exit %d, want 5: %s", r.code, r.stderr)
	}
	if r := e.paddock("run", "--network", "none", "--state-dir", e.state, "--", "no-such-command"); r.code != 127 {
		t.Errorf("missing command became %d: %s", r.code, r.stderr)
	}
	// A signal to the launcher reaches the command, whose status comes back.
	cmd := exec.Command(paddockBin, "run", "--network", "none", "--state-dir", e.state, "--",
		"sh", "-c", `trap 'exit 33' TERM; echo ready; while :; do sleep 0.05; done`)
	if line := e.startLine(t, cmd); line != "ready\n" {
		t.Fatalf("no ready line: %q", line)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		if c := cmd.ProcessState.ExitCode(); c != 33 {
			t.Errorf("SIGTERM handler's exit 33 became %d", c)
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("SIGTERM was not forwarded")
	}
}

func TestReaper(t *testing.T) {
	e := newEnv(t)
	// An orphaned grandchild is reaped by init, not left a zombie.
	r := e.run(nil, `sh -c 'sleep 0.1 &' ; sleep 0.5; ps -eo stat= | grep -c Z || true`)
	if strings.TrimSpace(r.stdout) != "0" {
		t.Errorf("zombies inside: %q %s", r.stdout, r.stderr)
	}
}

func TestOverlayReview(t *testing.T) {
	e := newEnv(t)
	if err := os.Chown(e.ws, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	e.write("keep.txt", "one\n")
	e.write("gone.txt", "bye\n")
	for _, p := range []string{"keep.txt", "gone.txt"} {
		_ = os.Chown(filepath.Join(e.ws, p), 65534, 65534)
	}
	change := `echo two >> keep.txt && rm gone.txt && echo new > added.txt`
	flags := []string{"--workspace", e.ws + ":overlay"}
	lastRun := func() string {
		r := e.paddock("runs", "--state-dir", e.state)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		return strings.Fields(lines[len(lines)-1])[0]
	}

	if r := e.run(flags, change); r.code != 0 {
		t.Fatalf("overlay run: %d %s", r.code, r.stderr)
	}
	id := lastRun()
	d := e.paddock("diff", "--state-dir", e.state, id)
	for _, want := range []string{"M keep.txt", "D gone.txt", "A added.txt", "+two", "-bye", "+new"} {
		if !strings.Contains(d.stdout, want) {
			t.Errorf("diff lacks %q:\n%s%s", want, d.stdout, d.stderr)
		}
	}
	if r := e.paddock("discard", "--state-dir", e.state, id); r.code != 0 {
		t.Fatalf("discard: %s", r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(e.ws, "keep.txt")); string(b) != "one\n" {
		t.Errorf("discard changed the workspace: %q", b)
	}
	if _, err := os.Stat(filepath.Join(e.ws, "added.txt")); err == nil {
		t.Error("discard left added.txt")
	}

	if r := e.run(flags, change); r.code != 0 {
		t.Fatalf("overlay run: %d %s", r.code, r.stderr)
	}
	if r := e.paddock("apply", "--state-dir", e.state, lastRun()); r.code != 0 {
		t.Fatalf("apply: %s", r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(e.ws, "keep.txt")); string(b) != "one\ntwo\n" {
		t.Errorf("apply: keep.txt = %q", b)
	}
	if _, err := os.Stat(filepath.Join(e.ws, "gone.txt")); err == nil {
		t.Error("apply did not delete gone.txt")
	}
	if b, _ := os.ReadFile(filepath.Join(e.ws, "added.txt")); string(b) != "new\n" {
		t.Errorf("apply: added.txt = %q", b)
	}
}

func TestBadInputLeavesNothing(t *testing.T) {
	e := newEnv(t)
	for _, args := range [][]string{
		{"--workspace", "/does/not/exist"},
		{"--workspace", e.ws + ":bogus"},
		{"--mount", "/etc"},
		{"--mount", "/etc:relative"},
		{"--memory", "lots"},
		{"--network", "wifi"},
		{"--seccomp", "/does/not/exist.json"},
		{"--env", "NOEQUALS"},
		{"--mount", "/etc:/usr/share/paddock-no-such-dir"},
	} {
		full := append(append([]string{"run", "--network", "none", "--state-dir", e.state}, args...), "--", "true")
		r := e.paddock(full...)
		if r.code == 0 || strings.TrimSpace(r.stderr) == "" {
			t.Errorf("%v: exit %d, stderr %q: want a clear error", args, r.code, r.stderr)
		}
	}
	if ents, _ := os.ReadDir(e.state); len(ents) != 0 {
		t.Errorf("failed runs left state behind: %v", ents)
	}
}

func TestTUIUnderTmux(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed")
	}
	e := newEnv(t)
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) string {
		out, _ := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		return string(out)
	}
	t.Cleanup(func() { tmux("kill-server") })
	// The probe's TUI mode: raw terminal, full-screen draw, one key echoed.
	tmux("new-session", "-d", "-x", "80", "-y", "24", "-c", e.ws,
		paddockBin+" run --network none --state-dir "+e.state+" --mount "+probeDir+":/probe -- /probe/probe tui; sleep 30")
	waitFor := func(s string) bool {
		for i := 0; i < 100; i++ {
			if strings.Contains(tmux("capture-pane", "-p"), s) {
				return true
			}
			time.Sleep(100 * time.Millisecond)
		}
		return false
	}
	if !waitFor("PADDOCK-TUI ready 80x24") {
		t.Fatalf("TUI did not draw at the terminal's size:\n%s", tmux("capture-pane", "-p"))
	}
	tmux("send-keys", "x")
	if !waitFor("got key x") {
		t.Fatalf("TUI did not take the key:\n%s", tmux("capture-pane", "-p"))
	}
	tmux("send-keys", "q")
}

func TestCrashLeftoversCollected(t *testing.T) {
	e := newEnv(t)
	cmd := exec.Command(paddockBin, "run", "--network", "none", "--state-dir", e.state, "--pids", "50", "--", "sh", "-c", "echo ready; sleep 60")
	e.startLine(t, cmd)
	ents, _ := os.ReadDir(e.state)
	if len(ents) != 1 {
		t.Fatalf("want one run record while running, got %v", ents)
	}
	id := ents[0].Name()
	// The launcher dies without cleaning up; the kernel kills the sandbox.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	cg := filepath.Join("/sys/fs/cgroup/pids/paddock", id)
	if _, err := os.Stat("/sys/fs/cgroup/pids/paddock"); err != nil {
		cg = filepath.Join("/sys/fs/cgroup/paddock", id)
	}
	if _, err := os.Stat(cg); err != nil {
		t.Fatalf("expected the crashed run's cgroup %s to be left over: %v", cg, err)
	}
	if r := e.run(nil, "true"); r.code != 0 {
		t.Fatalf("next run: %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(e.state, id)); err == nil {
		t.Error("the crashed run's record was not collected")
	}
	if _, err := os.Stat(cg); err == nil {
		t.Error("the crashed run's cgroup was not collected")
	}
}
