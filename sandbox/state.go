package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Record is what a run leaves in its state directory: enough to tear a
// crashed run down and to review an overlay run's changes.
type Record struct {
	ID         string    `json:"id"`
	Created    time.Time `json:"created"`
	Command    []string  `json:"command"`
	Workspace  string    `json:"workspace"`
	Overlay    bool      `json:"overlay"`
	PID        int       `json:"pid"`
	PIDStart   string    `json:"pidStart"` // /proc/PID/stat start time, against pid reuse
	Network    string    `json:"network"`
	CNIConfDir string    `json:"cniConfDir,omitempty"`
	CNIBinDir  string    `json:"cniBinDir,omitempty"`
	Exited     bool      `json:"exited"`
	ExitCode   int       `json:"exitCode"`
	// Bound and Writable are the host directories the run binds, and
	// those of them it may write: runs that overlap a writable one are
	// refused while it lives (see conflicting).
	Bound    []string `json:"bound,omitempty"`
	Writable []string `json:"writable,omitempty"`
}

func overlaps(a, b string) bool {
	return a == b || strings.HasPrefix(a, strings.TrimSuffix(b, "/")+"/") || strings.HasPrefix(b, strings.TrimSuffix(a, "/")+"/")
}

// conflicting returns a live run of stateDir, other than r, that may write
// a directory r binds or binds a directory r may write. The secret scan is
// a snapshot: a command renaming directories in a tree while another run
// scans it could hide a secret from the scan, or move it under a decoy.
func conflicting(stateDir string, r *Record) *Record {
	runs, _ := ListRuns(stateDir)
	for _, o := range runs {
		if o.ID == r.ID || o.Exited || !o.alive() {
			continue
		}
		for _, pair := range [][2][]string{{o.Writable, r.Bound}, {r.Writable, o.Bound}} {
			for _, w := range pair[0] {
				for _, b := range pair[1] {
					if overlaps(w, b) {
						return o
					}
				}
			}
		}
	}
	return nil
}

// DefaultStateDir is /var/lib/paddock/runs for root, else
// $XDG_STATE_HOME/paddock/runs (~/.local/state/paddock/runs).
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/paddock/runs"
	}
	if x := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, "paddock", "runs")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "paddock", "runs")
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (r *Record) save(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "run.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save run record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "run.json")); err != nil {
		return fmt.Errorf("save run record: %w", err)
	}
	return nil
}

func loadRecord(dir string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, "run.json"))
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return &r, nil
}

// pidStart is field 22 of /proc/PID/stat, the process start time.
func pidStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		f := strings.Fields(s[i+1:])
		if len(f) > 19 {
			return f[19]
		}
	}
	return ""
}

func (r *Record) alive() bool {
	return r.PID > 0 && r.PIDStart != "" && pidStart(r.PID) == r.PIDStart
}

// ListRuns returns the runs recorded in stateDir, oldest first.
func ListRuns(stateDir string) ([]*Record, error) {
	ents, err := os.ReadDir(stateDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	var out []*Record
	for _, e := range ents {
		if r, err := loadRecord(filepath.Join(stateDir, e.Name())); err == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// collect tears down what crashed runs left behind: their network
// attachment, cgroups and, unless they hold an overlay to review, their
// directory. Runs whose launcher is still alive are left alone.
func collect(stateDir string) {
	runs, _ := ListRuns(stateDir)
	for _, r := range runs {
		if r.Exited || r.alive() {
			continue
		}
		dir := filepath.Join(stateDir, r.ID)
		if r.Network == NetworkPaddock {
			if n, err := loadCNI(r.CNIConfDir, r.CNIBinDir, "", r.ID); err == nil {
				if err := n.del(); err != nil {
					fmt.Fprintf(os.Stderr, "paddock: leftover run %s: %v\n", r.ID, err)
					continue
				}
			}
		}
		removeCgroupsFor(r.ID)
		if r.Overlay {
			r.Exited, r.ExitCode = true, -1
			_ = r.save(dir)
		} else {
			_ = os.RemoveAll(dir)
		}
	}
}
