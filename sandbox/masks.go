package sandbox

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultMasks are the secrets hidden wherever they appear in a bound
// directory. A trailing slash means "directory"; a pattern with a slash
// matches the last path components.
var DefaultMasks = []string{
	".env", ".env.*", ".git-credentials", ".aws/", ".config/gcloud/", ".azure/",
	".docker/config.json", ".kube/config", ".npmrc", ".pypirc",
	"*-service-account.json", "*.pem", "*.key", ".ssh/",
	".netrc", ".gnupg/", ".config/gh/", ".vault-token", ".cargo/credentials.toml",
}

// maskMaxEntries bounds the scan of one bound directory (outside
// skipDirs), so that a huge tree cannot stall startup. A tree beyond it is
// refused rather than bound with secrets left unexamined.
const maskMaxEntries = 100000

// skipDirs are not descended: large and not where secrets live.
var skipDirs = map[string]bool{"node_modules": true, ".git": true, "__pycache__": true, ".venv": true}

// maskSet is what to hide, as paths inside the sandbox.
type maskSet struct {
	Files []string
	Dirs  []string
	// IDs are the scanned (device, inode) of each path found in a
	// directory bind: the init masks exactly those.
	IDs map[string][2]uint64 `json:"ids,omitempty"`
}

// add lists a secret; pin records its identity, which an overlay's own
// device and inode numbers would not match.
func (m *maskSet) add(inside string, isDir bool, fi fs.FileInfo, pin bool) {
	if isDir {
		m.Dirs = append(m.Dirs, inside)
	} else {
		m.Files = append(m.Files, inside)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && pin {
		if m.IDs == nil {
			m.IDs = map[string][2]uint64{}
		}
		m.IDs[inside] = [2]uint64{uint64(st.Dev), st.Ino}
	}
}

type pattern struct {
	parts []string
	dir   bool
}

func compileMasks(globs []string) []pattern {
	var ps []pattern
	for _, g := range globs {
		ps = append(ps, pattern{parts: strings.Split(strings.Trim(g, "/"), "/"), dir: strings.HasSuffix(g, "/")})
	}
	return ps
}

func (p pattern) match(rel []string, isDir bool) bool {
	if p.dir && !isDir || len(rel) < len(p.parts) {
		return false
	}
	tail := rel[len(rel)-len(p.parts):]
	for i, pp := range p.parts {
		if ok, _ := filepath.Match(pp, tail[i]); !ok {
			return false
		}
	}
	return true
}

// scanMasks walks src (bound at dst) and lists what matches; rel paths are
// taken from prefix (the mount's path inside the sandbox) so that
// ".config/gcloud/" matches in a home directory mounted at its root. Every
// depth is examined: a secret nested deep is still a secret.
func scanMasks(src, dst string, pats []pattern, pin bool, out *maskSet) error {
	base := strings.Split(strings.Trim(dst, "/"), "/")
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// An entry that cannot be examined might hold a secret.
			return fmt.Errorf("look for secrets in %s: %w", p, err)
		}
		if p == src {
			return nil
		}
		n++
		if n > maskMaxEntries {
			return fmt.Errorf("%s holds more than %d entries (outside node_modules, .git, .venv, __pycache__) to look through for secrets: bind a smaller directory", src, maskMaxEntries)
		}
		r, _ := filepath.Rel(src, p)
		relParts := strings.Split(r, string(os.PathSeparator))
		rel := append(append([]string{}, base...), relParts...)
		inside := filepath.Join(dst, r)
		isDir := d.IsDir()
		typ := d.Type()
		if typ&fs.ModeSymlink != 0 {
			// A link is resolved inside the sandbox, against the sandbox's
			// own view: masking its target there is the target mount's job.
			return nil
		}
		for _, pt := range pats {
			if pt.match(rel, isDir) {
				if !isDir && !typ.IsRegular() {
					return nil
				}
				fi, err := d.Info()
				if err != nil {
					return fmt.Errorf("mask %s: %w", p, err)
				}
				out.add(inside, isDir, fi, pin)
				if isDir {
					return fs.SkipDir
				}
				return nil
			}
		}
		if isDir && skipDirs[d.Name()] {
			return fs.SkipDir
		}
		return nil
	})
	return err
}
