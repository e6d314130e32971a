package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Access is how a bound directory may be used inside the sandbox.
type Access string

const (
	ReadOnly  Access = "ro"
	ReadWrite Access = "rw"
	// Overlay sends writes to a per-run layer that `paddock diff` shows and
	// `paddock apply` copies back; the directory itself stays untouched.
	Overlay Access = "overlay"
)

// Mount binds a host path into the sandbox.
type Mount struct {
	Source string // absolute host path
	Dest   string // absolute path inside the sandbox
	Access Access
}

// Tmpfs is an extra empty, writable, size-bounded directory.
type Tmpfs struct {
	Path string
	Size string // as the tmpfs size= option: "64m", "1g", "10%"
}

// Network modes.
const (
	NetworkPaddock = "paddock"
	NetworkNone    = "none"
)

// Options is everything `paddock run` can be asked for.
type Options struct {
	Command   []string
	Workspace Mount
	Mounts    []Mount
	RootFS    string
	Tmpfs     []Tmpfs
	TmpSize   string
	HomeSize  string

	Network    string
	CNIConfDir string
	CNIBinDir  string
	// Policy names the egress policy: the CNI network's when empty under
	// --network paddock, DefaultPolicy under --network none.
	Policy string
	// ProxySocket is paddockd's root-only explicit proxy socket
	// (paddockd --explicit-socket), which --network none relays to.
	ProxySocket string

	Memory int64   // bytes, 0 = unlimited
	CPUs   float64 // 0 = unlimited
	Pids   int64   // 0 = unlimited

	// UID and GID run the command; -1 picks the owner of a writable
	// workspace when that is a regular user (so the agent can edit the
	// project), else 65534 (nobody).
	UID, GID int

	Env      []string // K=V
	EnvPass  []string
	Seccomp  string // profile file; "" = built-in default
	Masks    []string
	CABundle string
	Verbose  bool

	// StateDir holds overlay layers and run records; "" picks
	// /var/lib/paddock/runs for root, else $XDG_STATE_HOME/paddock/runs.
	StateDir string
}

// ParseMount parses SRC:DST[:ro|:rw|:overlay]; overlay is allowed only when
// allowOverlay is set (for the workspace).
func ParseMount(spec string, allowOverlay bool) (Mount, error) {
	parts := strings.Split(spec, ":")
	m := Mount{Access: ReadOnly}
	switch len(parts) {
	case 2:
	case 3:
		m.Access = Access(parts[2])
		if m.Access != ReadOnly && m.Access != ReadWrite && (m.Access != Overlay || !allowOverlay) {
			modes := "ro or rw"
			if allowOverlay {
				modes = "ro, rw or overlay"
			}
			return Mount{}, fmt.Errorf("mount %q: mode %q is not %s", spec, parts[2], modes)
		}
	default:
		return Mount{}, fmt.Errorf("mount %q: want SRC:DST[:ro|:rw]", spec)
	}
	src, err := hostDir(parts[0], false)
	if err != nil {
		return Mount{}, fmt.Errorf("mount %q: %w", spec, err)
	}
	if !filepath.IsAbs(parts[1]) {
		return Mount{}, fmt.Errorf("mount %q: destination %q must be an absolute path", spec, parts[1])
	}
	m.Source, m.Dest = src, filepath.Clean(parts[1])
	return m, nil
}

// ParseWorkspace parses DIR[:ro|:rw|:overlay]; the directory appears at the
// same path inside the sandbox.
func ParseWorkspace(spec string) (Mount, error) {
	dir, mode := spec, "ro"
	if i := strings.LastIndex(spec, ":"); i >= 0 {
		dir, mode = spec[:i], spec[i+1:]
	}
	m, err := ParseMount(dir+":/:"+mode, true)
	if err != nil {
		return Mount{}, fmt.Errorf("workspace %q: want DIR[:ro|:rw|:overlay]: %w", spec, err)
	}
	m.Dest = m.Source
	if m.Source == "/" {
		return Mount{}, fmt.Errorf("workspace %q: the root directory cannot be a workspace; pick a project directory", spec)
	}
	return m, nil
}

// ParseTmpfs parses PATH[:SIZE].
func ParseTmpfs(spec string) (Tmpfs, error) {
	path, size, _ := strings.Cut(spec, ":")
	if !filepath.IsAbs(path) {
		return Tmpfs{}, fmt.Errorf("tmpfs %q: path must be absolute", spec)
	}
	if size != "" {
		if _, err := ParseSize(size); err != nil && !strings.HasSuffix(size, "%") {
			return Tmpfs{}, fmt.Errorf("tmpfs %q: %w", spec, err)
		}
	}
	return Tmpfs{Path: filepath.Clean(path), Size: size}, nil
}

// ParseSize parses a byte count with an optional k/m/g/t suffix (binary).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "b"), "i"))
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q is not a positive number of bytes like 512m or 2g", s)
	}
	return n * mult, nil
}

func hostDir(p string, mustBeDir bool) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("source %q does not exist", p)
	}
	if mustBeDir && !st.IsDir() {
		return "", fmt.Errorf("%q is not a directory", p)
	}
	return abs, nil
}

// validate fills defaults and checks everything that can be checked
// before any state is created.
func (o *Options) validate() error {
	if len(o.Command) == 0 {
		return fmt.Errorf("no command given: use paddock run [flags] -- COMMAND [ARGS...]")
	}
	if o.Workspace.Source == "" {
		ws, err := ParseWorkspace(".")
		if err != nil {
			return err
		}
		o.Workspace = ws
	}
	if st, err := os.Stat(o.Workspace.Source); err != nil || !st.IsDir() {
		return fmt.Errorf("workspace %q is not a directory", o.Workspace.Source)
	}
	if o.RootFS == "" {
		o.RootFS = "/"
	}
	root, err := hostDir(o.RootFS, true)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	o.RootFS = root
	if err := o.validateNetwork(); err != nil {
		return err
	}
	for _, kv := range o.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("env %q: want KEY=VALUE", kv)
		}
	}
	for _, g := range o.Masks {
		if _, err := filepath.Match(strings.TrimSuffix(g, "/"), "x"); err != nil {
			return fmt.Errorf("mask %q is not a valid glob: %w", g, err)
		}
	}
	if o.CPUs < 0 || o.Memory < 0 || o.Pids < 0 {
		return fmt.Errorf("limits must not be negative")
	}
	o.resolveIDs()
	if o.UID == 0 || o.GID == 0 {
		// The user namespace maps root to host root (the init must reach
		// the host's files to bind them): without any capability, uid or
		// gid 0 still owns every root file the rootfs shows.
		return fmt.Errorf("uid %d / gid %d: id 0 would let the command read and write the host's root-owned files (/etc/shadow, SSH host keys) even without capabilities: pass --uid and --gid of an unprivileged user, e.g. 65534", o.UID, o.GID)
	}
	if o.Seccomp != "" {
		if _, err := os.Stat(o.Seccomp); err != nil {
			return fmt.Errorf("seccomp profile %q: %w", o.Seccomp, err)
		}
	}
	if o.CABundle != "" {
		if _, err := os.Stat(o.CABundle); err != nil {
			return fmt.Errorf("ca bundle %q does not exist: pass --ca-bundle with the paddock CA file", o.CABundle)
		}
	}
	return nil
}

func (o *Options) resolveIDs() {
	uid, gid := defaultUID, defaultUID
	if o.Workspace.Access != ReadOnly {
		if st, err := os.Stat(o.Workspace.Source); err == nil {
			if s, ok := st.Sys().(*syscall.Stat_t); ok && s.Uid != 0 {
				uid, gid = int(s.Uid), int(s.Gid)
			}
		}
	}
	if o.UID < 0 {
		o.UID = uid
	}
	if o.GID < 0 {
		o.GID = gid
		if o.UID != uid {
			o.GID = o.UID
		}
	}
}
