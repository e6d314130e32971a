package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrintAuditFilters(t *testing.T) {
	log := `{"time":"2026-11-26T14:00:00Z","kind":"http","sandbox":"0123456789ab","host":"a.test","method":"GET","path":"/x","status":403,"bytesUp":0,"bytesDown":10,"durationMs":1,"decision":"deny","rule":"egress[1]","policy":"default","error":"no rule allows this host"}
not json
{"time":"2026-11-26T14:00:01Z","kind":"tcp","sandbox":"fedcba987654","dst":"203.0.113.1:22","bytesUp":0,"bytesDown":0,"durationMs":0,"decision":"deny"}
`
	var out bytes.Buffer
	if err := printAudit(strings.NewReader(log), &out, false, false, "0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "deny  GET     a.test/x 403") || strings.Contains(s, "203.0.113.1") {
		t.Fatalf("filtered output:\n%s", s)
	}
	out.Reset()
	if err := printAudit(strings.NewReader(log), &out, false, true, ""); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Fatalf("--json printed %d lines, want the 2 valid ones", n)
	}
}

func TestPolicyCheckExitCode(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("egress:\n  - domains: [a.test]\n"), 0o644)
	os.WriteFile(bad, []byte("egress:\n  - domains: [a.test]\n    tls: maybe\n"), 0o644)
	if err := cmdPolicy([]string{"check", good}); err != nil {
		t.Fatalf("good policy: %v", err)
	}
	if err := cmdPolicy([]string{"check", good, bad}); err != exitCode(1) {
		t.Fatalf("bad policy: %v, want exit 1", err)
	}
	if err := cmdPolicy([]string{"check"}); err == nil {
		t.Fatal("no files accepted")
	}
}
