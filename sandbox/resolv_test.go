package sandbox

import (
	"os"
	"path/filepath"
	"testing"
)

func TestResolvConf(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(root, "etc", "resolv.conf"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("nameserver 127.0.0.53\nsearch corp.example\noptions edns0\n")
	if got, want := string(resolvConf(root, []string{"10.1.0.1"})), "search corp.example\noptions edns0\nnameserver 10.1.0.1\n"; got != want {
		t.Errorf("loopback stub: got %q, want %q", got, want)
	}
	write("nameserver 192.0.2.53\n")
	if got, want := string(resolvConf(root, []string{"10.1.0.1"})), "nameserver 192.0.2.53\n"; got != want {
		t.Errorf("reachable server: got %q, want %q", got, want)
	}
}
