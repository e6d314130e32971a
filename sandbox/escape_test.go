package sandbox_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The escape suite: a hostile command (a prompt-injected agent) tries to
// learn a secret, change what it may only read, leave its namespaces or
// outlast its launcher. Every attack is a real run of `paddock run`,
// bounded at escapeTimeout; python3 from the rootfs and the probe
// (testdata/probe) do the attacking.

const escapeTimeout = 10 * time.Second

// attackLib is prepended to every python attack: t(name, f) prints
// "name: OK <value>" or "name: <ERRNO>".
const attackLib = `import os, sys, errno, socket, subprocess, shutil
W = os.environ.get("W", "")
def t(name, f):
    try:
        r = f()
        print("%s: OK %r" % (name, r), flush=True)
    except OSError as e:
        print("%s: %s" % (name, errno.errorcode.get(e.errno, e.errno)), flush=True)
def rd(p):
    with open(p) as f:
        return f.read()
def wr(p, s="pwned"):
    with open(p, "w") as f:
        f.write(s)
`

// escape runs argv in a --network none sandbox with the probe at /probe,
// killing the launcher after escapeTimeout.
func (e *env) escape(flags []string, argv ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), escapeTimeout)
	defer cancel()
	args := append([]string{"run", "--network", "none", "--state-dir", e.state, "--mount", probeDir + ":/probe"}, flags...)
	r := e.paddockCtx(ctx, append(append(args, "--"), argv...)...)
	if ctx.Err() != nil {
		e.t.Fatalf("paddock run %v: not done after %s\nstdout: %s\nstderr: %s", argv, escapeTimeout, r.stdout, r.stderr)
	}
	return r
}

// attack runs a python attack script (attackLib + script) with W set to
// the workspace and returns its verdicts by name.
func (e *env) attack(flags []string, script string) (map[string]string, result) {
	e.t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		e.t.Skip("python3 is not installed in the rootfs (/usr/bin/python3)")
	}
	flags = append([]string{"--env", "W=" + e.ws}, flags...)
	r := e.escape(flags, "/usr/bin/python3", "-c", attackLib+script)
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		if name, v, ok := strings.Cut(sc.Text(), ": "); ok {
			out[name] = v
		}
	}
	return out, r
}

// refused fails the test for every named attack that succeeded or did not run.
func refused(t *testing.T, got map[string]string, r result, names ...string) {
	t.Helper()
	for _, n := range names {
		v, ok := got[n]
		switch {
		case !ok:
			t.Errorf("%s: no verdict\nstdout: %s\nstderr: %s", n, r.stdout, r.stderr)
		case strings.HasPrefix(v, "OK"):
			t.Errorf("%s: succeeded (%s)", n, v)
		}
	}
}

func (e *env) chownWS(uid int) {
	e.t.Helper()
	err := filepath.Walk(e.ws, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) assertContent(rel, want string) {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.ws, rel))
	if err != nil || string(b) != want {
		e.t.Errorf("host file %s changed: %q %v (want %q)", rel, b, err, want)
	}
}

const secret = "TOPSECRET\n"

// maskedFiles are secrets each attack tries to reach; the deep one lies
// below more directories than a bounded scan would descend.
var maskedFiles = []string{".env", "sub/.env", ".ssh/id_ed25519", "tls.pem", "a/b/c/d/e/f/g/h/i/j/.env",
	".netrc", ".gnupg/private-keys-v1.d/k.key", ".config/gh/hosts.yml", ".vault-token", ".cargo/credentials.toml"}

func TestEscapeMasks(t *testing.T) {
	e := newEnv(t)
	for _, p := range maskedFiles {
		e.write(p, secret)
	}
	e.write("notes.txt", "visible\n")
	e.chownWS(65534)
	script := `
t("read", lambda: rd(W + "/.env"))
t("deep", lambda: rd(W + "/a/b/c/d/e/f/g/h/i/j/.env"))
t("hardlink", lambda: (os.link(W + "/.env", W + "/hl"), rd(W + "/hl"))[1])
t("hardlink-key", lambda: (os.link(W + "/.ssh/id_ed25519", W + "/hl2"), rd(W + "/hl2"))[1])
t("symlink", lambda: (os.symlink(".env", W + "/sl"), rd(W + "/sl"))[1])
t("dotdot", lambda: rd(W + "/sub/../.env"))
t("proc-self-root", lambda: rd("/proc/self/root" + W + "/.env"))
t("proc-1-root", lambda: rd("/proc/1/root" + W + "/.env"))
t("proc-1-cwd", lambda: os.listdir("/proc/1/cwd"))
t("second-mount", lambda: rd("/again/.env"))
t("second-mount-sub", lambda: rd("/again/sub/.env"))
t("second-mount-key", lambda: rd("/again/.ssh/id_ed25519"))
t("ssh-list", lambda: os.listdir(W + "/.ssh"))
t("ssh-key", lambda: rd(W + "/.ssh/id_ed25519"))
t("pem", lambda: rd(W + "/tls.pem"))
t("rename", lambda: os.rename(W + "/.env", W + "/moved"))
t("unlink", lambda: os.unlink(W + "/.env"))
t("write", lambda: wr(W + "/.env"))
t("chmod", lambda: os.chmod(W + "/.env", 0o777))
t("ssh-create", lambda: wr(W + "/.ssh/new"))
t("ssh-rmdir", lambda: shutil.rmtree(W + "/.ssh"))
def moved():
    os.rename(W + "/sub", W + "/sub2")
    try:
        return rd(W + "/sub2/.env")
    finally:
        os.rename(W + "/sub2", W + "/sub")
t("rename-parent", moved)
t("fd-reopen", lambda: rd("/proc/self/fd/%d" % os.open(W + "/.env", os.O_PATH)))
for p in [".netrc", ".gnupg/private-keys-v1.d/k.key", ".config/gh/hosts.yml", ".vault-token", ".cargo/credentials.toml"]:
    t("cred " + p, lambda: rd(W + "/" + p))
t("notes", lambda: rd(W + "/notes.txt"))
`
	check := func(t *testing.T, got map[string]string, r result) {
		if strings.Contains(r.stdout, "TOPSECRET") {
			t.Errorf("a masked secret was read:\n%s", r.stdout)
		}
		refused(t, got, r, "hardlink", "hardlink-key", "proc-1-root", "proc-1-cwd", "rename", "unlink", "write", "chmod", "ssh-create", "ssh-rmdir")
		if !strings.Contains(got["notes"], "visible") {
			t.Errorf("ordinary file unreadable: %q\n%s", got["notes"], r.stderr)
		}
		for _, p := range maskedFiles {
			e.assertContent(p, secret)
		}
	}
	t.Run("rw", func(t *testing.T) {
		got, r := e.attack([]string{"--workspace", e.ws + ":rw", "--uid", "65534", "--mount", e.ws + ":/again"}, script)
		check(t, got, r)
	})
	e.chownWS(65534)
	t.Run("overlay", func(t *testing.T) {
		got, r := e.attack([]string{"--workspace", e.ws + ":overlay", "--uid", "65534", "--mount", e.ws + ":/again"}, script+`
t("state-dir", lambda: os.listdir("`+e.state+`"))
`)
		check(t, got, r)
		refused(t, got, r, "state-dir")
		// The layer holds only what the run wrote, never a copy-up of a secret.
		_ = filepath.Walk(e.state, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("TOPSECRET")) {
					t.Errorf("overlay layer %s holds a secret", p)
				}
			}
			return nil
		})
	})
	t.Run("open-by-handle", func(t *testing.T) {
		r := e.escape([]string{"--workspace", e.ws + ":rw", "--uid", "65534"}, "/probe/probe", "handle", e.ws+"/sub")
		if !strings.Contains(r.stdout, "open_by_handle_at EPERM") {
			t.Errorf("open_by_handle_at not refused: %s %s", r.stdout, r.stderr)
		}
	})
	// Masks are computed when the run starts: a secret the user writes into
	// an rw workspace while the run goes on is not masked (a known limit,
	// not tested); what the agent writes itself it knows already.
}

func TestEscapeReadOnly(t *testing.T) {
	e := newEnv(t)
	e.write("file.txt", "data\n")
	e.write("dir/inner.txt", "inner\n")
	got, r := e.attack(nil, `
wr("/tmp/x", "x")
t("reopen-rdwr", lambda: os.open("/proc/self/fd/%d" % os.open(W + "/file.txt", os.O_RDONLY), os.O_RDWR))
t("open-rdwr", lambda: os.open(W + "/file.txt", os.O_RDWR))
t("chmod", lambda: os.chmod(W + "/file.txt", 0o777))
t("chown", lambda: os.chown(W + "/file.txt", 65534, 65534))
t("utime", lambda: os.utime(W + "/file.txt", (0, 0)))
t("truncate", lambda: os.truncate(W + "/file.txt", 0))
t("rename-into", lambda: os.rename("/tmp/x", W + "/x"))
t("rename-within", lambda: os.rename(W + "/file.txt", W + "/dir/moved"))
t("unlink", lambda: os.unlink(W + "/file.txt"))
t("mkdir", lambda: os.mkdir(W + "/d"))
t("symlink", lambda: os.symlink("/", W + "/root"))
t("setxattr", lambda: os.setxattr(W + "/file.txt", "user.x", b"1"))
t("create-root", lambda: wr("/newfile"))
t("create-etc", lambda: wr("/etc/paddock-escape"))
t("create-usr", lambda: wr("/usr/paddock-escape"))
t("create-dev", lambda: wr("/dev/paddock-escape"))
t("mknod", lambda: os.mknod("/tmp/null", 0o20666, os.makedev(1, 3)))
t("mknod-fifo-ws", lambda: os.mkfifo(W + "/fifo"))
t("proc-sys", lambda: wr("/proc/sys/kernel/hostname"))
t("proc-sys-net", lambda: wr("/proc/sys/net/ipv4/ip_forward", "1"))
t("sys", lambda: wr("/sys/kernel/uevent_helper", "/tmp/x"))
t("sysrq", lambda: wr("/proc/sysrq-trigger", "h"))
t("kcore", lambda: open("/proc/kcore", "rb").read(1))
t("kmem", lambda: open("/dev/kmem", "rb").read(1))
t("mem", lambda: open("/dev/mem", "rb").read(1))
t("kallsyms-addresses", lambda: [l for l in rd("/proc/kallsyms").splitlines() if not l.startswith("0000000000000000")][:1] or None)
shutil.copy("/bin/true", "/tmp/true"); os.chmod("/tmp/true", 0o755)
shutil.copy("/bin/true", "/dev/shm/true"); os.chmod("/dev/shm/true", 0o755)
t("tmp-exec", lambda: subprocess.run(["/tmp/true"]).returncode)
t("shm-exec", lambda: subprocess.run(["/dev/shm/true"]).returncode)
t("home-setuid", lambda: (shutil.copy("/bin/true", os.environ["HOME"] + "/t"), os.chmod(os.environ["HOME"] + "/t", 0o4755), os.stat(os.environ["HOME"] + "/t").st_mode & 0o4000)[2])
`)
	refused(t, got, r, "reopen-rdwr", "open-rdwr", "chmod", "chown", "utime", "truncate", "rename-into", "rename-within",
		"unlink", "mkdir", "symlink", "setxattr", "create-root", "create-etc", "create-usr", "create-dev", "mknod",
		"mknod-fifo-ws", "proc-sys", "proc-sys-net", "sys", "sysrq", "kcore", "kmem", "mem", "tmp-exec", "shm-exec")
	if v := got["kallsyms-addresses"]; v != "OK None" {
		t.Errorf("kernel addresses readable from /proc/kallsyms: %s", v)
	}
	// A setuid bit set in the sandbox's own tmpfs is inert: nosuid and
	// no_new_privs; recorded here so that a change shows.
	t.Logf("setuid bit in $HOME: %s", got["home-setuid"])
	e.assertContent("file.txt", "data\n")
	e.assertContent("dir/inner.txt", "inner\n")
	for _, p := range []string{"/etc/paddock-escape", "/usr/paddock-escape", "/newfile"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s created on the host", p)
		}
	}
	if ents, _ := os.ReadDir(e.ws); len(ents) != 2 {
		t.Errorf("read-only workspace gained entries: %v", ents)
	}
}

func TestEscapeSyscalls(t *testing.T) {
	e := newEnv(t)
	allow := filepath.Join(t.TempDir(), "allow.json")
	if err := os.WriteFile(allow, []byte(`{"defaultAction": "SCMP_ACT_ALLOW"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// paddock's own denials hold under any profile, even one that allows
	// everything else.
	for _, prof := range [][]string{nil, {"--seccomp", allow}} {
		name := "default"
		if prof != nil {
			name = "allow-all profile"
		}
		t.Run(name, func(t *testing.T) {
			r := e.escape(prof, "/probe/probe", "deny")
			n := 0
			for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				n++
				// Under the allow-all profile the kernel refuses what
				// paddock's list leaves to the missing capabilities.
				if prof == nil && !strings.HasSuffix(l, " EPERM") || strings.HasSuffix(l, " ALLOWED") {
					t.Errorf("not refused: %s", l)
				}
			}
			if n < 30 {
				t.Errorf("probe deny ran %d checks:\n%s\n%s", n, r.stdout, r.stderr)
			}
			r = e.escape(prof, "/probe/probe", "syscalls")
			for _, n := range []string{"mount", "unshare", "ptrace", "bpf", "raw", "packet"} {
				if !strings.Contains(r.stdout, n+" EPERM") {
					t.Errorf("%s not refused:\n%s\n%s", n, r.stdout, r.stderr)
				}
			}
			// New namespaces through clone(2); clone3 hides its flags from
			// the filter, so it must look unimplemented (libc falls back).
			r = e.escape(prof, "/probe/probe", "clone")
			for _, ns := range []string{"newuser", "newns", "newnet", "newpid", "newuts", "newipc", "newcgroup"} {
				if !strings.Contains(r.stdout, "clone-"+ns+" EPERM") {
					t.Errorf("clone(CLONE_%s) not refused:\n%s\n%s", strings.ToUpper(ns), r.stdout, r.stderr)
				}
			}
			if !strings.Contains(r.stdout, "clone3 function not implemented") {
				t.Errorf("clone3 not answered ENOSYS:\n%s", r.stdout)
			}
			// Another ABI's syscall numbers are not the ones the rules name:
			// any syscall through it kills the process (SIGSYS).
			if runtime.GOARCH != "amd64" {
				return
			}
			for _, abi := range []string{"ia32-getpid", "ia32-unshare", "x32-getpid"} {
				r := e.escape(prof, "/probe/probe", "compat", abi)
				if strings.Contains(r.stdout, "returned") || r.code != 128+int(syscall.SIGSYS) {
					t.Errorf("%s: exit %d, want %d (killed by SIGSYS)\n%s%s", abi, r.code, 128+int(syscall.SIGSYS), r.stdout, r.stderr)
				}
			}
		})
	}
	t.Run("memfd", func(t *testing.T) {
		// Executing from an anonymous memory file is allowed, as under
		// Docker's default profile: noexec on /tmp stops accidents, not an
		// agent that can already run python. Recorded so that a change shows.
		r := e.escape(nil, "/probe/probe", "memfd")
		t.Logf("memfd_create + exec: %s", strings.TrimSpace(r.stdout))
	})
	got, r := e.attack(nil, `
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
t("kill-init", lambda: os.kill(1, signal.SIGKILL))
t("kill-init-term", lambda: os.kill(1, signal.SIGTERM))
t("init-mem", lambda: open("/proc/1/mem", "rb").read(1))
t("init-environ", lambda: rd("/proc/1/environ"))
t("init-maps", lambda: rd("/proc/1/maps"))
t("init-fd", lambda: os.listdir("/proc/1/fd"))
t("init-oom", lambda: wr("/proc/1/oom_score_adj", "-1000"))
t("setuid0", lambda: os.setuid(0))
t("setgid0", lambda: os.setgid(0))
t("setgroups", lambda: os.setgroups([0]))
t("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
t("raw6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
t("packet", lambda: socket.socket(17, socket.SOCK_RAW, 0))
t("packet-dgram", lambda: socket.socket(17, socket.SOCK_DGRAM, 0))
t("netlink-raw", lambda: socket.socket(16, socket.SOCK_RAW, 0))
t("vsock", lambda: socket.socket(40, socket.SOCK_STREAM, 0))
t("alg", lambda: socket.socket(38, 5, 0))
t("suid-su", lambda: subprocess.run(["su", "-c", "id -u"], capture_output=True, text=True, timeout=3).stdout.strip() == "0" or (_ for _ in ()).throw(OSError(errno.EPERM, "not root")))
t("loopback-route", lambda: subprocess.run(["ip", "route", "add", "10.0.0.0/8", "dev", "lo"], capture_output=True, timeout=3).returncode == 0 or (_ for _ in ()).throw(OSError(errno.EPERM, "refused")))
print("status:", rd("/proc/self/status").replace("\n", " "))
`)
	refused(t, got, r, "kill-init", "kill-init-term", "init-mem", "init-environ", "init-maps", "init-fd", "init-oom",
		"setuid0", "setgid0", "setgroups", "raw", "raw6", "packet", "packet-dgram", "netlink-raw", "vsock", "alg")
	if v, ok := got["suid-su"]; ok && strings.HasPrefix(v, "OK") {
		t.Errorf("su became root: %s", v)
	}
	if v, ok := got["loopback-route"]; ok && strings.HasPrefix(v, "OK") {
		t.Errorf("the command changed its namespace's routes: %s", v)
	}
	for _, want := range []string{"CapEff:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(got["status"], want) {
			t.Errorf("after the attacks the command lacks %q: %s", want, got["status"])
		}
	}
}

func TestEscapeHostLeaks(t *testing.T) {
	e := newEnv(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "hostsecret-aws")
	t.Setenv("GITHUB_TOKEN", "hostsecret-gh")
	host, _ := os.Hostname()
	// A host abstract socket: the sandbox's network namespace has its own
	// abstract namespace, so it must not reach this one.
	abstract := fmt.Sprintf("@paddock-escape-%d", os.Getpid())
	ln, err := net.Listen("unix", abstract)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("LEAKED-ABSTRACT\n"))
			c.Close()
		}
	}()
	got, r := e.attack(nil, `
import re
t("env", lambda: {k: v for k, v in os.environ.items() if "hostsecret" in v} or None)
t("hostname", lambda: socket.gethostname())
t("etc-hostname", lambda: rd("/etc/hostname"))
t("etc-hosts", lambda: rd("/etc/hosts"))
t("pids", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
t("abstract", lambda: (lambda s: (s.connect("\0`+abstract[1:]+`"), s.recv(64))[1])(socket.socket(socket.AF_UNIX)))
t("netdev", lambda: sorted(l.split(":")[0].strip() for l in rd("/proc/net/dev").splitlines()[2:]))
t("paddockd-sock", lambda: os.stat("/run/paddock/paddockd.sock"))
t("var-run-paddock", lambda: os.listdir("/var/run/paddock"))
t("ca-key", lambda: rd("/var/lib/paddock/ca/ca-key.pem"))
t("var-lib-paddock", lambda: os.listdir("/var/lib/paddock") or None)
t("etc-paddock", lambda: os.listdir("/etc/paddock") or None)
t("bpffs", lambda: os.listdir("/sys/fs/bpf") or None)
t("cgroupfs", lambda: os.listdir("/sys/fs/cgroup") or None)
t("dbus", lambda: os.stat("/run/dbus/system_bus_socket"))
t("home", lambda: os.listdir("/home") or None)
t("root-home", lambda: [p for p in os.listdir("/root") if p != "paddock-escape"] or None if os.environ.get("HOME") == "/root" else os.listdir("/root") or None)
t("shadow", lambda: rd("/etc/shadow"))
t("init-cmdline", lambda: rd("/proc/1/cmdline").split("\0"))
t("mountinfo-oldroot", lambda: [l for l in rd("/proc/self/mountinfo").splitlines() if " /oldroot" in l] or None)
`)
	if strings.Contains(r.stdout, "hostsecret") || strings.Contains(r.stdout, "LEAKED-ABSTRACT") {
		t.Errorf("host secret reached the sandbox:\n%s", r.stdout)
	}
	refused(t, got, r, "abstract", "paddockd-sock", "var-run-paddock", "ca-key", "dbus", "shadow")
	for _, n := range []string{"env", "var-lib-paddock", "etc-paddock", "bpffs", "cgroupfs", "home", "root-home", "mountinfo-oldroot"} {
		if v := got[n]; v != "OK None" && !strings.HasPrefix(v, "ENOENT") {
			t.Errorf("%s: visible: %s", n, v)
		}
	}
	if got["hostname"] != "OK 'paddock'" || strings.Contains(got["hostname"], host) {
		t.Errorf("hostname: %s (host is %q)", got["hostname"], host)
	}
	for _, n := range []string{"etc-hostname", "etc-hosts"} {
		if v := got[n]; host != "" && strings.Contains(v, host) {
			t.Errorf("%s names the host %q: %s", n, host, v)
		}
	}
	if got["netdev"] != "OK ['lo']" {
		t.Errorf("network devices: %s", got["netdev"])
	}
	// PID 1 (init) and the command with its python child; no host process.
	if v := got["pids"]; !strings.HasPrefix(v, "OK [1, ") || strings.Count(v, ",") > 3 {
		t.Errorf("processes visible: %s", v)
	}
	if strings.Contains(got["init-cmdline"], "hostsecret") {
		t.Errorf("init's command line: %s", got["init-cmdline"])
	}
}

func TestEscapeLimits(t *testing.T) {
	e := newEnv(t)
	t.Run("fork bomb", func(t *testing.T) {
		r := e.escape([]string{"--pids", "64", "--verbose"}, "sh", "-c", `b() { b | b & }; b 2>/dev/null; sleep 2; echo survived`)
		if !strings.Contains(r.stderr, "pids.max=64") {
			t.Errorf("pids limit not applied: %s", r.stderr)
		}
		if !strings.Contains(r.stdout, "survived") {
			t.Logf("the bomb's shell did not survive it: exit %d %s", r.code, r.stderr)
		}
	})
	t.Run("memory", func(t *testing.T) {
		r := e.escape([]string{"--memory", "64m"}, "/probe/probe", "hog")
		if r.code != 128+int(syscall.SIGKILL) || strings.Contains(r.stdout, "survived") {
			t.Errorf("memory hog not killed at 64m: exit %d %s %s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("tmp full", func(t *testing.T) {
		r := e.escape([]string{"--tmp-size", "8m"}, "/probe/probe", "fill", "/tmp/big")
		if !strings.Contains(r.stdout, "no space left on device") || strings.Contains(r.stdout, "wrote 9 ") {
			t.Errorf("/tmp not bounded at 8m: %s %s", r.stdout, r.stderr)
		}
		r = e.escape(nil, "/probe/probe", "fill", "/dev/shm/big")
		if !strings.Contains(r.stdout, "no space left on device") {
			t.Errorf("/dev/shm not bounded: %s %s", r.stdout, r.stderr)
		}
	})
	t.Run("open files", func(t *testing.T) {
		r := e.escape(nil, "/probe/probe", "nofile")
		if !strings.Contains(r.stdout, "too many open files") {
			t.Errorf("descriptors not bounded: %s %s", r.stdout, r.stderr)
		}
	})
	t.Run("cpu quota", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), escapeTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, paddockBin, "run", "--network", "none", "--state-dir", e.state, "--cpus", "0.5",
			"--", "sh", "-c", "echo ready; sleep 5")
		e.startLine(t, cmd)
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		ents, _ := os.ReadDir(e.state)
		if len(ents) != 1 {
			t.Fatalf("want one run, got %v", ents)
		}
		id := ents[0].Name()
		var quota string
		for _, f := range []string{"/sys/fs/cgroup/paddock/" + id + "/cpu.max", "/sys/fs/cgroup/cpu/paddock/" + id + "/cpu.cfs_quota_us",
			"/sys/fs/cgroup/cpu,cpuacct/paddock/" + id + "/cpu.cfs_quota_us"} {
			if b, err := os.ReadFile(f); err == nil {
				quota = strings.TrimSpace(string(b))
				break
			}
		}
		if quota != "50000 100000" && quota != "50000" {
			t.Errorf("cpu quota for --cpus 0.5: %q", quota)
		}
	})
}

// The sandbox cannot outlive its launcher: SIGKILL to `paddock run` kills
// init (Pdeathsig), and with PID 1 of its namespace every process in it.
func TestEscapeOutliveLauncher(t *testing.T) {
	e := newEnv(t)
	marker := fmt.Sprintf("%d", 4000+os.Getpid()%5000)
	cmd := exec.Command(paddockBin, "run", "--network", "none", "--state-dir", e.state, "--",
		"sh", "-c", "setsid sleep "+marker+" & nohup sleep "+marker+" & (trap '' HUP TERM; sleep "+marker+") & echo ready; wait")
	e.startLine(t, cmd)
	sleepers := func() (n int) {
		ents, _ := os.ReadDir("/proc")
		for _, en := range ents {
			b, err := os.ReadFile("/proc/" + en.Name() + "/cmdline")
			if err == nil && string(b) == "sleep\x00"+marker+"\x00" {
				n++
			}
		}
		return n
	}
	for i := 0; i < 100 && sleepers() < 3; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if n := sleepers(); n != 3 {
		t.Errorf("want 3 sleepers running, found %d", n)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for sleepers() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := sleepers(); n > 0 {
		t.Errorf("%d sandbox processes outlived the killed launcher", n)
	}
	// The next run collects what the killed one left.
	if r := e.escape(nil, "true"); r.code != 0 {
		t.Fatalf("next run: %d %s", r.code, r.stderr)
	}
	if ents, _ := os.ReadDir(e.state); len(ents) != 0 {
		t.Errorf("the killed run's state was not collected: %v", ents)
	}
}

// An overlay run's changes are applied by root on the host: what the
// agent put in the layer must not steer those writes out of the workspace
// through a symlink already in the workspace (from the repository, or
// planted by an earlier :rw run).
func TestEscapeOverlayApply(t *testing.T) {
	e := newEnv(t)
	victim := t.TempDir()
	if err := os.WriteFile(filepath.Join(victim, "keep.txt"), []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(victim, "target"), []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, dst := range map[string]string{"d": victim, "x.txt.paddock-apply": filepath.Join(victim, "target")} {
		if err := os.Symlink(dst, filepath.Join(e.ws, name)); err != nil {
			t.Fatal(err)
		}
	}
	e.write("x.txt", "old\n")
	e.chownWS(65534)
	r := e.escape([]string{"--workspace", e.ws + ":overlay"}, "sh", "-c", `echo pwned > x.txt; rm d && mkdir d && echo pwned > d/evil; true`)
	if r.code != 0 {
		t.Fatalf("overlay run: %d %s", r.code, r.stderr)
	}
	runs := e.paddock("runs", "--state-dir", e.state)
	lines := strings.Split(strings.TrimSpace(runs.stdout), "\n")
	id := strings.Fields(lines[len(lines)-1])[0]
	diff := e.paddock("diff", "--state-dir", e.state, id)
	if strings.Contains(diff.stdout, "keep.txt") {
		t.Errorf("diff lists the symlink target's entries as workspace changes:\n%s", diff.stdout)
	}
	e.paddock("apply", "--state-dir", e.state, id)
	if b, err := os.ReadFile(filepath.Join(victim, "keep.txt")); err != nil || string(b) != "keep\n" {
		t.Errorf("apply deleted or changed a file outside the workspace: %q %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(victim, "evil")); err == nil {
		t.Errorf("apply wrote %s outside the workspace", filepath.Join(victim, "evil"))
	}
	if b, _ := os.ReadFile(filepath.Join(victim, "target")); string(b) != "host\n" {
		t.Errorf("apply wrote through a planted temporary-file symlink: target = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(e.ws, "d", "evil")); string(b) != "pwned\n" {
		t.Errorf("the run's own change inside the workspace was not applied: d/evil = %q", b)
	}
}

// Descriptors the caller of `paddock run` left open (a shell's redirection,
// an IDE's pipes) must not reach the command: a directory descriptor leads
// out of its root, past every mask and hidden path.
func TestEscapeInheritedDescriptors(t *testing.T) {
	e := newEnv(t)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "id_rsa"), []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(outside)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	file, err := os.Open(filepath.Join(outside, "id_rsa"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	ctx, cancel := context.WithTimeout(context.Background(), escapeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, paddockBin, "run", "--network", "none", "--state-dir", e.state, "--",
		"sh", "-c", `ls /proc/self/fd; echo END; cat /proc/self/fd/7/id_rsa /proc/self/fd/8; cd /proc/self/fd/7 && ls`)
	cmd.Dir = e.ws
	// fds 3-6 closed, 7 the directory, 8 the file.
	cmd.ExtraFiles = []*os.File{nil, nil, nil, nil, dir, file}
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("not done after %s: %s", escapeTimeout, out)
	}
	if strings.Contains(string(out), "TOPSECRET") || strings.Contains(string(out), "id_rsa\n") {
		t.Errorf("an inherited descriptor reached the sandbox:\n%s", out)
	}
	for _, l := range strings.Fields(strings.SplitN(string(out), "END", 2)[0]) {
		if l != "0" && l != "1" && l != "2" && l != "3" {
			t.Errorf("descriptor %s open in the command (want 0-2 and ls's own 3):\n%s", l, out)
		}
	}
}

// uid or gid 0 inside is host root's (identity-mapped user namespace):
// without a single capability it still owns /etc/shadow and the SSH host
// keys, so the launcher refuses it.
func TestEscapeRootIDsRefused(t *testing.T) {
	e := newEnv(t)
	for _, flags := range [][]string{{"--uid", "0"}, {"--gid", "0"}, {"--uid", "0", "--gid", "0"}} {
		r := e.escape(flags, "cat", "/etc/shadow")
		if r.code == 0 || !strings.Contains(r.stderr, "id 0") || strings.Contains(r.stdout, "root:") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q: want a refusal", flags, r.code, r.stdout, r.stderr)
		}
	}
	if ents, _ := os.ReadDir(e.state); len(ents) != 0 {
		t.Errorf("refused runs left state: %v", ents)
	}
}

// Known hole, kept as a skipped test: in an :rw workspace the command may
// write .git/hooks and .git/config (core.fsmonitor, core.hooksPath,
// aliases), which run code on the host at the user's next git command
// outside the sandbox. Read-only binds of those two would not close it:
// git also follows .git/commondir to another directory's config, the
// command may create a new repository (.git) in any subdirectory, and a
// read-only .git/config breaks `git config user.email` inside. Use
// :overlay (the diff shows .git changes) or :ro for untrusted work.
func TestEscapeGitHooksRW(t *testing.T) {
	t.Skip("known hole: an :rw workspace's .git/hooks, .git/config and .git/commondir are writable; they run code at the user's next git command on the host")
}

// Another run (or any process) sharing an :rw workspace may swap a
// directory for a symlink between the launcher's scan and the init's mask
// mounts. The mask must then fail closed, never land on a decoy and leave
// the secret readable under its new name.
func TestEscapeMaskRace(t *testing.T) {
	e := newEnv(t)
	e.write("sub/.env", secret)
	e.write("decoy/.env", "decoy\n")
	e.chownWS(65534)
	sub, hold := filepath.Join(e.ws, "sub"), filepath.Join(e.ws, "hold")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 1000000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = os.Rename(sub, hold)
			_ = os.Symlink("decoy", sub)
			time.Sleep(200 * time.Microsecond)
			_ = os.Remove(sub)
			_ = os.Rename(hold, sub)
			time.Sleep(200 * time.Microsecond)
		}
	}()
	defer func() {
		close(stop)
		<-done
		if _, err := os.Stat(filepath.Join(sub, ".env")); err != nil {
			_ = os.Rename(hold, sub)
		}
	}()
	started := 0
	for i := 0; i < 25; i++ {
		r := e.escape([]string{"--workspace", e.ws + ":rw", "--uid", "65534"}, "sh", "-c", "cat sub/.env hold/.env 2>/dev/null; true")
		if strings.Contains(r.stdout, "TOPSECRET") {
			t.Fatalf("run %d read the secret after a swap during setup:\n%s\n%s", i, r.stdout, r.stderr)
		}
		if r.code == 0 {
			started++
		}
	}
	t.Logf("%d of 25 runs started while the workspace was being swapped (the others refused)", started)
}

// A command rewriting its :rw workspace while another run scans the same
// tree could hide a secret from that scan (move a directory into a part
// already walked, leave an empty one in its place): runs that share a
// directory one of them may write are refused while the writer lives.
func TestEscapeConcurrentRWRefused(t *testing.T) {
	e := newEnv(t)
	e.write("sub/.env", secret)
	e.chownWS(65534)
	ctx, cancel := context.WithTimeout(context.Background(), escapeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, paddockBin, "run", "--network", "none", "--state-dir", e.state,
		"--workspace", e.ws+":rw", "--uid", "65534", "--", "sh", "-c", "echo ready; sleep 8")
	e.startLine(t, cmd)
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	other := t.TempDir()
	if err := os.Chmod(other, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, flags := range [][]string{
		{"--workspace", e.ws + ":ro"},
		{"--workspace", e.ws + ":overlay"},
		{"--workspace", other, "--mount", filepath.Join(e.ws, "sub") + ":/data"},
	} {
		r := e.escape(flags, "cat", "sub/.env")
		if r.code == 0 || !strings.Contains(r.stderr, "may write it") {
			t.Errorf("%v beside a live :rw run over the same tree: exit %d %q %q", flags, r.code, r.stdout, r.stderr)
		}
	}
	if r := e.escape([]string{"--workspace", other}, "true"); r.code != 0 {
		t.Errorf("an unrelated workspace was refused: %d %s", r.code, r.stderr)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if r := e.escape([]string{"--workspace", e.ws + ":ro"}, "true"); r.code != 0 {
		t.Errorf("the workspace stayed refused after the :rw run died: %d %s", r.code, r.stderr)
	}
}
