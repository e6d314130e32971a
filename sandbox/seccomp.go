package sandbox

import (
	"fmt"
	"os"
	"runtime"

	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/moby/profiles/seccomp"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
	"unsafe"
)

// extraDenied are refused with EPERM on top of Docker's default profile,
// whatever a profile says: they let a process escape or widen its view
// (namespaces, mounts, tracing, BPF, keyrings, io_uring).
var extraDenied = []string{
	"bpf", "perf_event_open", "ptrace", "process_vm_readv", "process_vm_writev",
	"mount", "umount2", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick",
	"mount_setattr", "pivot_root", "unshare", "setns", "keyctl", "add_key", "request_key",
	"userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
}

// SeccompFilter is a compiled classic-BPF seccomp program.
type SeccompFilter struct {
	Source string               // "default" or the profile's path
	Rules  int                  // syscall rules compiled
	Prog   []bpf.RawInstruction `json:"prog"`
	Notes  []string             `json:"-"` // names the running arch does not know
}

// CompileSeccomp turns an OCI/Docker JSON profile (path "" = Docker's default
// profile from github.com/moby/profiles) into a BPF program for this
// architecture, resolved for a process with no capabilities, with the extra
// denials prepended. Syscall numbers come from go-seccomp-bpf's tables; the
// program is emitted here because that module's assembler leaves an
// argument, not the syscall number, in the accumulator after a failed
// argument check, so later rules would compare against the wrong value.
func CompileSeccomp(path string) (*SeccompFilter, error) {
	spec := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}
	var (
		prof *specs.LinuxSeccomp
		err  error
	)
	src := "default"
	if path == "" {
		prof, err = seccomp.GetDefaultProfile(spec)
	} else {
		src = path
		body, rerr := os.ReadFile(path)
		if rerr != nil {
			return nil, fmt.Errorf("read seccomp profile: %w", rerr)
		}
		prof, err = seccomp.LoadProfile(string(body), spec)
	}
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: %w", src, err)
	}
	if prof == nil {
		return nil, fmt.Errorf("seccomp profile %s is empty: give it a defaultAction and syscalls", src)
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("seccomp: %w", err)
	}
	insts, rules, notes, err := compileProfile(prof, info)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: %w", src, err)
	}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: assemble: %w", src, err)
	}
	return &SeccompFilter{Source: src, Rules: rules, Prog: raw, Notes: notes}, nil
}

func ociAction(a specs.LinuxSeccompAction, errno *uint) (uint32, error) {
	e := uint32(unix.EPERM)
	if errno != nil {
		e = uint32(*errno)
	}
	switch a {
	case specs.ActAllow:
		return unix.SECCOMP_RET_ALLOW, nil
	case specs.ActErrno:
		return unix.SECCOMP_RET_ERRNO | e&unix.SECCOMP_RET_DATA, nil
	case specs.ActKill, specs.ActKillThread:
		return unix.SECCOMP_RET_KILL_THREAD, nil
	case specs.ActKillProcess:
		return unix.SECCOMP_RET_KILL_PROCESS, nil
	case specs.ActTrap:
		return unix.SECCOMP_RET_TRAP, nil
	case specs.ActLog:
		return unix.SECCOMP_RET_LOG, nil
	}
	return 0, fmt.Errorf("action %q is not supported (no tracer or listener runs beside the sandbox)", a)
}

// cond is one argument check: (arg & mask) op value, 64-bit.
type cond struct {
	arg   uint
	op    specs.LinuxSeccompOperator
	mask  uint64
	value uint64
}

// rule matches a syscall when any alternative holds (an alternative holds
// when all its checks do); no alternatives means always.
type rule struct {
	nr     uint32
	alts   [][]cond
	action uint32
}

// alternatives groups one OCI rule's checks as runc does: checks on
// distinct arguments are ANDed, several on the same argument are ORed.
func alternatives(args []specs.LinuxSeccompArg) ([][]cond, error) {
	var out []cond
	seen := map[uint]bool{}
	distinct := true
	for _, a := range args {
		if a.Index > 5 {
			return nil, fmt.Errorf("argument index %d is out of range 0-5", a.Index)
		}
		c := cond{arg: a.Index, op: a.Op, mask: ^uint64(0), value: a.Value}
		switch a.Op {
		case specs.OpEqualTo, specs.OpNotEqual, specs.OpGreaterThan, specs.OpGreaterEqual, specs.OpLessThan, specs.OpLessEqual:
		case specs.OpMaskedEqual:
			c.mask, c.value = a.Value, a.ValueTwo
		default:
			return nil, fmt.Errorf("argument operator %q is not supported", a.Op)
		}
		if seen[a.Index] {
			distinct = false
		}
		seen[a.Index] = true
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, nil
	}
	if distinct {
		return [][]cond{out}, nil
	}
	alts := make([][]cond, len(out))
	for i, c := range out {
		alts[i] = []cond{c}
	}
	return alts, nil
}

func compileProfile(prof *specs.LinuxSeccomp, info *arch.Info) ([]bpf.Instruction, int, []string, error) {
	def, err := ociAction(prof.DefaultAction, prof.DefaultErrnoRet)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("defaultAction: %w", err)
	}
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	num := func(n string) (uint32, bool) {
		v, ok := info.SyscallNames[n]
		return uint32(v | info.SeccompMask), ok
	}
	// Refusals first, so that no allow in the profile can shadow them.
	var rules []rule
	denied := map[uint32]bool{}
	for _, n := range extraDenied {
		if nr, ok := num(n); ok {
			rules = append(rules, rule{nr: nr, action: eperm})
			denied[nr] = true
		}
	}
	if nr, ok := num("socket"); ok {
		rules = append(rules, rule{nr: nr, action: eperm, alts: [][]cond{
			{{arg: 0, op: specs.OpEqualTo, mask: ^uint64(0), value: unix.AF_PACKET}},
			{{arg: 1, op: specs.OpMaskedEqual, mask: 0xf, value: unix.SOCK_RAW}},
			{{arg: 1, op: specs.OpMaskedEqual, mask: 0xf, value: unix.SOCK_PACKET}},
		}})
	}
	if nr, ok := num("clone"); ok {
		// New namespaces, a new user namespace above all (its full
		// capability set reaches nf_tables and other kernel code written
		// for root), whatever a custom profile allows. s390 swaps the
		// first two arguments.
		arg := uint(0)
		if runtime.GOARCH == "s390x" {
			arg = 1
		}
		var alts [][]cond
		for _, f := range []uint64{unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER,
			unix.CLONE_NEWPID, unix.CLONE_NEWNET, unix.CLONE_NEWCGROUP} {
			alts = append(alts, []cond{{arg: arg, op: specs.OpMaskedEqual, mask: f, value: f}})
		}
		rules = append(rules, rule{nr: nr, action: eperm, alts: alts})
	}
	if nr, ok := num("clone3"); ok {
		// clone3 passes its flags in memory a filter cannot read: ENOSYS
		// makes libc and Go fall back to clone, filtered above.
		rules = append(rules, rule{nr: nr, action: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)})
		denied[nr] = true
	}
	if nr, ok := num("ioctl"); ok {
		// Typing into the terminal the sandbox shares with the user's shell.
		rules = append(rules, rule{nr: nr, action: eperm, alts: [][]cond{
			{{arg: 1, op: specs.OpMaskedEqual, mask: 0xffffffff, value: unix.TIOCSTI}},
			{{arg: 1, op: specs.OpMaskedEqual, mask: 0xffffffff, value: unix.TIOCLINUX}},
		}})
	}
	var allows, others []rule
	var notes []string
	for _, sc := range prof.Syscalls {
		act, err := ociAction(sc.Action, sc.ErrnoRet)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("syscalls %v: %w", sc.Names, err)
		}
		alts, err := alternatives(sc.Args)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("syscalls %v: %w", sc.Names, err)
		}
		for _, n := range sc.Names {
			nr, ok := num(n)
			if !ok {
				notes = append(notes, n)
				continue
			}
			if denied[nr] {
				continue
			}
			r := rule{nr: nr, alts: alts, action: act}
			if act == unix.SECCOMP_RET_ALLOW {
				allows = append(allows, r)
			} else {
				others = append(others, r)
			}
		}
	}
	rules = append(append(rules, others...), allows...)
	prog, err := emit(rules, def, info)
	return prog, len(rules), notes, err
}

// seccomp_data offsets: nr, arch, then six 64-bit arguments (little-endian
// words on the architectures Go supports here).
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

func ldArg(arg uint, hi bool) bpf.Instruction {
	off := uint32(offArgs + 8*arg)
	if hi {
		off += 4
	}
	return bpf.LoadAbsolute{Off: off, Size: 4}
}

// fail marks a jump whose true or false branch leaves the alternative.
type pending struct {
	inst      bpf.Instruction
	failTrue  bool
	failFalse bool
}

// check emits one argument check; a branch marked fail leaves the
// alternative, any other branch falls through or skips within the check.
func check(c cond) []pending {
	hiV, loV := uint32(c.value>>32), uint32(c.value)
	hiM, loM := uint32(c.mask>>32), uint32(c.mask)
	ld := func(hi bool) []pending {
		p := []pending{{inst: ldArg(c.arg, hi)}}
		m := loM
		if hi {
			m = hiM
		}
		if m != 0xffffffff {
			p = append(p, pending{inst: bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: m}})
		}
		return p
	}
	j := func(cond bpf.JumpTest, v uint32, skipT, skipF uint8, failT, failF bool) pending {
		return pending{inst: bpf.JumpIf{Cond: cond, Val: v, SkipTrue: skipT, SkipFalse: skipF}, failTrue: failT, failFalse: failF}
	}
	var out []pending
	lo := ld(false)
	switch c.op {
	case specs.OpEqualTo, specs.OpMaskedEqual:
		out = append(ld(true), j(bpf.JumpEqual, hiV, 0, 0, false, true))
		out = append(append(out, lo...), j(bpf.JumpEqual, loV, 0, 0, false, true))
	case specs.OpNotEqual:
		out = append(ld(true), j(bpf.JumpEqual, hiV, 0, uint8(len(lo)+1), false, false))
		out = append(append(out, lo...), j(bpf.JumpEqual, loV, 0, 0, true, false))
	case specs.OpGreaterThan, specs.OpGreaterEqual:
		last := bpf.JumpGreaterThan
		if c.op == specs.OpGreaterEqual {
			last = bpf.JumpGreaterOrEqual
		}
		out = append(ld(true), j(bpf.JumpGreaterThan, hiV, uint8(len(lo)+2), 0, false, false), j(bpf.JumpEqual, hiV, 0, 0, false, true))
		out = append(append(out, lo...), j(last, loV, 0, 0, false, true))
	case specs.OpLessThan, specs.OpLessEqual:
		out = append(ld(true), j(bpf.JumpGreaterOrEqual, hiV, 0, uint8(len(lo)+2), false, false), j(bpf.JumpEqual, hiV, 0, 0, false, true))
		if c.op == specs.OpLessThan {
			out = append(append(out, lo...), j(bpf.JumpGreaterOrEqual, loV, 0, 0, true, false))
		} else {
			out = append(append(out, lo...), j(bpf.JumpGreaterThan, loV, 0, 0, true, false))
		}
	}
	return out
}

// emit lays the rules out linearly. Unconditional rules share one return
// per run of equal actions; a conditional rule is a block skipped when
// the number differs, whose failed alternatives end by reloading it.
func emit(rules []rule, def uint32, info *arch.Info) ([]bpf.Instruction, error) {
	// Another ABI (ia32 through int $0x80 on x86_64, x32) has its own
	// syscall numbers, which none of the rules names: the process is
	// killed whatever the profile's default, as libseccomp does, or a
	// profile defaulting to allow would leave every denial open there.
	const badArch = unix.SECCOMP_RET_KILL_PROCESS
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.RetConstant{Val: badArch},
		bpf.LoadAbsolute{Off: offNr, Size: 4},
	}
	if info.ID == arch.X86_64.ID {
		// x32 is a second syscall table behind the same arch, its numbers
		// marked by bit 30 (arch.X32's mask).
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: uint32(arch.X32.SeccompMask), SkipFalse: 1}, bpf.RetConstant{Val: badArch})
	}
	const chunk = 200
	for i := 0; i < len(rules); {
		r := rules[i]
		if len(r.alts) == 0 {
			n := i
			for n < len(rules) && n-i < chunk && len(rules[n].alts) == 0 && rules[n].action == r.action {
				n++
			}
			run := rules[i:n]
			for k, u := range run {
				prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: u.nr, SkipTrue: uint8(len(run) - k)})
			}
			prog = append(prog, bpf.Jump{Skip: 1}, bpf.RetConstant{Val: r.action})
			i = n
			continue
		}
		var block []bpf.Instruction
		for _, alt := range r.alts {
			var p []pending
			for _, c := range alt {
				p = append(p, check(c)...)
			}
			p = append(p, pending{inst: bpf.RetConstant{Val: r.action}})
			for idx, pi := range p {
				if ji, ok := pi.inst.(bpf.JumpIf); ok {
					toEnd := len(p) - idx - 1
					if toEnd > 255 {
						return nil, fmt.Errorf("argument checks too long")
					}
					if pi.failTrue {
						ji.SkipTrue = uint8(toEnd)
					}
					if pi.failFalse {
						ji.SkipFalse = uint8(toEnd)
					}
					pi.inst = ji
				}
				block = append(block, pi.inst)
			}
		}
		block = append(block, bpf.LoadAbsolute{Off: offNr, Size: 4})
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: r.nr, SkipTrue: 1}, bpf.Jump{Skip: uint32(len(block))})
		prog = append(prog, block...)
		i++
	}
	prog = append(prog, bpf.RetConstant{Val: def})
	if len(prog) > 4096 {
		return nil, fmt.Errorf("profile compiles to %d instructions, more than the kernel's 4096", len(prog))
	}
	return prog, nil
}

// install loads the filter on the calling thread only; the caller holds
// LockOSThread and execs right after.
func (f *SeccompFilter) install() error {
	filt := make([]unix.SockFilter, len(f.Prog))
	for i, in := range f.Prog {
		filt[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filt)), Filter: &filt[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("install seccomp filter: %w", err)
	}
	return nil
}
