// Command probe runs inside `paddock run` for the sandbox tests, so that
// they need no interpreter on the machine: it tries what the sandbox must
// refuse, hogs memory, or behaves like a tiny full-screen TUI.
package main

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func verdict(name string, err error) {
	switch {
	case errors.Is(err, unix.EPERM):
		fmt.Println(name, "EPERM")
	case err == nil:
		fmt.Println(name, "ALLOWED")
	default:
		fmt.Println(name, err)
	}
}

func sock(domain, typ, proto int) error {
	fd, err := unix.Socket(domain, typ, proto)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func syscalls() {
	verdict("mount", unix.Mount("none", "/tmp", "tmpfs", 0, ""))
	verdict("unshare", unix.Unshare(unix.CLONE_NEWNS))
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_ATTACH, 1, 0, 0, 0, 0)
	verdict("ptrace", errnoErr(e))
	_, _, e = unix.Syscall(unix.SYS_BPF, 0, 0, 0)
	verdict("bpf", errnoErr(e))
	verdict("raw", sock(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP))
	verdict("packet", sock(unix.AF_PACKET, unix.SOCK_RAW, 0))
	verdict("tcp", sock(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0))
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func hog() {
	var keep [][]byte
	for i := 0; i < 200; i++ {
		b := make([]byte, 10<<20)
		for j := range b {
			if j%4096 == 0 {
				b[j] = 1
			}
		}
		keep = append(keep, b)
	}
	fmt.Println("survived", len(keep))
}

func tui() {
	old, err := unix.IoctlGetTermios(0, unix.TCGETS)
	if err != nil {
		fmt.Println("not a terminal:", err)
		os.Exit(1)
	}
	raw := *old
	raw.Lflag &^= unix.ICANON | unix.ECHO
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(0, unix.TCSETS, &raw); err != nil {
		fmt.Println("raw mode:", err)
		os.Exit(1)
	}
	defer unix.IoctlSetTermios(0, unix.TCSETS, old)
	ws, _ := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ)
	fmt.Printf("\x1b[2J\x1b[HPADDOCK-TUI ready %dx%d", ws.Col, ws.Row)
	b := make([]byte, 1)
	os.Stdin.Read(b)
	fmt.Printf("\x1b[2;1Hgot key %s", b)
	os.Stdin.Read(b)
}

func main() {
	switch os.Args[1] {
	case "syscalls":
		syscalls()
	case "deny":
		deny()
	case "compat":
		compat(os.Args[2])
	case "clone":
		cloneNS()
	case "handle":
		handle(os.Args[2])
	case "memfd":
		memfdExec()
	case "nofile":
		nofile()
	case "fill":
		fill(os.Args[2])
	case "hog":
		hog()
	case "tui":
		tui()
	}
}

// compat makes one syscall through an ABI the filter must refuse as a
// whole: ia32 (int $0x80) or x32 (the x86_64 entry with bit 30 set).
// Reaching the print after it means the kernel ran or refused it; a
// filter that kills the process prints nothing.
func compat(which string) {
	fmt.Println("trying", which)
	var r uintptr
	switch which {
	case "ia32-getpid":
		r = int80(20, 0, 0, 0)
	case "ia32-unshare":
		r = int80(310, unix.CLONE_NEWUSER, 0, 0)
	case "x32-getpid":
		r, _, _ = unix.RawSyscall(0x40000000|unix.SYS_GETPID, 0, 0, 0)
	}
	fmt.Println(which, "returned", int(r))
}

// cloneNS asks clone(2) for each namespace; a child that is created
// exits at once, without returning into the Go runtime.
func cloneNS() {
	for _, f := range []struct {
		name string
		flag uintptr
	}{{"newuser", unix.CLONE_NEWUSER}, {"newns", unix.CLONE_NEWNS}, {"newnet", unix.CLONE_NEWNET},
		{"newpid", unix.CLONE_NEWPID}, {"newuts", unix.CLONE_NEWUTS}, {"newipc", unix.CLONE_NEWIPC},
		{"newcgroup", unix.CLONE_NEWCGROUP}} {
		pid, _, e := unix.RawSyscall6(unix.SYS_CLONE, f.flag|uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if e == 0 && pid == 0 {
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		if e == 0 {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(int(pid), &ws, 0, nil)
		}
		verdict("clone-"+f.name, errnoErr(e))
	}
	// clone3 takes its flags in memory a filter cannot read: it must fail
	// with ENOSYS, so that libc falls back to the filtered clone.
	args := struct{ flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls uint64 }{
		flags: unix.CLONE_NEWUSER, exitSignal: uint64(unix.SIGCHLD)}
	pid, _, e := unix.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args), 0)
	if e == 0 && pid == 0 {
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	verdict("clone3", errnoErr(e))
}

// handle reopens a path by file handle, which bypasses every path-based
// view (masks, hidden directories) and needs CAP_DAC_READ_SEARCH.
func handle(path string) {
	h, mnt, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	verdict("name_to_handle_at", err)
	if err != nil {
		h = unix.NewFileHandle(1, make([]byte, 8))
	}
	fd, err := unix.OpenByHandleAt(unix.AT_FDCWD, h, unix.O_RDONLY)
	if err == nil {
		unix.Close(fd)
	}
	_ = mnt
	verdict("open_by_handle_at", err)
}

// memfdExec runs /bin/true from an anonymous memory file, the way a
// downloaded binary could run although /tmp and /dev/shm are noexec.
func memfdExec() {
	fd, err := unix.MemfdCreate("x", 0)
	if err != nil {
		verdict("memfd_create", err)
		return
	}
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		fmt.Println("read /bin/true:", err)
		return
	}
	if _, err := unix.Write(fd, b); err != nil {
		fmt.Println("write memfd:", err)
		return
	}
	p, err := os.StartProcess(fmt.Sprintf("/proc/self/fd/%d", fd), []string{"true"}, &os.ProcAttr{Files: []*os.File{nil, os.Stdout, os.Stderr}})
	if err != nil {
		verdict("memfd-exec", err)
		return
	}
	st, _ := p.Wait()
	fmt.Println("memfd-exec ran, exit", st.ExitCode())
}

// nofile opens descriptors until the kernel refuses (bounded).
func nofile() {
	n := 0
	var err error
	for ; n < 1<<20; n++ {
		var fd int
		if fd, err = unix.Open("/dev/null", unix.O_RDONLY, 0); err != nil {
			break
		}
		_ = fd
	}
	fmt.Println("opened", n, err)
}

// fill writes 1 MiB blocks into path until the filesystem refuses
// (bounded at 8 GiB).
func fill(path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Println("create:", err)
		return
	}
	buf := make([]byte, 1<<20)
	n := 0
	for ; n < 8192; n++ {
		if _, err = f.Write(buf); err != nil {
			break
		}
	}
	fmt.Println("wrote", n, "MiB:", err)
}

type sysc struct {
	name string
	nr   uintptr
}

// denied are refused to a process with no capabilities under paddock's
// seccomp filter; each is called with zero arguments.
var denied = []sysc{
	{"open_tree", unix.SYS_OPEN_TREE}, {"fsopen", unix.SYS_FSOPEN}, {"fsmount", unix.SYS_FSMOUNT},
	{"fspick", unix.SYS_FSPICK}, {"fsconfig", unix.SYS_FSCONFIG}, {"move_mount", unix.SYS_MOVE_MOUNT},
	{"mount_setattr", unix.SYS_MOUNT_SETATTR}, {"umount2", unix.SYS_UMOUNT2}, {"pivot_root", unix.SYS_PIVOT_ROOT},
	{"chroot", unix.SYS_CHROOT}, {"setns", unix.SYS_SETNS}, {"keyctl", unix.SYS_KEYCTL}, {"add_key", unix.SYS_ADD_KEY},
	{"request_key", unix.SYS_REQUEST_KEY}, {"perf_event_open", unix.SYS_PERF_EVENT_OPEN},
	{"io_uring_setup", unix.SYS_IO_URING_SETUP}, {"io_uring_enter", unix.SYS_IO_URING_ENTER},
	{"io_uring_register", unix.SYS_IO_URING_REGISTER}, {"userfaultfd", unix.SYS_USERFAULTFD},
	{"init_module", unix.SYS_INIT_MODULE}, {"finit_module", unix.SYS_FINIT_MODULE},
	{"delete_module", unix.SYS_DELETE_MODULE}, {"kexec_file_load", unix.SYS_KEXEC_FILE_LOAD},
	{"ptrace_traceme", unix.SYS_PTRACE}, {"process_vm_readv", unix.SYS_PROCESS_VM_READV},
	{"process_vm_writev", unix.SYS_PROCESS_VM_WRITEV}, {"open_by_handle_at", unix.SYS_OPEN_BY_HANDLE_AT},
	{"swapon", unix.SYS_SWAPON}, {"reboot", unix.SYS_REBOOT}, {"settimeofday", unix.SYS_SETTIMEOFDAY},
	{"clock_settime", unix.SYS_CLOCK_SETTIME}, {"acct", unix.SYS_ACCT}, {"quotactl", unix.SYS_QUOTACTL},
	{"syslog", unix.SYS_SYSLOG}, {"vhangup", unix.SYS_VHANGUP}, {"fanotify_init", unix.SYS_FANOTIFY_INIT},
	{"bpf", unix.SYS_BPF}, {"mount", unix.SYS_MOUNT}, {"unshare", unix.SYS_UNSHARE},
}

func deny() {
	for _, s := range append(denied, archDenied...) {
		_, _, e := unix.RawSyscall6(s.nr, 0, 0, 0, 0, 0, 0)
		verdict(s.name, errnoErr(e))
	}
}
