package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ChangeKind is what a run did to one path of its overlay workspace.
type ChangeKind string

const (
	Added    ChangeKind = "added"
	Modified ChangeKind = "modified"
	Deleted  ChangeKind = "deleted"
)

// Change is one path the run changed, relative to the workspace.
type Change struct {
	Path string
	Kind ChangeKind
	Dir  bool
}

// FindRun resolves a run id or unique id prefix in stateDir.
func FindRun(stateDir, id string) (*Record, error) {
	runs, err := ListRuns(stateDir)
	if err != nil {
		return nil, err
	}
	var found []*Record
	for _, r := range runs {
		if r.ID == id {
			return r, nil
		}
		if id != "" && strings.HasPrefix(r.ID, id) {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no run %q in %s: `paddock runs` lists them", id, stateDir)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("run id %q is ambiguous: give more characters", id)
}

func upperOf(stateDir string, r *Record) (string, error) {
	if !r.Overlay {
		return "", fmt.Errorf("run %s did not use --workspace DIR:overlay: it has no changes to review", r.ID)
	}
	if !r.Exited {
		return "", fmt.Errorf("run %s is still running: wait for it to exit", r.ID)
	}
	return filepath.Join(stateDir, r.ID, "upper"), nil
}

func isWhiteout(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && fi.Mode()&fs.ModeCharDevice != 0 && st.Rdev == 0
}

func isOpaque(dir string) bool {
	buf := make([]byte, 8)
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if n, err := unix.Lgetxattr(dir, attr, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

// Changes lists what an exited overlay run changed, sorted by path.
func Changes(stateDir string, r *Record) ([]Change, error) {
	upper, err := upperOf(stateDir, r)
	if err != nil {
		return nil, err
	}
	var out []Change
	err = filepath.Walk(upper, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p == upper {
			return nil
		}
		rel, _ := filepath.Rel(upper, p)
		lower := filepath.Join(r.Workspace, rel)
		lfi, lerr := os.Lstat(lower)
		switch {
		case isWhiteout(fi):
			out = append(out, Change{Path: rel, Kind: Deleted, Dir: lerr == nil && lfi.IsDir()})
		case fi.IsDir():
			if lerr != nil {
				out = append(out, Change{Path: rel, Kind: Added, Dir: true})
			} else if !lfi.IsDir() {
				// A directory replaced a file or a symlink, whose target
				// is not the workspace's to list.
				out = append(out, Change{Path: rel, Kind: Modified, Dir: true})
			} else if isOpaque(p) {
				// The directory was replaced: what it held below is gone.
				ents, _ := os.ReadDir(lower)
				for _, e := range ents {
					if _, err := os.Lstat(filepath.Join(p, e.Name())); err != nil {
						out = append(out, Change{Path: filepath.Join(rel, e.Name()), Kind: Deleted, Dir: e.IsDir()})
					}
				}
			}
		case lerr != nil:
			out = append(out, Change{Path: rel, Kind: Added})
		default:
			out = append(out, Change{Path: rel, Kind: Modified})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read overlay layer: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// Diff writes a summary line per change and a unified diff for text files.
func Diff(stateDir string, r *Record, w io.Writer) error {
	changes, err := Changes(stateDir, r)
	if err != nil {
		return err
	}
	upper := filepath.Join(stateDir, r.ID, "upper")
	for _, c := range changes {
		suffix := ""
		if c.Dir {
			suffix = "/"
		}
		fmt.Fprintf(w, "%s %s%s\n", map[ChangeKind]string{Added: "A", Modified: "M", Deleted: "D"}[c.Kind], c.Path, suffix)
	}
	for _, c := range changes {
		if c.Dir {
			continue
		}
		a, b := filepath.Join(r.Workspace, c.Path), filepath.Join(upper, c.Path)
		switch c.Kind {
		case Added:
			a = "/dev/null"
		case Deleted:
			b = "/dev/null"
		}
		if !isText(a) || !isText(b) {
			fmt.Fprintf(w, "Binary file %s %s\n", c.Path, c.Kind)
			continue
		}
		cmd := exec.Command("diff", "-u", "--label", "a/"+c.Path, "--label", "b/"+c.Path, a, b)
		cmd.Stdout = w
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				return fmt.Errorf("diff %s: %w", c.Path, err)
			}
		}
	}
	return nil
}

func isText(p string) bool {
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() && p != "/dev/null" {
		return false
	}
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 8000)
	n, _ := f.Read(buf)
	return !bytes.ContainsRune(buf[:n], 0)
}

// Apply copies an overlay run's changes into its workspace, then drops the
// run. New files take the owner of the directory they land in.
func Apply(stateDir string, r *Record) error {
	changes, err := Changes(stateDir, r)
	if err != nil {
		return err
	}
	upper := filepath.Join(stateDir, r.ID, "upper")
	for _, c := range changes {
		dst := filepath.Join(r.Workspace, c.Path)
		src := filepath.Join(upper, c.Path)
		if err := realParents(r.Workspace, c.Path); err != nil {
			return fmt.Errorf("apply %s: %w", c.Path, err)
		}
		switch {
		case c.Kind == Deleted:
			if err := os.RemoveAll(dst); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
		default:
			if err := copyEntry(src, dst); err != nil {
				return fmt.Errorf("apply %s: %w", c.Path, err)
			}
		}
	}
	return Discard(stateDir, r)
}

// realParents refuses a change below a symlink or file of the workspace:
// root applies the changes, and a link (from the repository or planted by
// an earlier run) would carry its writes and removals out of the workspace.
// A directory of the layer that replaced such an entry is applied before
// what it holds, so legitimate changes find real directories.
func realParents(ws, rel string) error {
	p := ws
	for _, part := range strings.Split(filepath.Dir(rel), string(os.PathSeparator)) {
		if part == "." {
			break
		}
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory (%s): not writing through it", p, fi.Mode().Type())
		}
	}
	return nil
}

func copyEntry(src, dst string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	parent, err := os.Stat(filepath.Dir(dst))
	if err != nil {
		return err
	}
	owner := parent.Sys().(*syscall.Stat_t)
	uid, gid := int(owner.Uid), int(owner.Gid)
	if old, err := os.Lstat(dst); err == nil {
		st := old.Sys().(*syscall.Stat_t)
		uid, gid = int(st.Uid), int(st.Gid)
	}
	switch {
	case isWhiteout(fi):
		return os.RemoveAll(dst)
	case fi.IsDir():
		if old, err := os.Lstat(dst); err == nil && !old.IsDir() {
			if err := os.Remove(dst); err != nil {
				return err
			}
		}
		if err := os.Mkdir(dst, fi.Mode().Perm()); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		_ = os.Remove(dst)
		if err := os.Symlink(t, dst); err != nil {
			return err
		}
	case fi.Mode().IsRegular():
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		// A fresh file: whatever sits at the temporary name (a symlink
		// planted in the workspace) is replaced, never followed.
		tmp := dst + ".paddock-apply"
		if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		out, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			os.Remove(tmp)
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
		if err := os.Chmod(tmp, fi.Mode().Perm()); err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			os.Remove(tmp)
			return err
		}
	default:
		return fmt.Errorf("%s: special files are not applied", src)
	}
	return os.Lchown(dst, uid, gid)
}

// Discard drops a run and its overlay layer; the workspace is untouched.
func Discard(stateDir string, r *Record) error {
	if !r.Exited && r.alive() {
		return fmt.Errorf("run %s is still running: wait for it to exit", r.ID)
	}
	if err := os.RemoveAll(filepath.Join(stateDir, r.ID)); err != nil {
		return fmt.Errorf("discard run %s: %w", r.ID, err)
	}
	return nil
}
