package api

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultExplicitSocket is where paddockd serves the explicit proxy to
// trusted (root) clients such as `paddock run --network none`.
const DefaultExplicitSocket = "/run/paddock/explicit.sock"

// ExplicitNetwork is the Network of the synthetic sandbox a client of the
// explicit socket speaks for.
const ExplicitNetwork = "paddock-run"

// MaxExplicitHeader bounds the header line, newline included.
const MaxExplicitHeader = 256

const explicitProto = "PADDOCK-EXPLICIT/1"

var (
	explicitPolicy  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	explicitSandbox = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// ExplicitHeader is the line a client of the explicit socket writes before
// it speaks the HTTP proxy protocol: which sandbox it relays for and under
// which policy. Only root can connect, so paddockd trusts it.
func ExplicitHeader(sandbox, policy string) (string, error) {
	if err := checkExplicit(sandbox, policy); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s sandbox=%s policy=%s\n", explicitProto, sandbox, policy), nil
}

// ParseExplicitHeader parses one header line (with its newline) strictly:
// exactly the protocol, sandbox= and policy=, in that order, single spaces.
func ParseExplicitHeader(line string) (Sandbox, error) {
	if len(line) > MaxExplicitHeader {
		return Sandbox{}, fmt.Errorf("explicit header longer than %d bytes", MaxExplicitHeader)
	}
	body, ok := strings.CutSuffix(line, "\n")
	if !ok {
		return Sandbox{}, fmt.Errorf("explicit header does not end in a newline")
	}
	f := strings.Split(body, " ")
	if len(f) != 3 || f[0] != explicitProto {
		return Sandbox{}, fmt.Errorf("explicit header %q: want %q", body, explicitProto+" sandbox=ID policy=NAME")
	}
	id, ok1 := strings.CutPrefix(f[1], "sandbox=")
	pol, ok2 := strings.CutPrefix(f[2], "policy=")
	if !ok1 || !ok2 {
		return Sandbox{}, fmt.Errorf("explicit header %q: want %q", body, explicitProto+" sandbox=ID policy=NAME")
	}
	if err := checkExplicit(id, pol); err != nil {
		return Sandbox{}, err
	}
	return Sandbox{Network: ExplicitNetwork, ContainerID: id, Policy: pol}, nil
}

func checkExplicit(sandbox, policy string) error {
	if !explicitSandbox.MatchString(sandbox) {
		return fmt.Errorf("sandbox id %q: want 1 to 64 of A-Z a-z 0-9 . _ -", sandbox)
	}
	if !explicitPolicy.MatchString(policy) {
		return fmt.Errorf("policy name %q: want lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, at most 63", policy)
	}
	return nil
}
