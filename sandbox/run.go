package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// Fixed places inside the sandbox.
const (
	DefaultCABundle = "/var/lib/paddock/ca/bundle.pem"
	caInside        = "/run/paddock-ca/bundle.pem"
	proxySockInside = "/run/paddock-proxy/proxy.sock"
	// ProxyPort is the loopback HTTP proxy port under --network none.
	ProxyPort      = 3128
	defaultPath    = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	defaultUID     = 65534
	defaultTmpSize = "512m"
	defaultHome    = "/home/paddock"
)

// hiddenPaths are never visible: paddockd's socket, the proxy's CA key and
// run state, the credentials the proxy injects.
var hiddenPaths = []string{"/var/lib/paddock", "/etc/paddock", "/run/paddock", "/var/run/paddock"}

// caVars are the trust variables curl, OpenSSL, Node, Python, git and pip read.
var caVars = []string{"SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT"}

const cloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS |
	unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// DefaultOptions returns the options `paddock run` starts from.
func DefaultOptions() Options {
	return Options{
		Network:     NetworkPaddock,
		CNIConfDir:  DefaultCNIConfDir,
		CNIBinDir:   DefaultCNIBinDir,
		ProxySocket: api.DefaultExplicitSocket,
		UID:         -1,
		GID:         -1,
		TmpSize:     defaultTmpSize,
		HomeSize:    defaultTmpSize,
	}
}

// Run starts opts.Command in a sandbox and waits for it. It returns the
// command's exit status (128+N when signal N ended it); an error means the
// sandbox could not be set up, and nothing it created is left behind.
func Run(opts Options) (code int, err error) {
	if os.Geteuid() != 0 {
		return 0, fmt.Errorf("paddock run needs root to create namespaces and cgroups: run it with sudo")
	}
	if err := opts.validate(); err != nil {
		return 0, err
	}
	logf := verboseLogger(opts.Verbose)
	if opts.CABundle == "" {
		if _, err := os.Stat(DefaultCABundle); err == nil {
			opts.CABundle = DefaultCABundle
		}
	}
	filter, err := CompileSeccomp(opts.Seccomp)
	if err != nil {
		return 0, err
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir()
	}
	collect(opts.StateDir)

	id := newID()
	runDir := filepath.Join(opts.StateDir, id)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return 0, fmt.Errorf("state directory: %w", err)
	}
	rec := &Record{
		ID: id, Created: time.Now().UTC(), Command: opts.Command, Workspace: opts.Workspace.Source,
		Overlay: opts.Workspace.Access == Overlay, PID: os.Getpid(), PIDStart: pidStart(os.Getpid()),
		Network: opts.Network, CNIConfDir: opts.CNIConfDir, CNIBinDir: opts.CNIBinDir,
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		if rec.Overlay && (err == nil) {
			rec.Exited, rec.ExitCode = true, code
			_ = rec.save(runDir)
		} else {
			_ = os.RemoveAll(runDir)
		}
	}()
	for _, m := range append([]Mount{opts.Workspace}, opts.Mounts...) {
		rec.Bound = append(rec.Bound, m.Source)
		if m.Access == ReadWrite {
			rec.Writable = append(rec.Writable, m.Source)
		}
	}
	if err := rec.save(runDir); err != nil {
		return 0, err
	}
	// Saved first, checked second: of two runs starting together, at
	// least one sees the other.
	if o := conflicting(opts.StateDir, rec); o != nil {
		return 0, fmt.Errorf("run %s (pid %d) shares %s with this run and one of them may write it: a command rewriting a tree while another run scans it for secrets could hide one; wait for that run, or give each run its own copy (git worktree) or :overlay", o.ID, o.PID, strings.Join(o.Bound, ", "))
	}

	spec, err := buildSpec(&opts, runDir, filter)
	if err != nil {
		return 0, err
	}

	var net *cniNet
	if opts.Network == NetworkPaddock {
		if net, err = loadCNI(opts.CNIConfDir, opts.CNIBinDir, opts.Policy, id); err != nil {
			return 0, err
		}
	} else {
		sock := filepath.Join(runDir, "proxy.sock")
		ln, err := listenExplicitRelay(sock, &opts, id)
		if err != nil {
			return 0, err
		}
		cleanups = append(cleanups, func() { ln.Close() })
		spec.ProxySock, spec.ProxyPort = proxySockInside, ProxyPort
		spec.Binds = append(spec.Binds, bindSpec{Src: sock, Dst: proxySockInside, File: true, RW: true})
		logf("network: none; HTTP proxy relayed to %s as sandbox %s, policy %q", opts.ProxySocket, id, opts.Policy)
	}

	cg, err := newCgroup(id, limits{Memory: opts.Memory, CPUs: opts.CPUs, Pids: opts.Pids})
	if err != nil {
		return 0, err
	}
	cleanups = append(cleanups, cg.remove)

	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer w.Close()
	// Pdeathsig follows the thread that started the child: keep it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cgfd, err := cg.fd()
	if err != nil {
		return 0, err
	}
	if cgfd >= 0 {
		defer unix.Close(cgfd)
	}
	uids, gids := mappedIDs(&opts)
	initCmd := func(userns bool) *exec.Cmd {
		cmd := exec.Command("/proc/self/exe", InitCommand)
		cmd.Args[0] = "paddock"
		cmd.Env = []string{}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.ExtraFiles = []*os.File{r}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags: cloneFlags,
			// Its own session: a terminal's ^C reaches only the launcher,
			// which forwards it once.
			Setsid:    true,
			Pdeathsig: syscall.SIGKILL,
		}
		if cgfd >= 0 {
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgfd
		}
		if userns {
			cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWUSER
			cmd.SysProcAttr.UidMappings, cmd.SysProcAttr.GidMappings = idMap(uids), idMap(gids)
			cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		}
		return cmd
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH, unix.SIGCONT)
	defer signal.Stop(sigs)
	// A user namespace as well where the kernel allows one: root inside is
	// host root (the init must read the host's files to bind them) and the
	// other mapped ids are themselves, but every capability anyone inside
	// could hold is scoped to that namespace and the copied mounts are locked.
	userns := "user"
	cmd := initCmd(true)
	if err := cmd.Start(); err != nil {
		userns = "(user: not available: " + err.Error() + ")"
		cmd = initCmd(false)
		if err := cmd.Start(); err != nil {
			r.Close()
			return 0, fmt.Errorf("start sandbox: %w", err)
		}
	}
	r.Close()
	abort := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	if err := cg.enter(cmd.Process.Pid); err != nil {
		abort()
		return 0, err
	}
	logf("namespaces: mount pid ipc uts net cgroup %s; the command runs as %d:%d", userns, opts.UID, opts.GID)
	if len(cg.applied) > 0 {
		logf("limits: %s", strings.Join(cg.applied, ", "))
	}
	if spec.Exec.Nproc > 0 {
		logf("limits: rlimit NPROC=%d (--pids plus the tasks uid %d already runs)", spec.Exec.Nproc, opts.UID)
	}
	logf("limits: rlimit CORE=0")
	if net != nil {
		cleanups = append(cleanups, func() {
			if err := net.del(); err != nil {
				fmt.Fprintf(os.Stderr, "paddock: %v (the next run retries)\n", err)
			}
		})
		desc, dns, err := net.add(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
		if err != nil {
			abort()
			return 0, err
		}
		// The rootfs's resolv.conf may name a loopback stub or point into
		// its /run, neither of which exists in the sandbox.
		resolv := filepath.Join(runDir, "resolv.conf")
		if err := os.WriteFile(resolv, resolvConf(opts.RootFS, dns), 0o644); err != nil {
			abort()
			return 0, fmt.Errorf("resolv.conf: %w", err)
		}
		spec.Binds = append(spec.Binds, bindSpec{Src: resolv, Dst: "/etc/resolv.conf", File: true})
		logf("network: paddock via CNI, %s", desc)
	}
	if opts.CABundle != "" {
		logf("ca: %s mounted at %s; %s set", opts.CABundle, caInside, strings.Join(caVars, " "))
	}
	if err := json.NewEncoder(w).Encode(spec); err != nil {
		abort()
		return 0, fmt.Errorf("hand over to the sandbox: %w", err)
	}
	w.Close()

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			_ = cmd.Process.Signal(sig)
		case err := <-done:
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				return 0, fmt.Errorf("wait for the sandbox: %w", err)
			}
			return statusCode(unix.WaitStatus(cmd.ProcessState.Sys().(syscall.WaitStatus))), nil
		}
	}
}

// buildSpec turns options into the init's instructions: mounts, masks,
// environment, ids, limits, seccomp and the writable paths for Landlock.
func buildSpec(o *Options, runDir string, filter *SeccompFilter) (*initSpec, error) {
	home := os.Getenv("HOME")
	if !filepath.IsAbs(home) || filepath.Clean(home) == "/" {
		home = defaultHome
	}
	home = filepath.Clean(home)
	s := &initSpec{
		RootFS:   o.RootFS,
		Hostname: "paddock",
		Hidden:   hiddenPaths,
		Verbose:  o.Verbose,
		Tmpfs: []tmpfsSpec{
			{Path: "/tmp", Size: o.TmpSize, Mode: "1777", NoExec: true},
			{Path: home, Size: o.HomeSize, Mode: "0700", UID: o.UID, GID: o.GID},
		},
	}
	writable := []string{"/tmp", home, "/dev", "/proc"}
	for _, t := range o.Tmpfs {
		s.Tmpfs = append(s.Tmpfs, tmpfsSpec{Path: t.Path, Size: t.Size, Mode: "0755", UID: o.UID, GID: o.GID})
		writable = append(writable, t.Path)
	}
	// The rootfs's /etc/hostname and /etc/hosts name the host; the UTS
	// namespace's name replaces them, as under Docker.
	for name, body := range map[string]string{
		"hostname": s.Hostname + "\n",
		"hosts":    "127.0.0.1\tlocalhost " + s.Hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	} {
		if _, err := os.Stat(filepath.Join(o.RootFS, "etc", name)); err != nil {
			continue
		}
		src := filepath.Join(runDir, name)
		if err := os.WriteFile(src, []byte(body), 0o644); err != nil {
			return nil, fmt.Errorf("/etc/%s: %w", name, err)
		}
		s.Binds = append(s.Binds, bindSpec{Src: src, Dst: "/etc/" + name, File: true})
	}
	ws := o.Workspace
	binds := append([]Mount{ws}, o.Mounts...)
	pats := compileMasks(append(append([]string{}, DefaultMasks...), o.Masks...))
	for _, m := range binds {
		b := bindSpec{Src: m.Source, Dst: m.Dest, RW: m.Access == ReadWrite}
		if st, err := os.Stat(m.Source); err == nil && !st.IsDir() {
			b.File = true
		}
		if m.Access == Overlay {
			b.Upper, b.Work = filepath.Join(runDir, "upper"), filepath.Join(runDir, "work")
			for _, d := range []string{b.Upper, b.Work} {
				if err := os.Mkdir(d, 0o755); err != nil {
					return nil, fmt.Errorf("overlay layer: %w", err)
				}
			}
			// The layer belongs to the sandbox's user, who writes into it.
			if err := os.Chown(b.Upper, o.UID, o.GID); err != nil {
				return nil, fmt.Errorf("overlay layer: %w", err)
			}
		}
		if m.Access != ReadOnly {
			writable = append(writable, m.Dest)
		}
		s.Binds = append(s.Binds, b)
		if !b.File {
			if err := scanMasks(m.Source, m.Dest, pats, m.Access != Overlay, &s.Masks); err != nil {
				return nil, fmt.Errorf("mask secrets: %w", err)
			}
		} else if matchesAny(pats, m.Dest) {
			s.Masks.Files = append(s.Masks.Files, m.Dest)
		}
	}
	env := []string{"PATH=" + defaultPath, "HOME=" + home}
	if t := os.Getenv("TERM"); t != "" {
		env = append(env, "TERM="+t)
	}
	lang := os.Getenv("LANG")
	if lang == "" {
		lang = "C.UTF-8"
	}
	env = append(env, "LANG="+lang)
	if o.CABundle != "" {
		src, err := trustBundle(o.CABundle, o.RootFS, runDir)
		if err != nil {
			return nil, err
		}
		s.Binds = append(s.Binds, bindSpec{Src: src, Dst: caInside, File: true})
		for _, v := range caVars {
			env = append(env, v+"="+caInside)
		}
	}
	if o.Network == NetworkNone {
		p := fmt.Sprintf("http://127.0.0.1:%d", ProxyPort)
		env = append(env, "HTTP_PROXY="+p, "HTTPS_PROXY="+p, "http_proxy="+p, "https_proxy="+p,
			"NO_PROXY=localhost,127.0.0.1", "no_proxy=localhost,127.0.0.1")
	}
	for _, n := range o.EnvPass {
		if v, ok := os.LookupEnv(n); ok {
			env = setEnv(env, n, v)
		}
	}
	for _, kv := range o.Env {
		k, v, _ := strings.Cut(kv, "=")
		env = setEnv(env, k, v)
	}
	var nproc uint64
	if o.Pids > 0 {
		// RLIMIT_NPROC counts every task of the real uid on the machine,
		// so the tasks that uid already runs come on top of the limit.
		nproc = uint64(o.Pids) + uint64(tasksOf(o.UID))
	}
	s.Exec = execSpec{
		Argv: o.Command, Env: env, Dir: ws.Dest, UID: o.UID, GID: o.GID,
		Seccomp: filter, Writable: writable, Nproc: nproc,
	}
	return s, nil
}

func matchesAny(pats []pattern, p string) bool {
	rel := strings.Split(strings.Trim(p, "/"), "/")
	for _, pt := range pats {
		if pt.match(rel, false) {
			return true
		}
	}
	return false
}

func setEnv(env []string, k, v string) []string {
	for i, kv := range env {
		if strings.HasPrefix(kv, k+"=") {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}

// tasksOf counts the threads uid runs now. A /proc/PID directory belongs
// to the process's user, so only those processes' status is read.
func tasksOf(uid int) int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != uid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		if _, rest, ok := strings.Cut(string(b), "\nThreads:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				t, _ := strconv.Atoi(f[0])
				n += t
			}
		}
	}
	return n
}

// systemBundles are where Debian/Alpine, Fedora/RHEL and SUSE keep the roots.
var systemBundles = []string{"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem"}

// trustBundle returns a file that trusts both the proxy's CA and the public
// roots: the trust variables replace a tool's roots, and passthrough
// destinations present public certificates. A file holding one certificate
// (the bare CA) is joined with the rootfs's system bundle.
func trustBundle(ca, rootfs, runDir string) (string, error) {
	b, err := os.ReadFile(ca)
	if err != nil {
		return "", fmt.Errorf("ca bundle: %w", err)
	}
	n := strings.Count(string(b), "-----BEGIN CERTIFICATE-----")
	if n == 0 {
		return "", fmt.Errorf("ca bundle %s holds no PEM certificate: pass the file `paddock ca bundle` writes", ca)
	}
	if n > 1 {
		return ca, nil
	}
	for _, sys := range systemBundles {
		roots, err := os.ReadFile(filepath.Join(rootfs, sys))
		if err != nil {
			continue
		}
		out := filepath.Join(runDir, "ca-bundle.pem")
		joined := append(append(append([]byte{}, b...), '\n'), roots...)
		if err := os.WriteFile(out, joined, 0o644); err != nil {
			return "", fmt.Errorf("ca bundle: %w", err)
		}
		return out, nil
	}
	return ca, nil
}

// mappedIDs are the ids the user namespace maps to themselves: root, the
// command's, and the owners of every bound directory and its parents (root
// inside has no override over files of unmapped owners, so the init could
// not reach them to bind them).
func mappedIDs(o *Options) (uids, gids []int) {
	seenU, seenG := map[int]bool{}, map[int]bool{}
	add := func(u, g int) {
		if !seenU[u] {
			seenU[u] = true
			uids = append(uids, u)
		}
		if !seenG[g] {
			seenG[g] = true
			gids = append(gids, g)
		}
	}
	add(0, 0)
	add(o.UID, o.GID)
	for _, m := range append([]Mount{o.Workspace}, o.Mounts...) {
		for p := m.Source; ; p = filepath.Dir(p) {
			if fi, err := os.Stat(p); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					add(int(st.Uid), int(st.Gid))
				}
			}
			if p == "/" || len(uids) > 300 || len(gids) > 300 {
				break
			}
		}
	}
	return uids, gids
}

func idMap(ids []int) []syscall.SysProcIDMap {
	m := make([]syscall.SysProcIDMap, len(ids))
	for i, id := range ids {
		m[i] = syscall.SysProcIDMap{ContainerID: id, HostID: id, Size: 1}
	}
	return m
}
