package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Bin is one Go command a test needs as a real executable: Name is its file
// name, Pkg the package path ("." for the package under test).
type Bin struct {
	Name, Pkg string
}

// Binaries builds its Bins into one temp dir the first time a test asks
// (once per test binary, since builds are slow on a shared machine) and
// removes the dir when TestMain calls Remove.
type Binaries struct {
	// Pattern names the temp dir, as for os.MkdirTemp.
	Pattern string
	Bins    []Bin

	once sync.Once
	dir  string
	err  error
}

// Dir returns the dir holding every built Bin, failing t if a build failed.
func (b *Binaries) Dir(t testing.TB) string {
	t.Helper()
	b.once.Do(func() { b.dir, b.err = b.build() })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.dir
}

func (b *Binaries) build() (string, error) {
	dir, err := os.MkdirTemp("", b.Pattern)
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	for _, bin := range b.Bins {
		out, err := exec.Command(goBin, "build", "-buildvcs=false", "-o", filepath.Join(dir, bin.Name), bin.Pkg).CombinedOutput()
		if err != nil {
			return dir, fmt.Errorf("go build %s: %v\n%s", bin.Pkg, err, out)
		}
	}
	return dir, nil
}

// Remove deletes the built binaries, if any were built.
func (b *Binaries) Remove() {
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}
