package world

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"golang.org/x/sys/unix"
)

// MetricsAddr is where paddockd serves metrics inside the node namespace;
// every world has its own namespace, so one fixed port never collides.
const MetricsAddr = "127.0.0.1:9464"

// DaemonOptions shape a paddockd run.
type DaemonOptions struct {
	// Flags replace the default flag list (DefaultDaemonFlags) when non-nil.
	Flags []string
	// Extra flags are appended to the defaults (or to Flags).
	Extra []string
	// Ready bounds the wait for the API to answer Status; default 10s.
	Ready time.Duration
	// Detach starts paddockd in its own session, so that it outlives the
	// process that started it (tools/world up).
	Detach bool
}

// Daemon is paddockd running inside the node namespace.
type Daemon struct {
	Binary     string
	Args       []string
	Socket     string
	StateDir   string
	LogDir     string
	BPFFSDir   string
	CADir      string
	StderrFile string

	w      *World
	ready  time.Duration
	detach bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status once done is closed
}

// DefaultDaemonFlags is the flag list StartDaemon passes: every path
// inside the world dir, bpffs under /sys/fs/bpf/paddock-<prefix>, upstream
// DNS and TLS trust pointing at the internet namespace's servers, the proxy
// as nobody. Later flags win, so StartDaemon's extra flags override these.
func (w *World) DefaultDaemonFlags() []string {
	return []string{
		"--api-socket", w.DaemonSocket(),
		"--explicit-socket", w.ExplicitSocket(),
		"--state-dir", filepath.Join(w.Dir, "state"),
		"--log-dir", filepath.Join(w.Dir, "log"),
		"--bpffs-dir", w.BPFFSDir(),
		"--metrics-addr", MetricsAddr,
		"--policy-dir", w.PolicyDir(),
		"--ca-dir", filepath.Join(w.Dir, "ca"),
		"--resolver", DNSAddr.String() + ":53",
		"--upstream-ca", w.CAFile,
		// A test machine has no dedicated proxy account; nobody is the
		// unprivileged user every Linux system has.
		"--proxy-user", "nobody",
	}
}

// ExplicitSocket is where the world's paddockd serves the explicit proxy
// to root relays (`paddock run --network none --proxy-socket`).
func (w *World) ExplicitSocket() string { return filepath.Join(w.Dir, "explicit.sock") }

// BPFFSDir is the world's pin directory.
func (w *World) BPFFSDir() string { return "/sys/fs/bpf/paddock-" + w.Prefix }

// StartDaemon runs paddockd with the default flags plus extra, waits until
// its API answers and fails t otherwise. The world stops it at teardown.
func (w *World) StartDaemon(t testing.TB, extra ...string) *Daemon {
	t.Helper()
	d, err := w.LaunchDaemon(DaemonOptions{Extra: extra})
	if err != nil {
		t.Fatalf("start paddockd: %v", err)
	}
	return d
}

// LaunchDaemon is StartDaemon without a test.
func (w *World) LaunchDaemon(opts DaemonOptions) (*Daemon, error) {
	flags := opts.Flags
	if flags == nil {
		flags = w.DefaultDaemonFlags()
	}
	d := &Daemon{
		Binary:     filepath.Join(w.BinDir, "paddockd"),
		Args:       append(append([]string(nil), flags...), opts.Extra...),
		Socket:     w.DaemonSocket(),
		StateDir:   filepath.Join(w.Dir, "state"),
		LogDir:     filepath.Join(w.Dir, "log"),
		BPFFSDir:   w.BPFFSDir(),
		CADir:      filepath.Join(w.Dir, "ca"),
		StderrFile: filepath.Join(w.Dir, "paddockd.stderr"),
		w:          w,
		ready:      opts.Ready,
		detach:     opts.Detach,
	}
	if d.ready == 0 {
		d.ready = 10 * time.Second
	}
	if _, err := os.Stat(d.Binary); err != nil {
		return nil, fmt.Errorf("paddockd binary: %w (run `make build`, or set PADDOCK_BIN)", err)
	}
	for _, dir := range []string{d.StateDir, d.LogDir, d.CADir, w.PolicyDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	if err := ensureBPFFS(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.BPFFSDir, 0o700); err != nil {
		return nil, fmt.Errorf("bpffs dir: %w", err)
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil, fmt.Errorf("world %s is torn down", w.Prefix)
	}
	w.daemons = append(w.daemons, d)
	w.mu.Unlock()
	if err := d.start(); err != nil {
		return d, err
	}
	return d, nil
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf when nothing is mounted there.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w", err)
	}
	return nil
}

func (d *Daemon) start() error {
	done, err := d.spawn()
	if err != nil {
		return err
	}
	return d.waitReady(done)
}

func (d *Daemon) spawn() (chan struct{}, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		return nil, fmt.Errorf("paddockd already running (pid %d)", d.cmd.Process.Pid)
	}
	stderr, err := os.OpenFile(d.StderrFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("paddockd log: %w", err)
	}
	fmt.Fprintf(stderr, "=== %s start %s %v\n", time.Now().Format(time.RFC3339Nano), d.Binary, d.Args)
	// nsenter execs paddockd in place: its pid is paddockd's. Unlike `ip
	// netns exec` it leaves /sys (and /sys/fs/bpf) alone.
	cmd := exec.Command("nsenter", append([]string{"--net=" + d.w.NodePath(), "--", d.Binary}, d.Args...)...)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.Env = append(os.Environ(), "PADDOCK_BIN="+d.w.BinDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: d.detach}
	if err := cmd.Start(); err != nil {
		stderr.Close()
		return nil, fmt.Errorf("start paddockd: %w", err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		err := cmd.Wait()
		stderr.Close()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(done)
	}(d.done)
	return d.done, nil
}

func (d *Daemon) waitReady(done chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.ready)
	defer cancel()
	c := api.NewClient(d.Socket)
	var last error
	for {
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Status(sctx)
		scancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-done:
			d.mu.Lock()
			exit := d.err
			d.cmd = nil
			d.mu.Unlock()
			return fmt.Errorf("paddockd exited before answering (%v); see %s", exit, d.StderrFile)
		case <-ctx.Done():
			_ = d.Kill()
			return fmt.Errorf("paddockd did not answer Status within %s: %v; see %s", d.ready, last, d.StderrFile)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitReady waits up to timeout for paddockd to report Ready and returns its
// last status; the error says which component held it back.
func (d *Daemon) WaitReady(timeout time.Duration) (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := d.Client()
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Ready {
			return st, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("paddockd not ready after %s: %s %v", timeout, st.Message, st.Components)
			}
			return st, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Metrics fetches paddockd's /metrics page from inside the node namespace.
func (d *Daemon) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+MetricsAddr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := HTTPClient(d.w.NodePath(), nil).Do(req)
	if err != nil {
		return "", fmt.Errorf("paddockd metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", fmt.Errorf("paddockd metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("paddockd metrics: %s", resp.Status)
	}
	return string(b), nil
}

// Client returns an API client for the daemon's socket.
func (d *Daemon) Client() *api.Client { return api.NewClient(d.Socket) }

// Pid returns paddockd's pid, 0 when it is not running.
func (d *Daemon) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Stop sends SIGTERM and waits up to 10 s, then SIGKILL. Stopping a daemon
// that is not running is fine.
func (d *Daemon) Stop() error { return d.signal(syscall.SIGTERM, 10*time.Second) }

// Kill sends SIGKILL: the crash case, pinned state stays behind.
func (d *Daemon) Kill() error { return d.signal(syscall.SIGKILL, 10*time.Second) }

// Restart stops paddockd and starts it again with the same flags.
func (d *Daemon) Restart() error {
	if err := d.Stop(); err != nil {
		return err
	}
	return d.start()
}

// Exited reports whether paddockd has exited, and how.
func (d *Daemon) Exited() (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done == nil {
		return false, nil
	}
	select {
	case <-d.done:
		return true, d.err
	default:
		return false, nil
	}
}

func (d *Daemon) signal(sig syscall.Signal, wait time.Duration) error {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-done
		d.mu.Lock()
		d.cmd = nil
		d.mu.Unlock()
		return fmt.Errorf("paddockd (pid %d) ignored %v for %s: killed", cmd.Process.Pid, sig, wait)
	}
	d.mu.Lock()
	d.cmd = nil
	d.mu.Unlock()
	return nil
}
