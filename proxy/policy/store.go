package policy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ParseFile reads and parses one policy file; its name is the file's base
// name without ".yaml".
func ParseFile(file string) (*Policy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(file, strings.TrimSuffix(filepath.Base(file), ".yaml"), data)
}

type fileState struct {
	mtime time.Time
	size  int64
}

// Store holds the policies of one directory and reloads them when files
// change. A file that stops parsing keeps its last good version; a removed
// file removes its policy. Lookups never block on reloads.
type Store struct {
	dir string
	log *slog.Logger

	mu       sync.RWMutex
	policies map[string]*Policy
	seen     map[string]fileState
}

// NewStore loads every NAME.yaml of dir once. Files that do not parse are
// logged and skipped, not fatal: their sandboxes are denied until fixed.
func NewStore(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{dir: dir, log: log, policies: map[string]*Policy{}, seen: map[string]fileState{}}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("policy dir: %w", err)
	}
	s.Reload()
	return s, nil
}

// Get returns the policy called name.
func (s *Store) Get(name string) (*Policy, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.policies[name]
	return p, ok
}

// Reload rescans the directory and reparses changed files.
func (s *Store) Reload() {
	files, err := filepath.Glob(filepath.Join(s.dir, "*.yaml"))
	if err != nil {
		s.log.Error("scan policy dir", "dir", s.dir, "reason", err.Error())
		return
	}
	present := map[string]bool{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		present[name] = true
		fi, err := os.Stat(f)
		if err != nil {
			continue
		}
		st := fileState{mtime: fi.ModTime(), size: fi.Size()}
		s.mu.RLock()
		old, seen := s.seen[name]
		s.mu.RUnlock()
		if seen && old == st {
			continue
		}
		p, err := ParseFile(f)
		s.mu.Lock()
		s.seen[name] = st
		if err != nil {
			_, kept := s.policies[name]
			s.mu.Unlock()
			s.log.Error("policy does not parse; keeping the last good version", "policy", name, "file", f, "kept", kept, "reason", err.Error())
			continue
		}
		s.policies[name] = p
		s.mu.Unlock()
		s.log.Info("policy loaded", "policy", name, "file", f, "rules", len(p.Egress))
	}
	s.mu.Lock()
	for name := range s.seen {
		if !present[name] {
			delete(s.seen, name)
			delete(s.policies, name)
			s.log.Info("policy removed", "policy", name)
		}
	}
	s.mu.Unlock()
}

// Watch reloads every interval until ctx ends. Open connections keep the
// *Policy they started with for their connection-level decision; each new
// request is decided against the current version.
func (s *Store) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Reload()
		}
	}
}
