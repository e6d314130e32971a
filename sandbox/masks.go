package sandbox

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultMasks are the secrets hidden wherever they appear in a bound
// directory. A trailing slash means "directory"; a pattern with a slash
// matches the last path components.
var DefaultMasks = []string{
	".env", ".env.*", ".git-credentials", ".aws/", ".config/gcloud/", ".azure/",
	".docker/config.json", ".kube/config", ".npmrc", ".pypirc",
	"*-service-account.json", "*.pem", "*.key", ".ssh/",
}

// Scan bounds: a huge tree must not stall startup; what lies deeper or
// beyond the count is reported in --verbose.
const (
	maskMaxDepth   = 8
	maskMaxEntries = 50000
)

// skipDirs are not descended: large and not where secrets live.
var skipDirs = map[string]bool{"node_modules": true, ".git": true, "__pycache__": true, ".venv": true}

// maskSet is what to hide, as paths inside the sandbox.
type maskSet struct {
	Files     []string
	Dirs      []string
	Truncated bool
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
// ".config/gcloud/" matches in a home directory mounted at its root.
func scanMasks(src, dst string, pats []pattern, out *maskSet) {
	base := strings.Split(strings.Trim(dst, "/"), "/")
	n := 0
	_ = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if p == src {
			return nil
		}
		n++
		if n > maskMaxEntries {
			out.Truncated = true
			return fs.SkipAll
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
				if isDir {
					out.Dirs = append(out.Dirs, inside)
					return fs.SkipDir
				}
				if typ.IsRegular() {
					out.Files = append(out.Files, inside)
				}
				return nil
			}
		}
		if isDir {
			if skipDirs[d.Name()] || len(relParts) >= maskMaxDepth {
				if len(relParts) >= maskMaxDepth {
					out.Truncated = true
				}
				return fs.SkipDir
			}
		}
		return nil
	})
}
