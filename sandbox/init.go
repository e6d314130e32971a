package sandbox

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// InitCommand is the hidden subcommand of the paddock binary the launcher
// re-executes itself as, to become PID 1 of the sandbox.
const InitCommand = "__sandbox-init"

// Exit statuses for failures of the launcher itself, as docker uses them.
const (
	exitSetup       = 125
	exitCannotExec  = 126
	exitNotFound    = 127
	exitSignalShift = 128
)

func fatal(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "paddock: "+format+"\n", args...)
	os.Exit(code)
}

func verboseLogger(on bool) func(string, ...any) {
	return func(format string, args ...any) {
		if on {
			fmt.Fprintf(os.Stderr, "paddock: "+format+"\n", args...)
		}
	}
}

// InitMain is PID 1 of the sandbox: it builds the root, starts the
// confined command, forwards signals to it, reaps every orphan and exits with the
// command's status (128+N when a signal N ended it). It never returns.
func InitMain() {
	var s initSpec
	if err := readSpec(&s); err != nil {
		fatal(exitSetup, "sandbox init: %v", err)
	}
	if err := closeInherited(); err != nil {
		fatal(exitSetup, "sandbox init: %v", err)
	}
	logf := verboseLogger(s.Verbose)
	// Ask before anything starts, so that no signal is lost in between.
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs)
	if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
		fatal(exitSetup, "sandbox init: set hostname: %v", err)
	}
	if err := buildRoot(&s, logf); err != nil {
		fatal(exitSetup, "sandbox init: %v", err)
	}
	if err := loopbackUp(); err != nil {
		fatal(exitSetup, "sandbox init: %v", err)
	}
	if s.ProxySock != "" {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(s.ProxyPort))
		if err != nil {
			fatal(exitSetup, "sandbox init: proxy port: %v", err)
		}
		go serveBridge(ln, func() (net.Conn, error) { return net.Dial("unix", s.ProxySock) })
		logf("network: none (loopback only), HTTP proxy at 127.0.0.1:%d bridged to the node's proxy", s.ProxyPort)
	}
	s.Exec.Verbose = s.Verbose
	started := make(chan int, 1)
	go func() {
		// This goroutine's thread confines itself and forks the command,
		// which inherits the thread's credentials, capability sets,
		// no_new_privs, Landlock domain and seccomp filter. It is never
		// unlocked, so the runtime retires the thread afterwards.
		runtime.LockOSThread()
		pid, err := confineAndStart(&s.Exec)
		if err != nil {
			code := exitSetup
			if ce, ok := err.(codeError); ok {
				code = ce.code
			}
			fatal(code, "%v", err)
		}
		started <- pid
	}()
	child := <-started
	for sig := range sigs {
		switch sig {
		case unix.SIGCHLD:
			if code, done := reap(child); done {
				os.Exit(code)
			}
		case unix.SIGURG:
			// The Go runtime's own preemption signal.
		default:
			// To the command's whole process group, as a terminal would
			// deliver it: a TUI started by a shell script gets SIGWINCH too.
			if unix.Kill(-child, sig.(syscall.Signal)) != nil {
				_ = unix.Kill(child, sig.(syscall.Signal))
			}
		}
	}
}

// closeInherited marks every descriptor above stderr close-on-exec. What
// the launcher's caller left open (a directory, a socket, a file) would
// otherwise reach the command and lead out of its root and namespaces.
func closeInherited() error {
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("inherited descriptors: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			// The directory's own descriptor is gone by now: EBADF.
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
				return fmt.Errorf("inherited descriptor %d: %w", fd, err)
			}
		}
	}
	return nil
}

// reap collects every exited child; done when the command itself exited.
func reap(main int) (code int, done bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err != nil || pid <= 0 {
			return code, done
		}
		if pid == main {
			done = true
			code = statusCode(ws)
		}
	}
}

func statusCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return exitSignalShift + int(ws.Signal())
	}
	return ws.ExitStatus()
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// serveBridge relays every connection accepted on ln to a fresh upstream.
func serveBridge(ln net.Listener, dial func() (net.Conn, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go func() {
			defer c.Close()
			u, err := dial()
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(u, c); closeWrite(u); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, u); closeWrite(c); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// landlockWrites is every write-like right: reads and execution stay with
// the mounts' own read-only flags, Landlock confines where writes go.
const landlockWrites = ll.AccessFSWriteFile | ll.AccessFSRemoveDir | ll.AccessFSRemoveFile |
	ll.AccessFSMakeChar | ll.AccessFSMakeDir | ll.AccessFSMakeReg | ll.AccessFSMakeSock |
	ll.AccessFSMakeFifo | ll.AccessFSMakeBlock | ll.AccessFSMakeSym | ll.AccessFSRefer | ll.AccessFSTruncate

// codeError carries the exit status a failure to start should produce.
type codeError struct {
	code int
	err  error
}

func (e codeError) Error() string { return e.err.Error() }

// confineAndStart confines the calling, locked thread and starts the
// user's command from it: resource limits, Landlock ruleset, capabilities
// (bounding, ambient), groups and ids, all capability sets, no_new_privs,
// Landlock, seccomp last. Every step but the rlimits is per-thread.
func confineAndStart(s *execSpec) (int, error) {
	logf := verboseLogger(s.Verbose)
	for _, kv := range s.Env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			_ = os.Setenv("PATH", v)
		}
	}
	// Relative commands (./run.sh) are looked up from the working directory.
	if err := os.Chdir(s.Dir); err != nil {
		return 0, fmt.Errorf("working directory %s: %w", s.Dir, err)
	}
	path, err := exec.LookPath(s.Argv[0])
	if err != nil {
		code := exitNotFound
		if errors.Is(err, os.ErrPermission) {
			code = exitCannotExec
		}
		return 0, codeError{code, fmt.Errorf("%s: %w", s.Argv[0], err)}
	}
	if s.Nproc > 0 {
		if err := unix.Setrlimit(unix.RLIMIT_NPROC, &unix.Rlimit{Cur: s.Nproc, Max: s.Nproc}); err != nil {
			return 0, fmt.Errorf("rlimit nproc: %w", err)
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return 0, fmt.Errorf("rlimit core: %w", err)
	}
	llfd, llflags, abi, err := landlockRuleset(s.Writable)
	if err != nil {
		return 0, fmt.Errorf("landlock: %w", err)
	}
	if err := dropPrivileges(s.UID, s.GID); err != nil {
		return 0, err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("no_new_privs: %w", err)
	}
	if llfd >= 0 {
		err := ll.LandlockRestrictSelf(llfd, llflags)
		unix.Close(llfd)
		if err != nil {
			return 0, fmt.Errorf("landlock: %w", err)
		}
		logf("landlock: ABI %d, writes confined to %s", abi, strings.Join(s.Writable, " "))
	} else {
		logf("landlock: not available on this kernel; skipped (the read-only mounts still apply)")
	}
	if s.Seccomp != nil {
		logf("seccomp: %s profile, %d rules, %d BPF instructions", s.Seccomp.Source, s.Seccomp.Rules, len(s.Seccomp.Prog))
		if err := s.Seccomp.install(); err != nil {
			return 0, err
		}
	}
	p, err := os.StartProcess(path, s.Argv, &os.ProcAttr{
		Dir:   s.Dir,
		Env:   s.Env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		// Its own session: the command gets no controlling terminal, so it
		// cannot push keystrokes into the user's shell (TIOCSTI); the user's
		// terminal still reaches it through the inherited descriptors.
		Sys: &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return 0, codeError{exitCannotExec, fmt.Errorf("%s: %w", s.Argv[0], err)}
	}
	return p.Pid, nil
}

func landlockRuleset(writable []string) (fd int, flags uint32, abi int, err error) {
	abi, verr := ll.LandlockGetABIVersion()
	if verr != nil {
		return -1, 0, 0, nil
	}
	cfg, err := landlock.NewConfig(landlock.AccessFSSet(landlockWrites))
	if err != nil {
		return -1, 0, 0, err
	}
	rules := []landlock.Rule{landlock.PathAccess(landlock.AccessFSSet(landlockWrites), writable...).IgnoreIfMissing()}
	fd, flags, err = cfg.BestEffort().NewRulesetFD(rules...)
	return fd, flags, abi, err
}

// dropPrivileges empties all five capability sets and switches ids. The
// bounding set needs CAP_SETPCAP, so it goes first, while still root.
func dropPrivileges(uid, gid int) error {
	last := 63
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = n
		}
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop bounding capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	// Raw syscalls: the libc and Go wrappers change every thread of the
	// process, and init's other threads must stay root.
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("set gid %d: %w", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("set uid %d: %w", uid, e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear capabilities: %w", err)
	}
	return nil
}
