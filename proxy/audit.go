package proxy

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// AuditRecord is one line of audit.jsonl: one per HTTP request on a
// terminated or plain connection, one per passthrough/opaque connection, one
// per blocked DNS question.
type AuditRecord struct {
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"` // http, passthrough, tcp, dns
	Sandbox    string    `json:"sandbox"`
	Src        string    `json:"src,omitempty"`
	Dst        string    `json:"dst,omitempty"`
	SNI        string    `json:"sni,omitempty"`
	Host       string    `json:"host,omitempty"`
	Method     string    `json:"method,omitempty"`
	Path       string    `json:"path,omitempty"`
	Status     int       `json:"status,omitempty"`
	BytesUp    int64     `json:"bytesUp"`
	BytesDown  int64     `json:"bytesDown"`
	DurationMs int64     `json:"durationMs"`
	Decision   string    `json:"decision"` // allow or deny
	Rule       string    `json:"rule,omitempty"`
	Policy     string    `json:"policy,omitempty"`
	Injected   []string  `json:"injected,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// Auditor writes audit records as JSON lines; safe for concurrent use.
type Auditor struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewAuditor writes to w (nil: records are dropped).
func NewAuditor(w io.Writer) *Auditor {
	if w == nil {
		w = io.Discard
	}
	return &Auditor{enc: json.NewEncoder(w)}
}

func (a *Auditor) Write(r *AuditRecord) {
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.enc.Encode(r)
}
