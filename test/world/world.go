package world

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Addresses held by the world. The node's uplink and the internet's servers
// are all TEST-NET addresses that only these namespaces hold.
var (
	NodeAddr     = netip.MustParseAddr("198.51.100.1")
	InternetAddr = netip.MustParseAddr("198.51.100.254")
	UplinkPrefix = 24
	WebAddr      = netip.MustParseAddr("192.0.2.10")
	DNSAddr      = netip.MustParseAddr("192.0.2.53")
	EchoAddr     = netip.MustParseAddr("192.0.2.20")
	OtherWebAddr = netip.MustParseAddr("203.0.113.10")
)

// DefaultSandboxRange is where sandbox addresses come from: the leak
// detector flags any packet from it that reaches the internet namespace.
var DefaultSandboxRange = netip.MustParsePrefix("10.0.0.0/8")

// Logger is what Build needs from its caller: *testing.T satisfies it, and so
// does a wrapper around log.Printf.
type Logger interface {
	Logf(format string, args ...any)
}

// Options shape a world. The zero value is the normal test world.
type Options struct {
	// ID names the world; its namespaces are "pw<ID>-node", "pw<ID>-inet"
	// and "pw<ID>-<sandbox>". Default: 4 random hex digits. At most 6
	// characters [a-z0-9] so that link names stay within 15 characters.
	ID string
	// Dir holds the CA, logs, CNI cache, IPAM and paddockd state. Default: a
	// new directory under os.TempDir, removed at teardown.
	Dir string
	// BinDir holds paddockd and cni/. Default: $PADDOCK_BIN, else bin/ in
	// the directory holding go.mod above the working directory.
	BinDir string
	// SandboxRange is the source range the leak detector flags; the internet
	// namespace routes it back to node so that a leak even gets answers.
	SandboxRange netip.Prefix
	// NoServers leaves the internet namespace without servers (tools/world
	// runs them in a long-lived child process instead).
	NoServers bool
	// NoCapture leaves out the leak detector (tools/world runs it in the
	// serving child).
	NoCapture bool
	// Persistent worlds outlive the process that built them (tools/world):
	// SweepStale leaves them alone.
	Persistent bool
}

// World is one built topology. Methods are safe for concurrent use.
type World struct {
	ID     string
	Prefix string // "pw" + ID: every namespace, link and file name starts with it
	Dir    string
	BinDir string

	NodeNS     string // namespace names (under /run/netns)
	InternetNS string
	NodeVeth   string // node's end of the uplink
	InetVeth   string // internet's end of the uplink

	// Subnet is this world's CNI IPAM range, 10.X.0.0/24 with X unique among
	// the worlds on this machine.
	Subnet       netip.Prefix
	SandboxRange netip.Prefix
	CAFile       string // PEM of the CA that signs the upstream servers' certificates

	log      Logger
	ownDir   bool
	ca       *CA
	node     ns.NetNS
	inet     ns.NetNS
	servers  *Servers
	capture  *Capture
	subClaim string

	mu        sync.Mutex
	sandboxes map[string]*Sandbox
	plain     map[string]*PlainSandbox
	daemons   []*Daemon
	pids      map[string]int
	closed    bool
}

// New builds a world for a test and tears it down in t.Cleanup, also after a
// failure or a panic. It skips the test unless it runs as root.
func New(t testing.TB, opts Options) *World {
	t.Helper()
	RequireRoot(t)
	w, err := Build(t, opts)
	if err != nil {
		t.Fatalf("build world: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			w.dumpLogs(t)
		}
		if err := w.Close(); err != nil {
			t.Errorf("tear down world %s: %v", w.Prefix, err)
		}
	})
	return w
}

// RequireRoot skips t unless the process is root with the tools a world needs.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (run with sudo, or `make test` as root)")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s in PATH (iproute2, util-linux)", tool)
		}
	}
}

// Build creates a world without *testing.T; the caller must Close it. On
// error nothing it made is left behind.
func Build(log Logger, opts Options) (w *World, err error) {
	if opts.ID == "" {
		opts.ID = randomHex(2)
	}
	if !validID(opts.ID) {
		return nil, fmt.Errorf("world id %q: want 1 to 6 characters of [a-z0-9]", opts.ID)
	}
	if !opts.SandboxRange.IsValid() {
		opts.SandboxRange = DefaultSandboxRange
	}
	if !opts.SandboxRange.Addr().Is4() {
		return nil, fmt.Errorf("sandbox range %s: want an IPv4 prefix", opts.SandboxRange)
	}
	bin, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	prefix := "pw" + opts.ID
	SweepStale(log)
	if _, err := os.Stat(netnsPath(prefix + "-node")); err == nil {
		return nil, fmt.Errorf("world %s exists (%s): pick another id, or tear it down first", prefix, netnsPath(prefix+"-node"))
	}
	w = &World{
		ID:           opts.ID,
		Prefix:       prefix,
		BinDir:       bin,
		NodeNS:       prefix + "-node",
		InternetNS:   prefix + "-inet",
		NodeVeth:     prefix + "-n",
		InetVeth:     prefix + "-i",
		SandboxRange: opts.SandboxRange.Masked(),
		log:          log,
		sandboxes:    map[string]*Sandbox{},
		plain:        map[string]*PlainSandbox{},
		pids:         map[string]int{},
	}
	defer func() {
		if err != nil {
			if cerr := w.Close(); cerr != nil {
				log.Logf("clean up after failed build of world %s: %v", prefix, cerr)
			}
			w = nil
		}
	}()
	if opts.Dir == "" {
		if w.Dir, err = os.MkdirTemp("", "paddock-"+prefix+"-"); err != nil {
			return w, fmt.Errorf("world dir: %w", err)
		}
		w.ownDir = true
		// The proxy runs unprivileged and must reach the policy and log
		// dirs below; secrets here (the upstream CA key) are 0600 themselves.
		if err = os.Chmod(w.Dir, 0o755); err != nil {
			return w, fmt.Errorf("world dir: %w", err)
		}
	} else {
		w.Dir = opts.Dir
		if err = os.MkdirAll(w.Dir, 0o755); err != nil {
			return w, fmt.Errorf("world dir: %w", err)
		}
	}
	owner := claim{Prefix: prefix, PID: os.Getpid()}
	if opts.Persistent {
		owner.PID = 0
	}
	if w.ownDir {
		owner.Dir = w.Dir
	}
	if w.Subnet, w.subClaim, err = claimSubnet(owner); err != nil {
		return w, err
	}
	if err = w.buildNetwork(); err != nil {
		return w, err
	}
	if w.ca, err = LoadOrCreateCA(w.Dir); err != nil {
		return w, err
	}
	w.CAFile = w.ca.CertFile
	// paddockd refuses sandboxes whose policy has no file; the default one
	// allows nothing until a test writes its own.
	if err = w.WritePolicy("default", DefaultPolicy); err != nil {
		return w, fmt.Errorf("default policy: %w", err)
	}
	if err = w.StartServices(!opts.NoServers, !opts.NoCapture); err != nil {
		return w, err
	}
	log.Logf("world %s up: node=%s internet=%s subnet=%s dir=%s", prefix, w.NodeNS, w.InternetNS, w.Subnet, w.Dir)
	return w, nil
}

// StartServices starts the leak detector and the internet servers in this
// process (tools/world's serving child calls it on an attached world).
func (w *World) StartServices(servers, capture bool) error {
	var err error
	if capture && w.capture == nil {
		if w.capture, err = StartCapture(w.inet, w.InetVeth, w.SandboxRange, NodeAddr); err != nil {
			return err
		}
	}
	if servers && w.servers == nil {
		if w.servers, err = StartServers(w.inet, w.ca, w.log); err != nil {
			return err
		}
	}
	return nil
}

// StopServices stops what StartServices started, leaving the topology up.
func (w *World) StopServices() {
	if w.servers != nil {
		w.servers.Close()
		w.servers = nil
	}
	if w.capture != nil {
		w.capture.Close()
		w.capture = nil
	}
}

// Close tears everything down: paddockd, sandboxes (CNI DEL), servers, the
// capture, namespaces (and with them every link), the bpffs dirs and the
// world dir. It is idempotent and keeps going past errors, returning them all.
func (w *World) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	sandboxes := make([]*Sandbox, 0, len(w.sandboxes))
	for _, sb := range w.sandboxes {
		sandboxes = append(sandboxes, sb)
	}
	plain := make([]*PlainSandbox, 0, len(w.plain))
	for _, p := range w.plain {
		plain = append(plain, p)
	}
	daemons := w.daemons
	w.mu.Unlock()

	var errs []error
	// DEL while paddockd still runs, so that it forgets the sandboxes the
	// normal way; DEL must also work without it, so a dead daemon is fine.
	for _, sb := range sandboxes {
		if err := sb.Del(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range plain {
		if err := p.Del(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range daemons {
		if err := d.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := w.endPIDs(); err != nil {
		errs = append(errs, err)
	}
	// Pinned links and maps go with their last reference once the pin
	// files are gone.
	if err := os.RemoveAll(w.BPFFSDir()); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", w.BPFFSDir(), err))
	}
	w.StopServices()
	// Only namespaces this world made or attached to: a failed Build must
	// never delete a namesake's.
	for name, h := range map[string]ns.NetNS{w.NodeNS: w.node, w.InternetNS: w.inet} {
		if h == nil {
			continue
		}
		h.Close()
		if err := deleteNetns(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := releaseClaim(w.subClaim, w.Prefix); err != nil {
		errs = append(errs, err)
	}
	if w.ownDir && w.Dir != "" {
		if err := os.RemoveAll(w.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// NodePath and InternetPath are the namespaces' bind-mount paths, for
// nsenter --net= and CNI_NETNS.
func (w *World) NodePath() string     { return netnsPath(w.NodeNS) }
func (w *World) InternetPath() string { return netnsPath(w.InternetNS) }

// InNode runs fn on an OS thread inside the node namespace (what a runtime
// and paddockd see); InInternet likewise inside internet.
func (w *World) InNode(fn func() error) error {
	return w.node.Do(func(ns.NetNS) error { return fn() })
}

func (w *World) InInternet(fn func() error) error {
	return w.inet.Do(func(ns.NetNS) error { return fn() })
}

// ExecNode runs argv inside the node namespace and returns its combined output.
func (w *World) ExecNode(argv ...string) ([]byte, error) {
	return nsExec(w.NodePath(), argv...)
}

// ExecInternet runs argv inside the internet namespace.
func (w *World) ExecInternet(argv ...string) ([]byte, error) {
	return nsExec(w.InternetPath(), argv...)
}

// Leaks describes every packet the internet namespace received from a
// sandbox address, or over IPv6. Empty without a capture.
func (w *World) Leaks() []string {
	if w.capture == nil {
		return nil
	}
	return w.capture.Leaks()
}

// AssertNoLeaks fails t with the leaks seen so far, if any. The capture reads
// asynchronously: it waits briefly for packets still in flight.
func (w *World) AssertNoLeaks(t testing.TB) {
	t.Helper()
	if w.capture == nil {
		t.Fatalf("world %s has no leak detector (built with NoCapture)", w.Prefix)
	}
	w.capture.Sync()
	if leaks := w.capture.Leaks(); len(leaks) > 0 {
		t.Errorf("%d packet(s) from a sandbox reached the internet namespace:\n  %s", len(leaks), strings.Join(leaks, "\n  "))
	}
}

// WaitLeak waits up to timeout for at least one leak and returns them all.
func (w *World) WaitLeak(timeout time.Duration) []string {
	if w.capture == nil {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := w.capture.Leaks(); len(l) > 0 {
			return l
		}
		time.Sleep(20 * time.Millisecond)
	}
	return w.capture.Leaks()
}

// ResetLeaks forgets the leaks recorded so far (after a test provoked some on purpose).
func (w *World) ResetLeaks() {
	if w.capture != nil {
		w.capture.Sync()
		w.capture.Reset()
	}
}

// NodePackets counts the packets the internet namespace received from the
// node's own address: the proxy's upstream traffic and the node's own probes.
func (w *World) NodePackets() uint64 {
	if w.capture == nil {
		return 0
	}
	w.capture.Sync()
	return w.capture.NodePackets()
}

// SetDNS makes name (with or without the trailing dot) resolve to ips on the
// world's DNS server; no ips removes it (NXDOMAIN).
func (w *World) SetDNS(name string, ips ...string) error {
	if w.servers == nil {
		return fmt.Errorf("world %s runs no servers in this process", w.Prefix)
	}
	return w.servers.SetDNS(name, ips...)
}

// DNSQueries returns every question the DNS server received ("A allowed.test."),
// oldest first: a tunnel test asserts that none arrived.
func (w *World) DNSQueries() []string {
	if w.servers == nil {
		return nil
	}
	return w.servers.Queries()
}

// CA returns the world's upstream CA.
func (w *World) CA() *CA { return w.ca }

// DefaultPolicy is what Build writes as policy "default": deny everything.
const DefaultPolicy = "dns: allowlist\negress: []\n"

// PolicyDir is the directory passed to paddockd as --policy-dir.
func (w *World) PolicyDir() string { return filepath.Join(w.Dir, "policies") }

// WritePolicy writes PolicyDir()/name.yaml.
func (w *World) WritePolicy(name, yaml string) error {
	if err := os.MkdirAll(w.PolicyDir(), 0o755); err != nil {
		return fmt.Errorf("policy dir: %w", err)
	}
	return os.WriteFile(filepath.Join(w.PolicyDir(), name+".yaml"), []byte(yaml), 0o644)
}

func (w *World) dumpLogs(t testing.TB) {
	w.mu.Lock()
	daemons := w.daemons
	w.mu.Unlock()
	for _, d := range daemons {
		if b, err := os.ReadFile(d.StderrFile); err == nil && len(b) > 0 {
			t.Logf("paddockd stderr (%s):\n%s", d.StderrFile, tail(b, 64<<10))
		}
	}
	if l := w.Leaks(); len(l) > 0 {
		t.Logf("leaks seen by world %s:\n  %s", w.Prefix, strings.Join(l, "\n  "))
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return append([]byte("...\n"), b[len(b)-n:]...)
	}
	return b
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > 6 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// findBinDir resolves where paddockd and cni/ live.
func findBinDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("PADDOCK_BIN")
	}
	if dir != "" {
		return filepath.Abs(dir)
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := cwd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "bin"), nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no go.mod above %s to find bin/: set PADDOCK_BIN to the directory holding paddockd and cni/", cwd)
		}
	}
}

// Sandboxes returns the names of the sandboxes attached through CNI.
func (w *World) Sandboxes() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	names := make([]string, 0, len(w.sandboxes))
	for n := range w.sandboxes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Sandbox returns the CNI sandbox called name, or nil.
func (w *World) Sandbox(name string) *Sandbox {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sandboxes[name]
}
