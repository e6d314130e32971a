package testutil

import (
	"bytes"
	"sync"
)

// SyncBuffer is a log or audit sink a test reads while another goroutine
// (a daemon, the proxy, a watcher) is still writing to it; bytes.Buffer alone
// would race.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
