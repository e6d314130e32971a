package main

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// Register refuses a policy without a file in the policy dir with
// api.ErrUnknownPolicy, naming the file, and attaches nothing.
func TestBackendRegisterChecksPolicy(t *testing.T) {
	b, f, _ := newTestBackend(t)
	b.policyDir = t.TempDir()
	if err := os.WriteFile(filepath.Join(b.policyDir, "default.yaml"), []byte("egress: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, name := range []string{"ghost", "../default", ""} {
		sb := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
		sb.Policy = name
		_, err := b.Register(ctx, sb)
		if !errors.Is(err, api.ErrUnknownPolicy) || !strings.Contains(err.Error(), `"`+name+`"`) {
			t.Fatalf("policy %q: want ErrUnknownPolicy naming it, got %v", name, err)
		}
		if f.isAttached(sb.Key()) || b.reg.Len() != 0 {
			t.Fatalf("policy %q: refused sandbox left attached or registered", name)
		}
	}
	sb := sandbox("aaaaaaaaaaaa", "10.99.0.2", 7)
	if _, err := b.Register(ctx, sb); err != nil {
		t.Fatalf("existing policy: %v", err)
	}
}

// The refusal crosses the API as 422 and comes back as ErrUnknownPolicy.
func TestAPIUnknownPolicy(t *testing.T) {
	b, _, _ := newTestBackend(t)
	b.policyDir = t.TempDir()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.Handler(b), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	c := api.NewClient(sock)
	_, err = c.Register(t.Context(), sandbox("aaaaaaaaaaaa", "10.99.0.2", 7))
	if !errors.Is(err, api.ErrUnknownPolicy) || !strings.Contains(err.Error(), "default.yaml does not exist") {
		t.Fatalf("want ErrUnknownPolicy naming default.yaml, got %v", err)
	}
}
