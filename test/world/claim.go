package world

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// claimDir holds one file per 10.X.0.0/24 in use, named X.
const claimDir = "/run/paddock-world/subnets"

// claim is what a world records about itself so that concurrent worlds never
// share a subnet, and so that a later world can sweep up after a test
// process that died without its cleanups (go test -timeout, SIGKILL).
type claim struct {
	Prefix string `json:"prefix"`
	// PID owns the world; 0 marks a world kept up by tools/world, which
	// only `down` removes.
	PID int `json:"pid"`
	// Dir is removed with a stale world when the world created it.
	Dir string `json:"dir,omitempty"`
}

// claimSubnet picks a free X for 10.X.0.0/24, taking over stale claims.
func claimSubnet(c claim) (netip.Prefix, string, error) {
	if err := os.MkdirAll(claimDir, 0o755); err != nil {
		return netip.Prefix{}, "", fmt.Errorf("subnet claims: %w", err)
	}
	data, err := json.Marshal(c)
	if err != nil {
		return netip.Prefix{}, "", err
	}
	start := int(randomByte())
	for i := 0; i < 254; i++ {
		x := 1 + (start+i)%254
		path := filepath.Join(claimDir, strconv.Itoa(x))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			continue
		}
		_, werr := f.Write(data)
		if cerr := f.Close(); werr != nil || cerr != nil {
			_ = os.Remove(path)
			return netip.Prefix{}, "", fmt.Errorf("claim subnet: %w", errors.Join(werr, cerr))
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x), 0, 0}), 24), path, nil
	}
	return netip.Prefix{}, "", fmt.Errorf("no free 10.X.0.0/24 subnet: every claim in %s is held (tools/world down, or remove stale ones)", claimDir)
}

// releaseClaim removes the claim at path if it is still prefix's.
func releaseClaim(path, prefix string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var c claim
	if err != nil || json.Unmarshal(data, &c) != nil || c.Prefix != prefix {
		return nil // someone else's now
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release subnet claim: %w", err)
	}
	return nil
}

// SweepStale tears down the worlds of test processes that died without
// cleaning up: their processes, namespaces, /etc/netns files, bpffs dir,
// world dir and claim. Worlds of live processes and of tools/world stay.
func SweepStale(log Logger) {
	entries, err := os.ReadDir(claimDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		path := filepath.Join(claimDir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var c claim
		if err := json.Unmarshal(data, &c); err != nil || !strings.HasPrefix(c.Prefix, "pw") || !validID(strings.TrimPrefix(c.Prefix, "pw")) {
			// Unreadable and old: nobody can own it any more.
			if st, serr := os.Stat(path); serr == nil && time.Since(st.ModTime()) > time.Minute {
				_ = os.Remove(path)
			}
			continue
		}
		if c.PID <= 0 || c.PID == os.Getpid() || alive(c.PID) {
			continue
		}
		if err := sweep(c); err != nil {
			log.Logf("sweep stale world %s (pid %d gone): %v", c.Prefix, c.PID, err)
			continue
		}
		log.Logf("swept stale world %s left by pid %d", c.Prefix, c.PID)
		_ = os.Remove(path)
	}
}

func sweep(c claim) error {
	var errs []error
	names, _ := filepath.Glob(netnsPath(c.Prefix + "-*"))
	for _, p := range names {
		killIn(p)
	}
	for _, p := range names {
		if err := deleteNetns(filepath.Base(p)); err != nil {
			errs = append(errs, err)
		}
	}
	etc, _ := filepath.Glob(filepath.Join(etcNetns, c.Prefix+"-*"))
	for _, p := range etc {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll("/sys/fs/bpf/paddock-" + c.Prefix); err != nil {
		errs = append(errs, err)
	}
	if c.Dir != "" && filepath.IsAbs(c.Dir) && strings.Contains(filepath.Base(c.Dir), c.Prefix) {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killIn kills every process whose network namespace is the one bound at
// nsPath (a paddockd or a command a dead test left running there).
func killIn(nsPath string) {
	var want syscall.Stat_t
	if syscall.Stat(nsPath, &want) != nil {
		return
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		pid, err := strconv.Atoi(strings.Split(p, "/")[2])
		if err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
