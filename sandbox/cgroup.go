package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const cgroupRoot = "/sys/fs/cgroup"

// cgroup is one run's resource group: a cgroup v2 directory when the
// unified hierarchy has the controllers, else one directory per v1
// controller hierarchy (hybrid hosts keep memory/pids/cpu in v1).
type cgroup struct {
	v2      string   // directory, when v2 is used
	v1      []string // directories, when v1 is used
	applied []string // human-readable limits, for --verbose
}

// limits are what a run asks for; zero means no limit.
type limits struct {
	Memory int64
	CPUs   float64
	Pids   int64
}

func (l limits) none() bool { return l.Memory == 0 && l.CPUs == 0 && l.Pids == 0 }

func writeFile(path, val string) error {
	if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
		return fmt.Errorf("write %s=%q: %w", filepath.Base(path), val, err)
	}
	return nil
}

// v2Controllers reports the controllers the unified hierarchy at dir offers.
func v2Controllers(dir string) (map[string]bool, bool) {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, false
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, false
	}
	m := map[string]bool{}
	for _, c := range strings.Fields(string(b)) {
		m[c] = true
	}
	return m, true
}

// newCgroup creates the run's cgroup and writes its limits. Nothing is left
// behind on error.
func newCgroup(id string, l limits) (cg *cgroup, err error) {
	cg = &cgroup{}
	if l.none() {
		return cg, nil
	}
	defer func() {
		if err != nil {
			cg.remove()
		}
	}()
	want := []string{}
	if l.Memory > 0 {
		want = append(want, "memory")
	}
	if l.Pids > 0 {
		want = append(want, "pids")
	}
	if l.CPUs > 0 {
		want = append(want, "cpu")
	}
	if ctrls, ok := v2Controllers(cgroupRoot); ok && hasAll(ctrls, want) {
		return cg, cg.setupV2(id, want, l)
	}
	return cg, cg.setupV1(id, want, l)
}

func hasAll(have map[string]bool, want []string) bool {
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

func (cg *cgroup) setupV2(id string, want []string, l limits) error {
	parent := filepath.Join(cgroupRoot, "paddock")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("cgroup v2: %w", err)
	}
	enable := "+" + strings.Join(want, " +")
	for _, d := range []string{cgroupRoot, parent} {
		if err := writeFile(filepath.Join(d, "cgroup.subtree_control"), enable); err != nil {
			return fmt.Errorf("cgroup v2: enable controllers: %w", err)
		}
	}
	dir := filepath.Join(parent, id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("cgroup v2: %w", err)
	}
	cg.v2 = dir
	if l.Memory > 0 {
		if err := writeFile(filepath.Join(dir, "memory.max"), strconv.FormatInt(l.Memory, 10)); err != nil {
			return err
		}
		// Swap would let a hog outlive its limit; absent without swap accounting.
		_ = writeFile(filepath.Join(dir, "memory.swap.max"), "0")
		cg.applied = append(cg.applied, "cgroup v2 memory.max="+strconv.FormatInt(l.Memory, 10))
	}
	if l.Pids > 0 {
		if err := writeFile(filepath.Join(dir, "pids.max"), strconv.FormatInt(l.Pids, 10)); err != nil {
			return err
		}
		cg.applied = append(cg.applied, "cgroup v2 pids.max="+strconv.FormatInt(l.Pids, 10))
	}
	if l.CPUs > 0 {
		v := fmt.Sprintf("%d 100000", int64(l.CPUs*100000))
		if err := writeFile(filepath.Join(dir, "cpu.max"), v); err != nil {
			return err
		}
		cg.applied = append(cg.applied, "cgroup v2 cpu.max="+v)
	}
	return nil
}

func (cg *cgroup) setupV1(id string, want []string, l limits) error {
	for _, c := range want {
		base := filepath.Join(cgroupRoot, c)
		var st unix.Statfs_t
		if unix.Statfs(base, &st) != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			return fmt.Errorf("cgroup controller %s is available neither in cgroup v2 nor v1 (no %s): drop --%s or enable the controller", c, base, map[string]string{"memory": "memory", "pids": "pids", "cpu": "cpus"}[c])
		}
		dir := filepath.Join(base, "paddock", id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup v1 %s: %w", c, err)
		}
		cg.v1 = append(cg.v1, dir)
		switch c {
		case "memory":
			v := strconv.FormatInt(l.Memory, 10)
			if err := writeFile(filepath.Join(dir, "memory.limit_in_bytes"), v); err != nil {
				return err
			}
			// memsw exists only with swap accounting; it must be >= the limit.
			_ = writeFile(filepath.Join(dir, "memory.memsw.limit_in_bytes"), v)
			_ = writeFile(filepath.Join(dir, "memory.swappiness"), "0")
			cg.applied = append(cg.applied, "cgroup v1 memory.limit_in_bytes="+v)
		case "pids":
			v := strconv.FormatInt(l.Pids, 10)
			if err := writeFile(filepath.Join(dir, "pids.max"), v); err != nil {
				return err
			}
			cg.applied = append(cg.applied, "cgroup v1 pids.max="+v)
		case "cpu":
			v := strconv.FormatInt(int64(l.CPUs*100000), 10)
			if err := writeFile(filepath.Join(dir, "cpu.cfs_period_us"), "100000"); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(dir, "cpu.cfs_quota_us"), v); err != nil {
				return err
			}
			cg.applied = append(cg.applied, "cgroup v1 cpu.cfs_quota_us="+v+"/100000")
		}
	}
	return nil
}

// fd opens the v2 directory for clone3(CLONE_INTO_CGROUP); -1 on v1.
func (cg *cgroup) fd() (int, error) {
	if cg.v2 == "" {
		return -1, nil
	}
	fd, err := unix.Open(cg.v2, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open cgroup: %w", err)
	}
	return fd, nil
}

// enter moves pid into the v1 groups (v2 places the child at clone time).
func (cg *cgroup) enter(pid int) error {
	for _, d := range cg.v1 {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
	}
	return nil
}

// remove deletes the groups; the kernel refuses while tasks are exiting, so
// it retries for a short, bounded while.
func (cg *cgroup) remove() {
	dirs := append([]string{}, cg.v1...)
	if cg.v2 != "" {
		dirs = append(dirs, cg.v2)
	}
	for _, d := range dirs {
		for i := 0; i < 50; i++ {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// removeCgroupsFor removes a crashed run's groups, wherever they are.
func removeCgroupsFor(id string) {
	cg := &cgroup{}
	if _, err := os.Stat(filepath.Join(cgroupRoot, "paddock", id)); err == nil {
		cg.v2 = filepath.Join(cgroupRoot, "paddock", id)
	}
	for _, c := range []string{"memory", "pids", "cpu"} {
		d := filepath.Join(cgroupRoot, c, "paddock", id)
		if _, err := os.Stat(d); err == nil {
			cg.v1 = append(cg.v1, d)
		}
	}
	cg.remove()
}
