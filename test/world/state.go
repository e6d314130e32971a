package world

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
)

// State is what a world needs to be found again by another process: the
// tools/world command writes it at `up` and tears the world down from it at
// `down`.
type State struct {
	ID           string         `json:"id"`
	Prefix       string         `json:"prefix"`
	Dir          string         `json:"dir"`
	BinDir       string         `json:"binDir"`
	Subnet       netip.Prefix   `json:"subnet"`
	SandboxRange netip.Prefix   `json:"sandboxRange"`
	SubnetClaim  string         `json:"subnetClaim"`
	NodeNS       string         `json:"nodeNetns"`
	InternetNS   string         `json:"internetNetns"`
	CAFile       string         `json:"caFile"`
	Sandboxes    []SandboxState `json:"sandboxes,omitempty"`
	// PIDs are processes the world owns beyond this process (the serving
	// child, a detached paddockd): teardown ends them.
	PIDs map[string]int `json:"pids,omitempty"`
}

// SandboxState is one CNI sandbox of a State.
type SandboxState struct {
	Name string         `json:"name"`
	Opts SandboxOptions `json:"opts"`
}

// State describes w for Attach.
func (w *World) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := State{
		ID: w.ID, Prefix: w.Prefix, Dir: w.Dir, BinDir: w.BinDir, Subnet: w.Subnet, SandboxRange: w.SandboxRange,
		SubnetClaim: w.subClaim, NodeNS: w.NodeNS, InternetNS: w.InternetNS, CAFile: w.CAFile, PIDs: map[string]int{},
	}
	for name, sb := range w.sandboxes {
		st.Sandboxes = append(st.Sandboxes, SandboxState{Name: name, Opts: sb.opts})
	}
	for k, v := range w.pids {
		st.PIDs[k] = v
	}
	for i, d := range w.daemons {
		if pid := d.Pid(); pid != 0 {
			st.PIDs[fmt.Sprintf("paddockd-%d", i)] = pid
		}
	}
	return st
}

// Attach returns the world st describes, built by another process, without
// starting servers or a capture. Close tears it down as if it were built here
// (the world dir included).
func Attach(log Logger, st State) (*World, error) {
	if !validID(st.ID) || st.Prefix != "pw"+st.ID {
		return nil, fmt.Errorf("world state: id %q and prefix %q do not match", st.ID, st.Prefix)
	}
	if !filepath.IsAbs(st.Dir) || filepath.Dir(st.Dir) == st.Dir {
		return nil, fmt.Errorf("world state: dir %q is not an absolute path below /", st.Dir)
	}
	w := &World{
		ID: st.ID, Prefix: st.Prefix, Dir: st.Dir, BinDir: st.BinDir, Subnet: st.Subnet, SandboxRange: st.SandboxRange,
		NodeNS: st.NodeNS, InternetNS: st.InternetNS, NodeVeth: st.Prefix + "-n", InetVeth: st.Prefix + "-i",
		CAFile: st.CAFile, log: log, ownDir: true, subClaim: st.SubnetClaim,
		sandboxes: map[string]*Sandbox{}, plain: map[string]*PlainSandbox{}, pids: map[string]int{},
	}
	for k, v := range st.PIDs {
		w.pids[k] = v
	}
	var err error
	if w.node, err = ns.GetNS(w.NodePath()); err != nil {
		return w, fmt.Errorf("world %s: node netns: %w", w.Prefix, err)
	}
	if w.inet, err = ns.GetNS(w.InternetPath()); err != nil {
		return w, fmt.Errorf("world %s: internet netns: %w", w.Prefix, err)
	}
	if w.ca, err = LoadOrCreateCA(w.Dir); err != nil {
		return w, err
	}
	for _, s := range st.Sandboxes {
		list, err := w.ConfListFor(s.Opts)
		if err != nil {
			return w, fmt.Errorf("sandbox %s: %w", s.Name, err)
		}
		sb := &Sandbox{Name: s.Name, NSName: w.Prefix + "-" + s.Name, NetNS: netnsPath(w.Prefix + "-" + s.Name), w: w, list: list, opts: s.Opts}
		sb.rt = &libcni.RuntimeConf{ContainerID: s.Opts.ContainerID, NetNS: sb.NetNS, IfName: s.Opts.IfName, Args: s.Opts.Args, CapabilityArgs: s.Opts.CapabilityArgs}
		w.sandboxes[s.Name] = sb
	}
	return w, nil
}

// Own records a process the world ends at teardown.
func (w *World) Own(name string, pid int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pids[name] = pid
}

// endPIDs sends SIGTERM to every owned process and waits (bounded) for it to
// go, then SIGKILL.
func (w *World) endPIDs() error {
	w.mu.Lock()
	pids := w.pids
	w.pids = map[string]int{}
	w.mu.Unlock()
	var errs []error
	for name, pid := range pids {
		if pid <= 1 {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			continue // already gone
		}
		gone := false
		for i := 0; i < 100 && !gone; i++ {
			time.Sleep(100 * time.Millisecond)
			gone = !alive(pid)
		}
		if !gone {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			errs = append(errs, fmt.Errorf("%s (pid %d) ignored SIGTERM for 10s: killed", name, pid))
		}
	}
	return errors.Join(errs...)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "stat"))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			return i+2 < len(b) && b[i+2] != 'Z'
		}
	}
	return true
}

// Alive reports whether the owned process name still runs.
func (st State) Alive(name string) bool {
	pid, ok := st.PIDs[name]
	return ok && alive(pid)
}
