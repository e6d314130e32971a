package proxy

import (
	"fmt"
	"os"
	"strings"

	"github.com/paddock-sandbox/paddock/proxy/policy"
)

// Secrets is where injected credentials come from.
type Secrets interface {
	Secret(inj policy.Inject) (string, error)
}

// FileEnvSecrets reads secretFile on every use (so rotation needs no restart)
// or the proxy's secretEnv variable.
type FileEnvSecrets struct{}

func (FileEnvSecrets) Secret(inj policy.Inject) (string, error) {
	if inj.SecretFile != "" {
		b, err := os.ReadFile(inj.SecretFile)
		if err != nil {
			return "", fmt.Errorf("secret for header %s: %w", inj.Header, err)
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			return "", fmt.Errorf("secret for header %s: %s is empty", inj.Header, inj.SecretFile)
		}
		return s, nil
	}
	s, ok := os.LookupEnv(inj.SecretEnv)
	if !ok || s == "" {
		return "", fmt.Errorf("secret for header %s: environment variable %s is not set in the proxy", inj.Header, inj.SecretEnv)
	}
	return s, nil
}
