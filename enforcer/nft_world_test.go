package enforcer

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// nftInNodeNetns runs the calling test in a fresh network namespace (the
// "node"): it re-executes the test binary under `unshare --net` and
// returns true in the parent, which must then return. The child gets
// false and runs the test body, so the root namespace is never touched.
func nftInNodeNetns(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces, veths and nftables tables")
	}
	if os.Getenv("PADDOCK_NFT_TEST_NETNS") == t.Name() {
		nftRun(t, "ip", "link", "set", "lo", "up")
		return false
	}
	cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=120s")
	if *updateGolden {
		cmd.Args = append(cmd.Args, "-update-golden")
	}
	cmd.Env = append(os.Environ(), "PADDOCK_NFT_TEST_NETNS="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in node netns:\n%s", out)
	if err != nil {
		t.Fatalf("test in node netns failed: %v", err)
	}
	if strings.Contains(string(out), "--- SKIP") {
		t.Skip("skipped in node netns")
	}
	return true
}

func nftRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func nftSuffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// nftWorld is a sandbox netns joined by a veth to the node (the test's own
// netns) and a "far" netns behind the node holding 192.0.2.20, the
// destination sandboxes try to reach.
type nftWorld struct {
	sbNS, farNS string
	sb          api.Sandbox
	sbIP        netip.Addr
}

func newNFTWorld(t *testing.T) *nftWorld {
	t.Helper()
	s := nftSuffix()
	w := &nftWorld{sbNS: "pdsb-" + s, farNS: "pdfar-" + s, sbIP: netip.MustParseAddr("198.51.100.2")}
	hostVeth, farVeth := "pdh"+s, "pdf"+s
	nftRun(t, "ip", "netns", "add", w.sbNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", w.sbNS).Run() })
	nftRun(t, "ip", "netns", "add", w.farNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", w.farNS).Run() })

	nftRun(t, "ip", "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", w.sbNS)
	nftRun(t, "ip", "addr", "add", "198.51.100.1/24", "dev", hostVeth)
	nftRun(t, "ip", "link", "set", hostVeth, "up")
	nftRun(t, "ip", "-n", w.sbNS, "link", "set", "lo", "up")
	nftRun(t, "ip", "-n", w.sbNS, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	nftRun(t, "ip", "-n", w.sbNS, "link", "set", "eth0", "up")
	nftRun(t, "ip", "-n", w.sbNS, "route", "add", "default", "via", "198.51.100.1")
	nftRun(t, "ip", "-n", w.sbNS, "-6", "addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad")

	nftRun(t, "ip", "link", "add", farVeth, "type", "veth", "peer", "name", "eth0", "netns", w.farNS)
	nftRun(t, "ip", "addr", "add", "203.0.113.1/24", "dev", farVeth)
	nftRun(t, "ip", "link", "set", farVeth, "up")
	nftRun(t, "ip", "-n", w.farNS, "link", "set", "lo", "up")
	nftRun(t, "ip", "-n", w.farNS, "addr", "add", "203.0.113.2/24", "dev", "eth0")
	nftRun(t, "ip", "-n", w.farNS, "addr", "add", "192.0.2.20/32", "dev", "lo")
	nftRun(t, "ip", "-n", w.farNS, "link", "set", "eth0", "up")
	nftRun(t, "ip", "-n", w.farNS, "route", "add", "default", "via", "203.0.113.1")
	nftRun(t, "ip", "route", "add", "192.0.2.20/32", "via", "203.0.113.2")
	// The node netns is the test's own: forwarding there is what a real
	// node does and what paddock must stop for sandboxes.
	nftRun(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	// The far side counts every packet that arrives from the sandbox.
	nftRun(t, "ip", "netns", "exec", w.farNS, "nft", "add table ip far; add chain ip far pre { type filter hook prerouting priority 0; }; add rule ip far pre ip saddr 198.51.100.2 counter")

	mac := strings.TrimSpace(nftRun(t, "ip", "netns", "exec", w.sbNS, "cat", "/sys/class/net/eth0/address"))
	// /sys shows the root netns here; ask netlink in this one.
	hv, err := net.InterfaceByName(hostVeth)
	if err != nil {
		t.Fatal(err)
	}
	ifindex := hv.Index
	w.sb = api.Sandbox{
		Network: "test", ContainerID: "3f2a9c1b7d20" + s + "aaaa", IfName: "eth0",
		Netns: "/var/run/netns/" + w.sbNS, HostVeth: hostVeth, HostIfIndex: ifindex,
		SandboxMAC: mac, IPs: []netip.Prefix{netip.MustParsePrefix("198.51.100.2/24")},
		Gateway: netip.MustParseAddr("198.51.100.1"), Policy: "default", Created: time.Now(),
	}
	return w
}

// farCount is how many packets from the sandbox reached the far side.
func (w *nftWorld) farCount(t *testing.T) int {
	out := nftRun(t, "ip", "netns", "exec", w.farNS, "nft", "list", "chain", "ip", "far", "pre")
	i := strings.Index(out, "counter packets ")
	if i < 0 {
		t.Fatalf("no counter in far chain:\n%s", out)
	}
	var n int
	fmt.Sscan(out[i+len("counter packets "):], &n)
	return n
}

// inSandbox runs fn on a thread that is inside the sandbox netns.
func (w *nftWorld) inSandbox(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked and exits with the goroutine: it is
		// never reused in the wrong namespace.
		fd, err := unix.Open("/var/run/netns/"+w.sbNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in sandbox: %v", err)
	}
}
