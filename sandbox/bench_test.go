package sandbox_test

import (
	"os"
	"os/exec"
	"testing"
)

// BenchmarkStartup times `paddock run -- true` next to a comparable
// bubblewrap invocation (read-only root, new /dev, /proc and /tmp, all
// namespaces, seccomp not included for bwrap) on the same machine.
func BenchmarkStartup(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("paddock run needs root")
	}
	ws, state := b.TempDir(), b.TempDir()
	run := func(b *testing.B, name string, args ...string) {
		for i := 0; i < b.N; i++ {
			cmd := exec.Command(name, args...)
			cmd.Dir = ws
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%s: %v\n%s", name, err, out)
			}
		}
	}
	b.Run("paddock", func(b *testing.B) {
		run(b, paddockBin, "run", "--network", "none", "--state-dir", state, "--", "true")
	})
	b.Run("bwrap", func(b *testing.B) {
		bwrap, err := exec.LookPath("bwrap")
		if err != nil {
			b.Skip("bubblewrap is not installed")
		}
		run(b, bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
			"--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "true")
	})
}
