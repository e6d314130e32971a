// Command probe runs inside `paddock run` for the sandbox tests, so that
// they need no interpreter on the machine: it tries what the sandbox must
// refuse, hogs memory, or behaves like a tiny full-screen TUI.
package main

import (
	"errors"
	"fmt"
	"os"

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
	case "hog":
		hog()
	case "tui":
		tui()
	}
}
