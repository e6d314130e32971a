package enforcer

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// reopenCheck is how often a LogFile looks whether logrotate (or an
// operator) moved or deleted the file it writes to.
const reopenCheck = time.Second

// LogFile is an append-only JSON-lines log (drops.jsonl, audit.jsonl) that
// follows rotation: when the file at its path is no longer the one it has
// open, the next write goes to a new file there, so rotated logs do not
// swallow lines.
type LogFile struct {
	path string

	mu      sync.Mutex
	f       *os.File
	checked time.Time
}

// OpenLogFile opens (creating, mode 0640, directory 0750) the log at path.
func OpenLogFile(path string) (*LogFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &LogFile{path: path, f: f, checked: time.Now()}, nil
}

func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	return f, nil
}

// Write appends p, which should be whole lines, in one write.
func (lf *LogFile) Write(p []byte) (int, error) {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.f == nil {
		return 0, os.ErrClosed
	}
	if time.Since(lf.checked) >= reopenCheck {
		lf.checked = time.Now()
		if err := lf.reopenIfMoved(); err != nil {
			return 0, err
		}
	}
	return lf.f.Write(p)
}

// reopenIfMoved switches to a new file at path when the open one is not
// the file there any more; the caller holds mu.
func (lf *LogFile) reopenIfMoved() error {
	cur, err := lf.f.Stat()
	if err != nil {
		return fmt.Errorf("stat log: %w", err)
	}
	if st, err := os.Stat(lf.path); err == nil && os.SameFile(st, cur) {
		return nil
	}
	f, err := openAppend(lf.path)
	if err != nil {
		return fmt.Errorf("reopen log: %w", err)
	}
	lf.f.Close()
	lf.f = f
	return nil
}

// Close closes the file; later writes fail.
func (lf *LogFile) Close() error {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.f == nil {
		return nil
	}
	err := lf.f.Close()
	lf.f = nil
	return err
}
