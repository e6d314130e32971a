package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// filer is what paddockd's listeners are (*net.TCPListener, *net.UDPConn).
type filer interface {
	File() (*os.File, error)
}

// SupervisorConfig is what paddockd passes to start the proxy process.
type SupervisorConfig struct {
	Proxy Config // JSON part: policy dir, CA dir, resolver, upstream CA, explicit port, metrics
	// User runs the proxy: a user name or "uid:gid".
	User string
	// Listeners handed to the child; each may be nil.
	TCP, DNSUDP, DNSTCP filer
	// Explicit is paddockd's root-only explicit socket (*net.UnixListener);
	// nil: none.
	Explicit filer
	// Audit receives the proxy's audit lines, whole lines per Write. The
	// child writes them into a pipe: the log file stays paddockd's, which
	// can reopen it after rotation (the unprivileged child could not).
	Audit io.Writer
	Log   *slog.Logger
	// Exe is the binary to run with argv[1] == ChildArg (default /proc/self/exe).
	Exe    string
	Stderr io.Writer // the child's log (default os.Stderr)
	// Env is added to the child's otherwise empty environment. Variables of
	// paddockd named PADDOCK_SECRET_* are passed through as well, so policies
	// can use them with secretEnv.
	Env []string
}

// SecretEnvPrefix marks paddockd environment variables the proxy inherits.
const SecretEnvPrefix = "PADDOCK_SECRET_"

// Supervisor runs the unprivileged proxy process, feeds it the sandbox list,
// and restarts it with backoff when it dies. The listeners stay open in
// paddockd meanwhile: connections wait or fail, they never go around it.
type Supervisor struct {
	cfg      SupervisorConfig
	uid, gid uint32
	files    []*os.File
	auditR   *os.File // read end of the audit pipe
	log      *slog.Logger

	mu      sync.Mutex
	list    []byte // last sandbox list, one JSON line
	stdin   io.WriteCloser
	pid     int
	running bool
}

// ParseUser resolves "name" or "uid:gid".
func ParseUser(s string) (uid, gid uint32, err error) {
	if a, b, ok := strings.Cut(s, ":"); ok {
		u, err1 := strconv.ParseUint(a, 10, 32)
		g, err2 := strconv.ParseUint(b, 10, 32)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("proxy user %q: want a user name or uid:gid numbers", s)
		}
		return uint32(u), uint32(g), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, 0, fmt.Errorf("proxy user %q: %w (use uid:gid numbers for a user without a passwd entry)", s, err)
	}
	uid64, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid64, _ := strconv.ParseUint(u.Gid, 10, 32)
	return uint32(uid64), uint32(gid64), nil
}

// NewSupervisor resolves the user, duplicates the listeners, opens the audit
// log and gives the CA dir to the proxy user. On error nothing stays open.
func NewSupervisor(cfg SupervisorConfig) (*Supervisor, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Exe == "" {
		cfg.Exe = "/proc/self/exe"
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	uid, gid, err := ParseUser(cfg.User)
	if err != nil {
		return nil, err
	}
	if uid == 0 {
		return nil, fmt.Errorf("proxy user %q is root: the proxy must run unprivileged", cfg.User)
	}
	s := &Supervisor{cfg: cfg, uid: uid, gid: gid, log: cfg.Log, list: []byte("[]\n")}
	fail := func(err error) (*Supervisor, error) {
		for _, f := range s.files {
			f.Close()
		}
		return nil, err
	}
	if err := os.MkdirAll(cfg.Proxy.CADir, 0o700); err != nil {
		return fail(fmt.Errorf("ca dir: %w", err))
	}
	if err := os.Chown(cfg.Proxy.CADir, int(uid), int(gid)); err != nil {
		return fail(fmt.Errorf("ca dir: %w", err))
	}
	// Files already in the CA dir (a previous run) must stay the proxy's.
	if entries, err := os.ReadDir(cfg.Proxy.CADir); err == nil {
		for _, e := range entries {
			_ = os.Lchown(cfg.Proxy.CADir+"/"+e.Name(), int(uid), int(gid))
		}
	}
	// ExtraFiles[i] becomes fd 3+i in the child.
	add := func(f filer, fd *int) error {
		if f == nil {
			return nil
		}
		file, err := f.File()
		if err != nil {
			return fmt.Errorf("dup listener: %w", err)
		}
		s.files = append(s.files, file)
		*fd = 2 + len(s.files)
		return nil
	}
	pc := &s.cfg.Proxy
	for _, x := range []struct {
		f  filer
		fd *int
	}{{cfg.TCP, &pc.ListenerFD}, {cfg.DNSUDP, &pc.DNSUDPFD}, {cfg.DNSTCP, &pc.DNSTCPFD}, {cfg.Explicit, &pc.ExplicitFD}} {
		if err := add(x.f, x.fd); err != nil {
			return fail(err)
		}
	}
	if cfg.Audit != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return fail(fmt.Errorf("audit pipe: %w", err))
		}
		// paddockd keeps the write end too, so the reader never sees EOF
		// while the child restarts.
		s.files = append(s.files, w)
		pc.AuditFD = 2 + len(s.files)
		s.auditR = r
	}
	return s, nil
}

// SetSandboxes sends the full sandbox list to the proxy (now and after every
// restart).
func (s *Supervisor) SetSandboxes(list []api.Sandbox) error {
	if list == nil {
		list = []api.Sandbox{}
	}
	b, err := json.Marshal(list)
	if err != nil {
		return fmt.Errorf("encode sandboxes: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = append(b, '\n')
	if s.stdin != nil {
		if _, err := s.stdin.Write(s.list); err != nil {
			return fmt.Errorf("send sandboxes to proxy: %w", err)
		}
	}
	return nil
}

// Pid is the running child's pid, 0 when none.
func (s *Supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// Running reports whether the proxy process is up ("proxy" component health).
func (s *Supervisor) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// Run starts the proxy and keeps it running until ctx ends; then it stops
// the child (SIGTERM, SIGKILL after 5 s) and closes the inherited files.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.auditR != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.copyAudit()
		}()
		// Runs after the write ends are closed below: drain, then close.
		defer s.auditR.Close()
		defer func() { <-done }()
	}
	defer func() {
		for _, f := range s.files {
			f.Close()
		}
	}()
	backoff := time.Second
	for {
		started := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > time.Minute {
			backoff = time.Second
		}
		s.log.Error("proxy process died; restarting", "reason", fmt.Sprint(err), "backoff", backoff.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// copyAudit moves audit lines from the pipe to cfg.Audit, one Write per
// line, until the pipe is closed.
func (s *Supervisor) copyAudit() {
	br := bufio.NewReaderSize(s.auditR, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			if _, werr := s.cfg.Audit.Write(line); werr != nil {
				s.log.Error("write audit log", "reason", werr.Error())
			}
		}
		if err != nil {
			return
		}
	}
}

func (s *Supervisor) runOnce(ctx context.Context) error {
	cfgJSON, err := json.Marshal(s.cfg.Proxy)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.cfg.Exe, ChildArg)
	cmd.Args[0] = "paddock-proxy"
	cmd.Env = []string{ConfigEnv + "=" + string(cfgJSON), "PATH=/usr/bin:/bin"}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, SecretEnvPrefix) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, s.cfg.Env...)
	cmd.ExtraFiles = s.files
	cmd.Stdout, cmd.Stderr = s.cfg.Stderr, s.cfg.Stderr
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: s.uid, Gid: s.gid, Groups: []uint32{}},
		Setpgid:    true,
		// The child dies with paddockd (kill -9 included): an orphan would
		// keep the listeners' ports and a stale sandbox list, and the next
		// paddockd could not bind them.
		Pdeathsig: syscall.SIGKILL,
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start proxy: %w", err)
	}
	s.mu.Lock()
	s.stdin, s.pid, s.running = stdin, cmd.Process.Pid, true
	_, werr := stdin.Write(s.list)
	s.mu.Unlock()
	if werr != nil {
		s.log.Warn("send sandboxes to proxy", "reason", werr.Error())
	}
	s.log.Info("proxy process started", "pid", cmd.Process.Pid, "uid", s.uid, "gid", s.gid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			err = <-done
		}
	}
	s.mu.Lock()
	s.stdin, s.pid, s.running = nil, 0, false
	s.mu.Unlock()
	stdin.Close()
	if err == nil {
		err = errors.New("exited with status 0")
	}
	return err
}
