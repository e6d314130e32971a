package conflist

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// confDir copies the fixtures into a temp dir, the chain targets with mode
// 0600 so that keeping the mode is tested.
func confDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := append(fixtureFiles(), "99-single.conf")
	for _, f := range refused {
		files = append(files, f.file)
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), readFixture(t, f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func fixtureFiles() []string {
	var fs []string
	for _, f := range fixtures {
		fs = append(fs, f.file)
	}
	return fs
}

// snapshot is every file in dir with its mode and bytes.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		info, _ := e.Info()
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[e.Name()] = info.Mode().String() + " " + string(b)
	}
	return out
}

func names(m map[string]string) string {
	var ns []string
	for n := range m {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return strings.Join(ns, " ")
}

func sameSnapshot(t *testing.T, got, want map[string]string) {
	t.Helper()
	if names(got) != names(want) {
		t.Fatalf("files: got %s\nwant %s", names(got), names(want))
	}
	for n := range want {
		if got[n] != want[n] {
			t.Errorf("%s differs:\n%s\n--- want\n%s", n, got[n], want[n])
		}
	}
}

func TestInstallUninstallChain(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.network, func(t *testing.T) {
			dir := confDir(t)
			orig := snapshot(t, dir)
			o := Options{ConfDir: dir, Chain: f.network, Entry: entry}
			c, err := Install(o)
			path := filepath.Join(dir, f.file)
			if err != nil || c.Action != Chained || c.File != path || c.Backup != path+BackupSuffix {
				t.Fatalf("Install = %+v, %v", c, err)
			}
			installed := snapshot(t, dir)
			if want := names(orig) + " " + f.file + BackupSuffix; names(installed) != sortWords(want) {
				t.Fatalf("after install: %s, want %s", names(installed), sortWords(want))
			}
			if installed[f.file+BackupSuffix] != orig[f.file] {
				t.Errorf("backup is not the original file with its mode")
			}
			info, _ := os.Stat(path)
			if info.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want the original 0600", info.Mode().Perm())
			}
			if want := readFixture(t, f.file+".chained"); !bytes.Equal(readFile2(t, path), want) {
				t.Errorf("installed file differs from the golden chained file")
			}

			if c, err := Install(o); err != nil || c.Action != Unchanged {
				t.Fatalf("second Install = %+v, %v", c, err)
			}
			sameSnapshot(t, snapshot(t, dir), installed)

			if c, err := Uninstall(dir, f.network); err != nil || c.Action != Restored || c.Backup != "" {
				t.Fatalf("Uninstall = %+v, %v", c, err)
			}
			sameSnapshot(t, snapshot(t, dir), orig)
			if c, err := Uninstall(dir, f.network); err != nil || c.Action != Unchanged {
				t.Fatalf("second Uninstall = %+v, %v", c, err)
			}
			sameSnapshot(t, snapshot(t, dir), orig)
		})
	}
}

func sortWords(s string) string {
	w := strings.Fields(s)
	sort.Strings(w)
	return strings.Join(w, " ")
}

func readFile2(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUninstallKeepsLaterEdits(t *testing.T) {
	dir := confDir(t)
	path := filepath.Join(dir, "20-ptp.conflist")
	if _, err := Install(Options{ConfDir: dir, Chain: "ptp-net", Entry: entry}); err != nil {
		t.Fatal(err)
	}
	// The operator raises the MTU after the install.
	edited := bytes.Replace(readFile2(t, path), []byte(`"mtu": 1400`), []byte(`"mtu": 9000`), 1)
	if err := os.WriteFile(path, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Uninstall(dir, "ptp-net")
	if err != nil || c.Action != Unchained || c.Backup != path+BackupSuffix {
		t.Fatalf("Uninstall = %+v, %v", c, err)
	}
	want := bytes.Replace(readFixture(t, "20-ptp.conflist"), []byte(`"mtu": 1400`), []byte(`"mtu": 9000`), 1)
	if got := readFile2(t, path); !bytes.Equal(got, want) {
		t.Errorf("got\n%s\nwant the edited original\n%s", got, want)
	}
	if _, err := os.Stat(path + BackupSuffix); err != nil {
		t.Errorf("backup of an edited file was dropped: %v", err)
	}
}

func TestInstallStandalone(t *testing.T) {
	dir := confDir(t)
	orig := snapshot(t, dir)
	c, err := Install(Options{ConfDir: dir, Entry: entry})
	path := filepath.Join(dir, StandaloneFile)
	if err != nil || c.Action != Written || c.File != path {
		t.Fatalf("Install = %+v, %v", c, err)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", info.Mode().Perm())
	}
	if c, err := Install(Options{ConfDir: dir, Entry: entry}); err != nil || c.Action != Unchanged {
		t.Fatalf("second Install = %+v, %v", c, err)
	}
	if c, err := Uninstall(dir, ""); err != nil || c.Action != Removed {
		t.Fatalf("Uninstall = %+v, %v", c, err)
	}
	sameSnapshot(t, snapshot(t, dir), orig)

	// A file of that name paddock did not write is left alone.
	foreign := []byte(`{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"bridge"}]}`)
	if err := os.WriteFile(path, foreign, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(Options{ConfDir: dir, Entry: entry}); err == nil || !strings.Contains(err.Error(), "not a paddock conflist") {
		t.Errorf("Install over a foreign file: %v", err)
	}
	if _, err := Uninstall(dir, ""); err == nil {
		t.Error("Uninstall removed a foreign file")
	}
	if !bytes.Equal(readFile2(t, path), foreign) {
		t.Error("foreign file changed")
	}
}

func TestInstallRefusals(t *testing.T) {
	for _, tc := range []struct{ name, chain, want string }{
		{"single-plugin conf", "single", "99-single.conf"},
		{"unknown network", "nope", `"podman" (87-podman-bridge.conflist)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := confDir(t)
			orig := snapshot(t, dir)
			_, err := Install(Options{ConfDir: dir, Chain: tc.chain, Entry: entry})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %s", err, tc.want)
			}
			sameSnapshot(t, snapshot(t, dir), orig)
		})
	}
	for _, f := range refused {
		t.Run(f.network, func(t *testing.T) {
			dir := confDir(t)
			orig := snapshot(t, dir)
			o := Options{ConfDir: dir, Chain: f.network, Entry: entry}
			var pe *PrimaryError
			if err := Check(o); !errors.As(err, &pe) || pe.Type != f.primary {
				t.Errorf("Check = %v, want a PrimaryError for %q", err, f.primary)
			}
			_, err := Install(o)
			if !errors.As(err, &pe) || pe.Type != f.primary || !strings.Contains(err.Error(), f.file) || !strings.Contains(err.Error(), `"`+f.network+`"`) {
				t.Errorf("Install = %v, want a PrimaryError for %q naming the network and %s", err, f.primary, f.file)
			}
			sameSnapshot(t, snapshot(t, dir), orig)
		})
	}
	if _, err := Install(Options{ConfDir: t.TempDir(), Chain: "podman", Entry: entry}); err == nil || !strings.Contains(err.Error(), "holds no CNI configuration") {
		t.Errorf("empty dir: %v", err)
	}
	if _, err := Install(Options{Chain: "podman", Entry: entry}); err == nil {
		t.Error("empty conf dir accepted")
	}
}

// A conflist that is a symlink (configuration management often links it in)
// stays a symlink; the file it names is edited.
func TestInstallThroughSymlink(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	real := filepath.Join(elsewhere, "calico.conflist")
	if err := os.WriteFile(real, readFixture(t, "10-calico.conflist"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "10-calico.conflist")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(Options{ConfDir: dir, Chain: "k8s-pod-network", Entry: entry}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the conflist is no longer a symlink: %v", err)
	}
	if has, _ := HasEntry(readFile2(t, real)); !has {
		t.Error("the linked file was not chained")
	}
	if _, err := Uninstall(dir, "k8s-pod-network"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile2(t, real), readFixture(t, "10-calico.conflist")) {
		t.Error("uninstall did not restore the linked file")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("conf dir holds %d entries after uninstall, want the link only", len(ents))
	}
}
