package sandbox

import (
	"fmt"
	"os"
	"slices"

	seccompbpf "github.com/elastic/go-seccomp-bpf"
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
// denials prepended.
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
	policy, rules, notes, err := toPolicy(prof, info)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: %w", src, err)
	}
	// The assembler accepts only a bare action as the default; the errno
	// goes into its final return (also the target of the architecture check).
	def := policy.DefaultAction
	policy.DefaultAction = def &^ seccompbpf.Action(unix.SECCOMP_RET_DATA)
	insts, err := policy.Assemble()
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: assemble: %w", src, err)
	}
	last, ok := insts[len(insts)-1].(bpf.RetConstant)
	if !ok || last.Val&^unix.SECCOMP_RET_DATA != uint32(policy.DefaultAction) {
		return nil, fmt.Errorf("seccomp profile %s: unexpected program shape", src)
	}
	insts[len(insts)-1] = bpf.RetConstant{Val: uint32(def)}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: assemble: %w", src, err)
	}
	return &SeccompFilter{Source: src, Rules: rules, Prog: raw, Notes: notes}, nil
}

func ociAction(a specs.LinuxSeccompAction, errno *uint) (seccompbpf.Action, error) {
	e := uint32(unix.EPERM)
	if errno != nil {
		e = uint32(*errno)
	}
	switch a {
	case specs.ActAllow:
		return seccompbpf.ActionAllow, nil
	case specs.ActErrno:
		return seccompbpf.ActionErrno | seccompbpf.Action(e&unix.SECCOMP_RET_DATA), nil
	case specs.ActKill, specs.ActKillThread:
		return seccompbpf.ActionKillThread, nil
	case specs.ActKillProcess:
		return seccompbpf.ActionKillProcess, nil
	case specs.ActTrap:
		return seccompbpf.ActionTrap, nil
	case specs.ActLog:
		return seccompbpf.ActionLog, nil
	case specs.ActTrace:
		return seccompbpf.ActionErrno | seccompbpf.Action(unix.ENOSYS), nil
	}
	return 0, fmt.Errorf("action %q is not supported", a)
}

// conditions turns one OCI rule's argument checks into alternatives (OR of
// ANDs), as runc does: checks on distinct arguments are ANDed, several checks
// on the same argument become separate alternatives.
func conditions(args []specs.LinuxSeccompArg) ([]seccompbpf.ArgumentConditions, error) {
	one := func(a specs.LinuxSeccompArg) (seccompbpf.ArgumentConditions, error) {
		c := seccompbpf.Condition{Argument: uint32(a.Index), Value: a.Value}
		switch a.Op {
		case specs.OpEqualTo:
			c.Operation = seccompbpf.Equal
		case specs.OpNotEqual:
			c.Operation = seccompbpf.NotEqual
		case specs.OpGreaterThan:
			c.Operation = seccompbpf.GreaterThan
		case specs.OpGreaterEqual:
			c.Operation = seccompbpf.GreaterOrEqual
		case specs.OpLessThan:
			c.Operation = seccompbpf.LessThan
		case specs.OpLessEqual:
			c.Operation = seccompbpf.LessOrEqual
		case specs.OpMaskedEqual:
			// (arg & mask) == value, one bit at a time: each bit of value
			// must be set, every other bit of mask clear.
			var out seccompbpf.ArgumentConditions
			mask, want := a.Value, a.ValueTwo
			if want&^mask != 0 {
				return nil, fmt.Errorf("masked compare value %#x has bits outside mask %#x", want, mask)
			}
			for b := uint(0); b < 64; b++ {
				if want&(1<<b) != 0 {
					out = append(out, seccompbpf.Condition{Argument: uint32(a.Index), Operation: seccompbpf.BitsSet, Value: 1 << b})
				}
			}
			if clear := mask &^ want; clear != 0 {
				out = append(out, seccompbpf.Condition{Argument: uint32(a.Index), Operation: seccompbpf.BitsNotSet, Value: clear})
			}
			return out, nil
		default:
			return nil, fmt.Errorf("argument operator %q is not supported", a.Op)
		}
		return seccompbpf.ArgumentConditions{c}, nil
	}
	if len(args) == 0 {
		return nil, nil
	}
	seen := map[uint]bool{}
	distinct := true
	for _, a := range args {
		if seen[a.Index] {
			distinct = false
		}
		seen[a.Index] = true
	}
	if distinct {
		var and seccompbpf.ArgumentConditions
		for _, a := range args {
			c, err := one(a)
			if err != nil {
				return nil, err
			}
			and = append(and, c...)
		}
		return []seccompbpf.ArgumentConditions{and}, nil
	}
	var alts []seccompbpf.ArgumentConditions
	for _, a := range args {
		c, err := one(a)
		if err != nil {
			return nil, err
		}
		alts = append(alts, c)
	}
	return alts, nil
}

type group struct {
	action  seccompbpf.Action
	uncond  []string
	conds   map[string][]seccompbpf.ArgumentConditions
	ordered []string
}

func (g *group) add(name string, alts []seccompbpf.ArgumentConditions) {
	if g.conds == nil {
		g.conds = map[string][]seccompbpf.ArgumentConditions{}
	}
	if slices.Contains(g.uncond, name) {
		return
	}
	if len(alts) == 0 {
		g.uncond = append(g.uncond, name)
		delete(g.conds, name)
		return
	}
	if _, ok := g.conds[name]; !ok {
		g.ordered = append(g.ordered, name)
	}
	g.conds[name] = append(g.conds[name], alts...)
}

func (g *group) syscallGroup() seccompbpf.SyscallGroup {
	sg := seccompbpf.SyscallGroup{Action: g.action, Names: g.uncond}
	for _, n := range g.ordered {
		alts, ok := g.conds[n]
		if !ok {
			continue
		}
		for _, a := range alts {
			sg.NamesWithCondtions = append(sg.NamesWithCondtions, seccompbpf.NameWithConditions{Name: n, Conditions: a})
		}
	}
	return sg
}

func toPolicy(prof *specs.LinuxSeccomp, info *arch.Info) (*seccompbpf.Policy, int, []string, error) {
	def, err := ociAction(prof.DefaultAction, prof.DefaultErrnoRet)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("defaultAction: %w", err)
	}
	eperm := seccompbpf.ActionErrno | seccompbpf.Action(unix.EPERM)
	deny := &group{action: eperm}
	for _, n := range extraDenied {
		if _, ok := info.SyscallNames[n]; ok {
			deny.add(n, nil)
		}
	}
	// Raw and packet sockets: socket(AF_PACKET, ...) and socket(*, SOCK_RAW).
	deny.add("socket", []seccompbpf.ArgumentConditions{
		{{Argument: 0, Operation: seccompbpf.Equal, Value: unix.AF_PACKET}},
		{{Argument: 1, Operation: seccompbpf.BitsSet, Value: 1}, {Argument: 1, Operation: seccompbpf.BitsSet, Value: 2}, {Argument: 1, Operation: seccompbpf.BitsNotSet, Value: 0xc}},
	})
	// Typing into the terminal the sandbox shares with the user's shell.
	deny.add("ioctl", []seccompbpf.ArgumentConditions{
		{{Argument: 1, Operation: seccompbpf.Equal, Value: unix.TIOCSTI}},
		{{Argument: 1, Operation: seccompbpf.Equal, Value: unix.TIOCLINUX}},
	})

	groups := map[seccompbpf.Action]*group{}
	var order []seccompbpf.Action
	var notes []string
	rules := 0
	for _, sc := range prof.Syscalls {
		act, err := ociAction(sc.Action, sc.ErrnoRet)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("syscalls %v: %w", sc.Names, err)
		}
		alts, err := conditions(sc.Args)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("syscalls %v: %w", sc.Names, err)
		}
		g := groups[act]
		if g == nil {
			g = &group{action: act}
			groups[act] = g
			order = append(order, act)
		}
		for _, n := range sc.Names {
			if _, ok := info.SyscallNames[n]; !ok {
				notes = append(notes, n)
				continue
			}
			if slices.Contains(deny.uncond, n) {
				continue
			}
			g.add(n, alts)
			rules++
		}
	}
	p := &seccompbpf.Policy{DefaultAction: def}
	p.Syscalls = append(p.Syscalls, deny.syscallGroup())
	// Refusals first so that an allow in the profile cannot shadow them.
	slices.SortStableFunc(order, func(a, b seccompbpf.Action) int {
		ra, rb := a == seccompbpf.ActionAllow, b == seccompbpf.ActionAllow
		switch {
		case ra == rb:
			return 0
		case ra:
			return 1
		}
		return -1
	})
	for _, a := range order {
		p.Syscalls = append(p.Syscalls, groups[a].syscallGroup())
	}
	return p, rules, notes, nil
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
