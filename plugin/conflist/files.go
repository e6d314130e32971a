package conflist

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containernetworking/cni/libcni"
)

// StandaloneFile is the standalone conflist's file name; "10-" sorts it
// before most runtimes' own defaults.
const StandaloneFile = "10-paddock.conflist"

// StandaloneNetwork is the standalone conflist's network name, the one
// `paddock run` looks for.
const StandaloneNetwork = "paddock"

// BackupSuffix is appended to a chained file's name for the copy of it taken
// before paddock was added.
const BackupSuffix = ".paddock-backup"

// Options says where and how to install.
type Options struct {
	// ConfDir is the runtime's CNI configuration directory.
	ConfDir string
	// Chain is the name of the network to chain paddock onto; empty writes
	// the standalone conflist instead.
	Chain string
	// Entry is the paddock plugin entry.
	Entry Entry
	// Subnet is the standalone conflist's host-local range; the zero value
	// means DefaultSubnet.
	Subnet netip.Prefix
}

// Change is what Install or Uninstall did to one file.
type Change struct {
	File   string
	Action string // see the Action constants
	Backup string // the backup file, when one was written or is kept
}

// Actions a Change reports.
const (
	Unchanged = "unchanged" // already as wanted
	Chained   = "chained"   // paddock entry added or updated
	Written   = "written"   // standalone conflist written
	Restored  = "restored"  // original bytes put back from the backup
	Unchained = "unchained" // paddock entry removed, file differs from the backup
	Removed   = "removed"   // standalone conflist deleted
)

// Install chains paddock onto the network o.Chain, or writes the standalone
// conflist. It is idempotent, and leaves nothing half-written on error.
func Install(o Options) (Change, error) {
	p, err := plan(o)
	if err != nil {
		return Change{}, err
	}
	return p.apply()
}

// Check reports the error Install would return before writing anything,
// so that a caller can refuse bad input before touching anything else.
func Check(o Options) error {
	_, err := plan(o)
	return err
}

// install is one planned Install: what to write where.
type install struct {
	change Change
	target string      // the file to write (path with symlinks resolved)
	orig   []byte      // the file as found, for the backup
	out    []byte      // what to write
	mode   fs.FileMode // of the file as found
	mkdir  string      // conf dir to create first, for a standalone file
}

func plan(o Options) (*install, error) {
	if o.ConfDir == "" {
		return nil, errors.New("conf dir is empty: give the runtime's CNI config directory, e.g. /etc/cni/net.d")
	}
	if o.Chain == "" {
		return planStandalone(o)
	}
	path, err := Find(o.ConfDir, o.Chain)
	if err != nil {
		return nil, err
	}
	target, err := resolve(path)
	if err != nil {
		return nil, err
	}
	data, mode, err := readFile(target)
	if err != nil {
		return nil, err
	}
	had, err := HasEntry(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out, changed, err := Chain(data, o.Entry)
	if err != nil {
		return nil, fmt.Errorf("network %q in %s: %w", o.Chain, path, err)
	}
	p := &install{change: Change{File: path, Action: Unchanged}, target: target, orig: data, out: out, mode: mode}
	if changed {
		p.change.Action = Chained
		if !had {
			// The backup is of the file without paddock; an entry that
			// is only being updated keeps the backup of the first install.
			p.change.Backup = path + BackupSuffix
		}
	}
	return p, nil
}

func planStandalone(o Options) (*install, error) {
	subnet := o.Subnet
	if !subnet.IsValid() {
		subnet = DefaultSubnet
	}
	want, err := Standalone(StandaloneNetwork, o.Entry, subnet)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(o.ConfDir, StandaloneFile)
	p := &install{change: Change{File: path, Action: Written}, target: path, out: want, mode: 0o644, mkdir: o.ConfDir}
	have, _, err := readFile(path)
	switch {
	case err == nil && bytes.Equal(have, want):
		p.change.Action = Unchanged
	case err == nil:
		if err := ours(path, have); err != nil {
			return nil, err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	return p, nil
}

func (p *install) apply() (Change, error) {
	if p.change.Action == Unchanged {
		return p.change, nil
	}
	if p.mkdir != "" {
		if err := os.MkdirAll(p.mkdir, 0o755); err != nil {
			return Change{}, fmt.Errorf("create conf dir: %w", err)
		}
	}
	owner := p.target
	if p.orig == nil {
		owner = ""
	}
	if b := p.change.Backup; b != "" {
		if err := writeAtomic(b, p.orig, p.mode, owner); err != nil {
			return Change{}, err
		}
	}
	if err := writeAtomic(p.target, p.out, p.mode, owner); err != nil {
		if p.change.Backup != "" {
			os.Remove(p.change.Backup)
		}
		return Change{}, err
	}
	return p.change, nil
}

// ours refuses to touch a standalone file paddock did not write.
func ours(path string, data []byte) error {
	name, err := Network(data)
	has, herr := HasEntry(data)
	if err != nil || herr != nil || name != StandaloneNetwork || !has {
		return fmt.Errorf("%s exists and is not a paddock conflist (network %q with a paddock plugin): move it away, or chain paddock onto its network with --chain", path, StandaloneNetwork)
	}
	return nil
}

// Uninstall removes what Install added: the paddock entry of network chain
// (the original bytes come back from the backup when nothing else changed
// since), or the standalone conflist when chain is empty.
func Uninstall(confDir, chain string) (Change, error) {
	if confDir == "" {
		return Change{}, errors.New("conf dir is empty: give the runtime's CNI config directory, e.g. /etc/cni/net.d")
	}
	if chain == "" {
		path := filepath.Join(confDir, StandaloneFile)
		data, _, err := readFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return Change{File: path, Action: Unchanged}, nil
		}
		if err != nil {
			return Change{}, err
		}
		if err := ours(path, data); err != nil {
			return Change{}, err
		}
		if err := os.Remove(path); err != nil {
			return Change{}, fmt.Errorf("remove %s: %w", path, err)
		}
		return Change{File: path, Action: Removed}, nil
	}
	path, err := Find(confDir, chain)
	if err != nil {
		return Change{}, err
	}
	target, err := resolve(path)
	if err != nil {
		return Change{}, err
	}
	data, mode, err := readFile(target)
	if err != nil {
		return Change{}, err
	}
	out, changed, err := Unchain(data)
	if err != nil {
		return Change{}, fmt.Errorf("%s: %w", path, err)
	}
	c := Change{File: path, Action: Unchanged}
	backup := path + BackupSuffix
	orig, _, berr := readFile(backup)
	if berr != nil && !errors.Is(berr, fs.ErrNotExist) {
		return Change{}, berr
	}
	same := berr == nil && sameJSON(orig, out)
	if changed {
		c.Action = Unchained
		if same {
			out, c.Action = orig, Restored
		}
		if err := writeAtomic(target, out, mode, target); err != nil {
			return Change{}, err
		}
	}
	switch {
	case berr != nil:
	case same:
		if err := os.Remove(backup); err != nil {
			return Change{}, fmt.Errorf("remove backup: %w", err)
		}
	default:
		// Someone changed the file since the install: the backup is
		// theirs to review, not ours to drop.
		c.Backup = backup
	}
	return c, nil
}

// Find is the file in confDir that defines network, chosen as libcni does:
// the first such .conf, .conflist or .json file in lexical order.
func Find(confDir, network string) (string, error) {
	files, err := libcni.ConfFiles(confDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return "", fmt.Errorf("read conf dir: %w", err)
	}
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("read %s: %w", f, err)
		}
		name, err := Network(data)
		if err != nil {
			continue // not ours to judge; the runtime skips it too
		}
		if name == network {
			d, _ := parse(data)
			if !d.hasPlugin {
				return "", fmt.Errorf("network %q is defined by %s, and %w", network, f, ErrNotList)
			}
			return f, nil
		}
		names = append(names, fmt.Sprintf("%q (%s)", name, filepath.Base(f)))
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no network %q in %s: the directory holds no CNI configuration; start the runtime once so it writes its default, or install standalone (leave out --chain)", network, confDir)
	}
	return "", fmt.Errorf("no network %q in %s: it holds %v; pass one of those names to --chain", network, confDir, names)
}

// resolve follows a symlinked conflist to the file it names, so that the
// atomic rename replaces that file and the link stays a link.
func resolve(path string) (string, error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", path, err)
	}
	return target, nil
}

func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

func readFile(path string) ([]byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s is not a regular file", path)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	return buf.Bytes(), st.Mode().Perm(), nil
}

// writeAtomic replaces path with data: a temp file in the same directory
// (named so no runtime loads it), given mode and, when ownerOf names a file,
// that file's owner, synced and renamed over path.
func writeAtomic(path string, data []byte, mode fs.FileMode, ownerOf string) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if err := writeTemp(tmp, data, mode, ownerOf); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename is durable once the directory is synced; best effort
		d.Close()
	}
	return nil
}

func writeTemp(tmp *os.File, data []byte, mode fs.FileMode, ownerOf string) error {
	defer tmp.Close()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if ownerOf != "" {
		if st, err := os.Stat(ownerOf); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && (int(sys.Uid) != os.Geteuid() || int(sys.Gid) != os.Getegid()) {
				if err := tmp.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
					return err
				}
			}
		}
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	return tmp.Close()
}

// CopyBinary installs the plugin executable src as dst (mode 0755) by
// rename, so a runtime executing the old file at that moment is not hurt.
func CopyBinary(src, dst string) error {
	data, _, err := readFile(src)
	if err != nil {
		return fmt.Errorf("copy plugin: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy plugin: %w", err)
	}
	if have, _, err := readFile(dst); err == nil && bytes.Equal(have, data) {
		return nil
	}
	return writeAtomic(dst, data, 0o755, "")
}
