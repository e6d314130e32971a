package sandbox

import (
	"encoding/binary"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// evalFilter runs the compiled program in x/net/bpf's VM against a
// seccomp_data built for the native architecture (little-endian hosts).
func evalFilter(t *testing.T, f *SeccompFilter, name string, args ...uint64) uint32 {
	t.Helper()
	info, err := arch.GetInfo("")
	if err != nil {
		t.Fatal(err)
	}
	nr, ok := info.SyscallNames[name]
	if !ok {
		t.Fatalf("unknown syscall %s", name)
	}
	insts := make([]bpf.Instruction, len(f.Prog))
	for i, r := range f.Prog {
		insts[i] = r.Disassemble()
	}
	vm, err := bpf.NewVM(insts)
	if err != nil {
		t.Fatal(err)
	}
	// The VM loads words big-endian; the kernel hands the filter native
	// (little-endian) words: store each word so that both read the same.
	data := make([]byte, 64)
	binary.BigEndian.PutUint32(data[0:], uint32(nr))
	binary.BigEndian.PutUint32(data[4:], uint32(info.ID))
	for i, a := range args {
		binary.BigEndian.PutUint32(data[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(data[16+8*i+4:], uint32(a>>32))
	}
	ret, err := vm.Run(data)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(ret)
}

func TestDefaultSeccompDecisions(t *testing.T) {
	f, err := CompileSeccomp("")
	if err != nil {
		t.Fatal(err)
	}
	allow := uint32(unix.SECCOMP_RET_ALLOW)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	cases := []struct {
		name string
		args []uint64
		want uint32
	}{
		{"read", nil, allow},
		{"execve", nil, allow},
		{"socket", []uint64{unix.AF_INET, unix.SOCK_STREAM | unix.SOCK_CLOEXEC}, allow},
		{"socket", []uint64{unix.AF_INET6, unix.SOCK_DGRAM}, allow},
		{"socket", []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, allow},
		{"socket", []uint64{unix.AF_INET, unix.SOCK_RAW}, eperm},
		{"socket", []uint64{unix.AF_INET, unix.SOCK_RAW | unix.SOCK_NONBLOCK}, eperm},
		{"socket", []uint64{unix.AF_PACKET, unix.SOCK_DGRAM}, eperm},
		{"ioctl", []uint64{0, unix.TIOCSTI}, eperm},
		{"ioctl", []uint64{0, unix.TCGETS}, allow},
		{"ptrace", nil, eperm},
		{"bpf", nil, eperm},
		{"mount", nil, eperm},
		{"unshare", nil, eperm},
		{"setns", nil, eperm},
		{"keyctl", nil, eperm},
		{"userfaultfd", nil, eperm},
		{"io_uring_setup", nil, eperm},
		{"perf_event_open", nil, eperm},
		{"clone", []uint64{unix.CLONE_NEWUSER}, eperm},
		{"clone", []uint64{uint64(unix.SIGCHLD)}, allow},
		{"reboot", nil, eperm},
	}
	for _, c := range cases {
		if got := evalFilter(t, f, c.name, c.args...); got != c.want {
			t.Errorf("%s%v: got %#x, want %#x", c.name, c.args, got, c.want)
		}
	}
}
