package sandbox

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// The parent hands the init process (PID 1 inside) an initSpec, and init
// hands the exec stage an execSpec, each as JSON on file descriptor 3. The
// reader blocks until the writer closes, which is also the "go" signal:
// the parent closes only after cgroup placement and network setup.

type bindSpec struct {
	Src   string `json:"src"` // host path
	Dst   string `json:"dst"`
	RW    bool   `json:"rw,omitempty"`
	Upper string `json:"upper,omitempty"` // overlay upper dir (host path)
	Work  string `json:"work,omitempty"`
	File  bool   `json:"file,omitempty"`
}

type tmpfsSpec struct {
	Path   string `json:"path"`
	Size   string `json:"size,omitempty"`
	Mode   string `json:"mode"`
	NoExec bool   `json:"noexec,omitempty"`
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
}

type initSpec struct {
	RootFS   string      `json:"rootfs"`
	Binds    []bindSpec  `json:"binds"`
	Tmpfs    []tmpfsSpec `json:"tmpfs"`
	Masks    maskSet     `json:"masks"`
	Hidden   []string    `json:"hidden"`
	Hostname string      `json:"hostname"`
	// ProxySock is the host-side Unix socket bridged to ProxyPort on the
	// sandbox's loopback (--network none); empty otherwise.
	ProxySock string   `json:"proxySock,omitempty"`
	ProxyPort int      `json:"proxyPort,omitempty"`
	Verbose   bool     `json:"verbose,omitempty"`
	Exec      execSpec `json:"exec"`
}

type execSpec struct {
	Argv     []string       `json:"argv"`
	Env      []string       `json:"env"`
	Dir      string         `json:"dir"`
	UID      int            `json:"uid"`
	GID      int            `json:"gid"`
	Seccomp  *SeccompFilter `json:"seccomp"`
	Writable []string       `json:"writable"`
	Nproc    uint64         `json:"nproc,omitempty"`
	Verbose  bool           `json:"verbose,omitempty"`
}

const specFD = 3

func readSpec(v any) error {
	f := os.NewFile(specFD, "spec")
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	if len(b) == 0 {
		return fmt.Errorf("launcher went away before handing over the spec")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode spec: %w", err)
	}
	return nil
}
