// Command demo is `make demo`: it builds the test world in network
// namespaces (nothing in the root namespace changes), starts paddockd with a
// one-rule policy, attaches a sandbox through the real CNI plugin, and shows
// paddock's main job: an allowed HTTPS site reached through the proxy (with a
// credential the sandbox never sees), a blocked one refused, non-TCP traffic
// dropped — then the audit and drop lines that resulted.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
)

const policy = `# demo policy: one site, with a credential injected by the proxy
dns: allowlist
egress:
  - domains: [allowed.test]
    inject:
      - header: Authorization
        value: "Bearer {secret}"
        secretFile: %s
`

type stdLogger struct{}

func (stdLogger) Logf(format string, args ...any) { log.Printf(format, args...) }

func main() {
	log.SetFlags(0)
	log.SetPrefix("demo: ")
	if os.Geteuid() != 0 {
		log.Fatal("run as root: the demo builds network namespaces, veths, eBPF and nftables (in its own namespaces only)")
	}
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() (err error) {
	w, err := world.Build(stdLogger{}, world.Options{})
	if err != nil {
		return fmt.Errorf("build world: %w", err)
	}
	defer func() {
		if cerr := w.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	// Ctrl-C still tears the world down.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() { <-sigc; w.Close(); os.Exit(130) }()

	secret := filepath.Join(w.Dir, "secrets", "api-token")
	if err := os.MkdirAll(filepath.Dir(secret), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(secret, []byte("s3cr3t-demo-token"), 0o644); err != nil {
		return err
	}
	if err := w.WritePolicy("default", fmt.Sprintf(policy, secret)); err != nil {
		return err
	}
	d, err := w.LaunchDaemon(world.DaemonOptions{})
	if err != nil {
		return fmt.Errorf("start paddockd: %w", err)
	}
	sb, err := w.CreateSandbox("agent", world.SandboxOptions{})
	if err != nil {
		return fmt.Errorf("attach sandbox: %w", err)
	}
	ca := filepath.Join(d.CADir, "ca.pem")
	bin := w.BinDir

	step("paddock status")
	show(exec.Command(filepath.Join(bin, "paddock"), "status", "--socket", d.Socket))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sbx := func(title string, argv ...string) {
		step(title + "\n  (inside sandbox " + sb.NSName + ", " + sb.IP.String() + "): " + strings.Join(argv, " "))
		out, err := sb.Exec(ctx, argv...)
		fmt.Print(indent(string(out)))
		if err != nil {
			fmt.Printf("  -> %v\n", firstLine(err.Error()))
		}
	}
	curl := []string{"curl", "-sS", "-m", "5", "--cacert", ca}
	sbx("allowed site, through the transparent proxy (the sandbox has no proxy settings at all)",
		append(curl, "https://allowed.test/")...)
	sbx("Node's fetch, which ignores HTTP_PROXY anyway, goes the same way",
		"env", "NODE_EXTRA_CA_CERTS="+ca, "node", "-e",
		`fetch("https://allowed.test/").then(r => r.text()).then(t => process.stdout.write(t), e => { console.error(String(e.cause || e)); process.exit(1) })`)
	sbx("the upstream sees the injected credential; the sandbox never had it (the echo is redacted)",
		append(curl, "https://allowed.test/echo-secret")...)
	sbx("blocked site: its name does not resolve (the DNS guard answers NXDOMAIN)",
		append(curl, "https://blocked.test/")...)
	sbx("blocked site by address: the proxy refuses it with a 403 the agent can read",
		append(curl, "--resolve", "blocked.test:443:192.0.2.10", "https://blocked.test/")...)
	sbx("ICMP is dropped on the host side of the veth", "ping", "-c", "1", "-W", "1", "192.0.2.20")
	sbx("UDP that is not DNS is dropped too", "bash", "-c", "echo exfil > /dev/udp/192.0.2.20/7 && echo 'sent (and dropped)'")
	time.Sleep(500 * time.Millisecond) // NFLOG delivery

	step("audit lines (paddock audit)")
	show(exec.Command(filepath.Join(bin, "paddock"), "audit", "--log-dir", d.LogDir))
	step("drop lines (paddock drops)")
	show(exec.Command(filepath.Join(bin, "paddock"), "drops", "--log-dir", d.LogDir))
	step("leak detector in the internet namespace")
	if leaks := w.Leaks(); len(leaks) > 0 {
		return fmt.Errorf("LEAKED: %v", leaks)
	}
	fmt.Println("  no packet with a sandbox source address reached the internet")
	return sb.Del()
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func show(cmd *exec.Cmd) {
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(string(out)))
	if err != nil {
		fmt.Printf("  -> %v\n", err)
	}
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	s = strings.TrimRight(s, "\n")
	return "  " + strings.ReplaceAll(s, "\n", "\n  ") + "\n"
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
