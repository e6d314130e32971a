package enforcer

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const bpffsRoot = "/sys/fs/bpf"

// ensureBPFFS makes sure dir lies on a bpf filesystem, mounting bpffs at
// /sys/fs/bpf when dir is below it and nothing is mounted there yet. Pins on
// any other filesystem would fail late and confusingly, so say so up front.
func ensureBPFFS(dir string) error {
	dir = filepath.Clean(dir)
	if onBPFFS(dir) {
		return nil
	}
	if dir != bpffsRoot && !strings.HasPrefix(dir, bpffsRoot+"/") {
		return fmt.Errorf("bpf pin dir %s is not on a bpf filesystem: mount one (mount -t bpf bpf <dir>) or use a dir below %s", dir, bpffsRoot)
	}
	mounted, err := isMountpoint(bpffsRoot)
	if err != nil {
		return err
	}
	if !mounted {
		if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
		}
	}
	if !onBPFFS(bpffsRoot) {
		return fmt.Errorf("%s is mounted but is not a bpf filesystem: unmount it or pick another bpf pin dir", bpffsRoot)
	}
	return nil
}

// onBPFFS reports whether the deepest existing ancestor of dir is on bpffs.
func onBPFFS(dir string) bool {
	for p := dir; ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			return st.Type == unix.BPF_FS_MAGIC
		}
		if p == "/" {
			return false
		}
	}
}

func isMountpoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// Field 5 is the mount point (octal-escaped).
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == path {
			return true, nil
		}
	}
	return false, s.Err()
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}
