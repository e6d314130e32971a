package enforcer

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLogFileFollowsRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log", "audit.jsonl")
	lf, err := OpenLogFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if _, err := lf.Write([]byte("{\"n\":1}\n")); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("log file: %v %v", st, err)
	}
	// logrotate's default: move the file away; writers must notice.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reopenCheck + 100*time.Millisecond)
	if _, err := lf.Write([]byte("{\"n\":2}\n")); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if string(old) != "{\"n\":1}\n" || string(cur) != "{\"n\":2}\n" {
		t.Fatalf("rotated %q, current %q", old, cur)
	}
	lf.Close()
	if _, err := lf.Write([]byte("x\n")); err == nil {
		t.Fatal("write after Close succeeded")
	}
}
