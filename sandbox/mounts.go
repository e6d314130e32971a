package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The root is built the way bubblewrap builds it: a private tmpfs becomes
// "/" with the host's root under /oldroot; the new root is assembled in
// /newroot from binds of /oldroot, then pivoted into and /oldroot dropped.
const (
	oldRoot = "/oldroot"
	newRoot = "/newroot"
)

// systemDirs are the top-level rootfs entries shown (read-only): programs,
// libraries and configuration. Everything else at the top (home
// directories, /srv, /mnt, other projects next to the workspace, data
// volumes) stays out unless bound with --workspace or --mount, so secrets
// there need no scan; kernel views and /run, /tmp get fresh mounts.
var systemDirs = map[string]bool{
	"bin": true, "sbin": true, "lib": true, "lib32": true, "lib64": true, "libx32": true,
	"usr": true, "etc": true, "opt": true, "var": true, "nix": true, "snap": true,
}

// Paths under /proc a process must not write or read (Docker's list).
var (
	procReadOnly = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
	procMasked   = []string{"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi"}
	sysMasked = []string{"/sys/firmware", "/sys/devices/virtual/powercap", "/sys/kernel/debug", "/sys/kernel/security", "/sys/fs/bpf"}
)

const (
	attrRO     = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	emptyFile  = "/.paddock-empty"
	mountFlags = unix.MS_NOSUID | unix.MS_NODEV
)

func setattr(path string, set uint64, recursive bool) error {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if recursive {
		flags |= unix.AT_RECURSIVE
	}
	if err := unix.MountSetattr(-1, path, uint(flags), &unix.MountAttr{Attr_set: set}); err != nil {
		return fmt.Errorf("set mount attributes on %s: %w", strings.TrimPrefix(path, newRoot), err)
	}
	return nil
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		what := fstype
		if what == "" {
			what = strings.TrimPrefix(src, oldRoot)
		}
		return fmt.Errorf("mount %s on %s: %w", what, strings.TrimPrefix(dst, newRoot), err)
	}
	return nil
}

// mountpoint creates dst (a dir, or an empty file) if missing. It can only
// create inside the sandbox's own tmpfs: the host's tree is read-only by
// then, so a missing destination there is a clear error, not a host change.
func mountpoint(dst string, file bool) error {
	if _, err := os.Lstat(dst); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w (destinations must exist in the rootfs or lie under /, /home, /root, /tmp, /mnt, /run)", strings.TrimPrefix(dst, newRoot), err)
	}
	if file {
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o444)
		if err != nil {
			return fmt.Errorf("create mount point %s: %w", strings.TrimPrefix(dst, newRoot), err)
		}
		return f.Close()
	}
	if err := os.Mkdir(dst, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create mount point %s: %w", strings.TrimPrefix(dst, newRoot), err)
	}
	return nil
}

// buildRoot assembles and enters the sandbox's root. It runs as root in
// the new mount namespace, before anything untrusted.
func buildRoot(s *initSpec, logf func(string, ...any)) error {
	if err := mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return err
	}
	// /tmp is only a place to stand: in this private namespace the tmpfs
	// hides nothing from the host.
	if err := mount("tmpfs", "/tmp", "tmpfs", mountFlags, "mode=0755,size=64k"); err != nil {
		return err
	}
	for _, d := range []string{"/tmp" + oldRoot, "/tmp" + newRoot} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("prepare root: %w", err)
		}
	}
	if err := os.WriteFile("/tmp"+emptyFile, nil, 0o444); err != nil {
		return fmt.Errorf("prepare root: %w", err)
	}
	if err := unix.PivotRoot("/tmp", "/tmp"+oldRoot); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := mount("tmpfs", newRoot, "tmpfs", mountFlags, "mode=0755,size=1m"); err != nil {
		return err
	}
	if err := bindRootFS(s.RootFS); err != nil {
		return err
	}
	logf("root: %s's system directories read-only (nosuid, nodev); fresh /proc, /sys (read-only), /dev, /run; nothing else of it", s.RootFS)
	for _, h := range s.Hidden {
		dst := newRoot + h
		if st, err := os.Stat(dst); err == nil && st.IsDir() {
			if err := mount("tmpfs", dst, "tmpfs", unix.MS_RDONLY|mountFlags|unix.MS_NOEXEC, "size=4k,mode=0555"); err != nil {
				return err
			}
			logf("hidden: %s", h)
		}
	}
	if err := mountKernelFS(); err != nil {
		return err
	}
	if err := mountDev(); err != nil {
		return err
	}
	for _, t := range s.Tmpfs {
		dst := newRoot + t.Path
		if err := mountpoint(dst, false); err != nil {
			return err
		}
		flags := uintptr(mountFlags)
		if t.NoExec {
			flags |= unix.MS_NOEXEC
		}
		data := fmt.Sprintf("mode=%s,uid=%d,gid=%d", t.Mode, t.UID, t.GID)
		if t.Size != "" {
			data += ",size=" + t.Size
		}
		if err := mount("tmpfs", dst, "tmpfs", flags, data); err != nil {
			return err
		}
		logf("tmpfs: %s (%s)", t.Path, data)
	}
	for _, b := range s.Binds {
		if err := bind(b, logf); err != nil {
			return err
		}
	}
	for _, f := range s.Masks.Files {
		if err := maskAt(s, f, false); err != nil {
			return err
		}
	}
	for _, d := range s.Masks.Dirs {
		if err := maskAt(s, d, true); err != nil {
			return err
		}
	}
	logf("masked: %d files, %d directories", len(s.Masks.Files), len(s.Masks.Dirs))
	for _, m := range append(append([]string{}, s.Masks.Files...), s.Masks.Dirs...) {
		logf("  mask %s", m)
	}
	if err := setattr(newRoot, attrRO, false); err != nil {
		return err
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into the new root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host root: %w", err)
	}
	return unix.Chdir("/")
}

// maskAt mounts an empty read-only file or directory over a secret the
// launcher's scan found. Below its bind the path is walked without
// following symlinks, and the inode must be the scanned one, the mount
// then going onto that very descriptor: another run sharing an :rw
// workspace could otherwise swap in a symlink or a directory between the
// scan and this mount, and the mask would land on a decoy.
func maskAt(s *initSpec, p string, dir bool) error {
	target, err := openMaskTarget(s.Binds, p)
	if err != nil {
		return fmt.Errorf("mask %s: %w (did the workspace change while the sandbox started?)", p, err)
	}
	defer unix.Close(target)
	if id, ok := s.Masks.IDs[p]; ok {
		var st unix.Stat_t
		if err := unix.Fstat(target, &st); err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
		if uint64(st.Dev) != id[0] || st.Ino != id[1] {
			return fmt.Errorf("mask %s: not the file the scan found: the workspace changed while the sandbox started; run again", p)
		}
	}
	var mnt int
	if dir {
		fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
		if err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
		defer unix.Close(fsfd)
		for k, v := range map[string]string{"size": "4k", "mode": "0555"} {
			if err := unix.FsconfigSetString(fsfd, k, v); err != nil {
				return fmt.Errorf("mask %s: tmpfs %s: %w", p, k, err)
			}
		}
		if err := unix.FsconfigCreate(fsfd); err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
		mnt, err = unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrRO|unix.MOUNT_ATTR_NOEXEC)
		if err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	} else {
		mnt, err = unix.OpenTree(unix.AT_FDCWD, emptyFile, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
		if err := unix.MountSetattr(mnt, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: attrRO | unix.MOUNT_ATTR_NOEXEC}); err != nil {
			unix.Close(mnt)
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	defer unix.Close(mnt)
	if err := unix.MoveMount(mnt, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("mask %s: %w", p, err)
	}
	return nil
}

// openMaskTarget opens p (inside the sandbox) as an O_PATH descriptor: the
// bind holding it is opened as bind() reached it, the rest beneath it with
// no symlink followed.
func openMaskTarget(binds []bindSpec, p string) (int, error) {
	var root string
	for _, b := range binds {
		if (p == b.Dst || strings.HasPrefix(p, b.Dst+"/")) && len(b.Dst) > len(root) {
			root = b.Dst
		}
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
	if root == "" || rel == "" {
		// A bound file that is itself a secret: its path is the user's.
		return unix.Open(newRoot+p, unix.O_PATH|unix.O_CLOEXEC, 0)
	}
	rfd, err := unix.Open(newRoot+root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(rfd)
	return unix.Openat2(rfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH,
	})
}

func bindRootFS(rootfs string) error {
	src := filepath.Join(oldRoot, rootfs)
	ents, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("rootfs %s: %w", rootfs, err)
	}
	for _, e := range ents {
		name := e.Name()
		if !systemDirs[name] {
			continue
		}
		s, d := filepath.Join(src, name), filepath.Join(newRoot, name)
		switch {
		case e.Type()&os.ModeSymlink != 0:
			t, err := os.Readlink(s)
			if err != nil {
				return fmt.Errorf("rootfs: %w", err)
			}
			if err := os.Symlink(t, d); err != nil {
				return fmt.Errorf("rootfs: %w", err)
			}
			continue
		case e.IsDir():
			if err := os.Mkdir(d, 0o755); err != nil {
				return fmt.Errorf("rootfs: %w", err)
			}
		case e.Type().IsRegular():
			if err := mountpoint(d, true); err != nil {
				return err
			}
		default:
			continue
		}
		if err := mount(s, d, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		if err := setattr(d, attrRO, true); err != nil {
			return err
		}
	}
	for _, name := range []string{"proc", "sys", "dev", "run", "tmp", "home", "root", "mnt"} {
		if err := mountpoint(filepath.Join(newRoot, name), false); err != nil {
			return err
		}
	}
	return nil
}

func mountKernelFS() error {
	proc := newRoot + "/proc"
	if err := mount("proc", proc, "proc", mountFlags|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	for _, p := range procReadOnly {
		dst := newRoot + p
		if _, err := os.Stat(dst); err != nil {
			continue
		}
		if err := mount(dst, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		if err := setattr(dst, attrRO|unix.MOUNT_ATTR_NOEXEC, true); err != nil {
			return err
		}
	}
	if err := maskPaths(procMasked); err != nil {
		return err
	}
	sys := newRoot + "/sys"
	// A fresh sysfs carries none of the host's submounts (bpffs, cgroup,
	// debugfs); fall back to a read-only bind where sysfs may not be mounted.
	if err := unix.Mount("sysfs", sys, "sysfs", unix.MS_RDONLY|mountFlags|unix.MS_NOEXEC, ""); err != nil {
		if err := mount(oldRoot+"/sys", sys, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		if err := setattr(sys, attrRO|unix.MOUNT_ATTR_NOEXEC, true); err != nil {
			return err
		}
	}
	return maskPaths(sysMasked)
}

func maskPaths(paths []string) error {
	for _, p := range paths {
		dst := newRoot + p
		st, err := os.Stat(dst)
		if err != nil {
			continue
		}
		if st.IsDir() {
			err = mount("tmpfs", dst, "tmpfs", unix.MS_RDONLY|mountFlags|unix.MS_NOEXEC, "size=4k,mode=0555")
		} else {
			err = mount(emptyFile, dst, "", unix.MS_BIND, "")
			if err == nil {
				err = setattr(dst, attrRO|unix.MOUNT_ATTR_NOEXEC, false)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func mountDev() error {
	dev := newRoot + "/dev"
	if err := mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return err
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		dst := dev + "/" + n
		if err := mountpoint(dst, true); err != nil {
			return err
		}
		if err := mount(oldRoot+"/dev/"+n, dst, "", unix.MS_BIND, ""); err != nil {
			return err
		}
		if err := setattr(dst, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC, false); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(dev+"/"+d, 0o755); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
	}
	if err := mount("devpts", dev+"/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	if err := mount("tmpfs", dev+"/shm", "tmpfs", mountFlags|unix.MS_NOEXEC, "mode=1777,size=64m"); err != nil {
		return err
	}
	links := map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "core": "/proc/kcore"}
	for n, t := range links {
		if err := os.Symlink(t, dev+"/"+n); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
	}
	return setattr(dev, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC, false)
}

func bind(b bindSpec, logf func(string, ...any)) error {
	dst := newRoot + b.Dst
	// A file destination that is a symlink (resolv.conf into /run) is
	// followed one level, inside the new root.
	if fi, err := os.Lstat(dst); err == nil && fi.Mode()&os.ModeSymlink != 0 && b.File {
		t, err := os.Readlink(dst)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", b.Dst, err)
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(b.Dst), t)
		}
		dst = newRoot + filepath.Clean(t)
	}
	if err := mountpoint(dst, b.File); err != nil {
		return err
	}
	src := oldRoot + b.Src
	if b.Upper != "" {
		// user.overlay.* xattrs: root of the sandbox's user namespace
		// cannot set trusted.* ones, and without them removing or
		// replacing a directory of the workspace fails with EIO.
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,userxattr", src, oldRoot+b.Upper, oldRoot+b.Work)
		if err := mount("overlay", dst, "overlay", mountFlags, opts); err != nil {
			return err
		}
		logf("mount: %s -> %s (overlay, upper %s)", b.Src, b.Dst, b.Upper)
		return nil
	}
	if err := mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	attr := uint64(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
	mode := "rw"
	if !b.RW {
		attr |= unix.MOUNT_ATTR_RDONLY
		mode = "ro"
	}
	if err := setattr(dst, attr, true); err != nil {
		return err
	}
	logf("mount: %s -> %s (%s)", b.Src, b.Dst, mode)
	return nil
}
