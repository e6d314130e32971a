package deploy_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/paddock-sandbox/paddock/bpf"
)

// The capability test runs this test binary again, inside a fresh network
// namespace, under setpriv with only the unit's capabilities; in that mode
// it performs each privileged operation paddockd needs and reports.
const helperEnv = "PADDOCK_CAPS_HELPER_IFACE"

func TestMain(m *testing.M) {
	if iface := os.Getenv(helperEnv); iface != "" {
		capsHelper(iface)
		return
	}
	os.Exit(m.Run())
}

// proxyUID is the uid tests run the proxy child as (no passwd entry needed).
const proxyUID = 64000

// capsHelper prints one JSON object: step name → "" or the error.
func capsHelper(iface string) {
	res := map[string]string{}
	note := func(step string, err error) {
		res[step] = ""
		if err != nil {
			res[step] = err.Error()
		}
	}

	// BPF: load paddock_ingress (unpinned) and attach it with tcx.
	spec, err := bpf.LoadRedirect()
	if err == nil {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
		var objs bpf.RedirectObjects
		err = spec.LoadAndAssign(&objs, nil)
		if err == nil {
			defer objs.Close()
			ifc, ierr := net.InterfaceByName(iface)
			if ierr != nil {
				note("tcx-attach", ierr)
			} else {
				l, aerr := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: objs.PaddockIngress, Attach: ebpf.AttachTCXIngress})
				note("tcx-attach", aerr)
				if aerr == nil {
					l.Close()
				}
			}
		} else {
			note("tcx-attach", fmt.Errorf("not tried: load failed"))
		}
	}
	note("bpf-load", err)

	// nftables: create and delete a table.
	c, err := nftables.New()
	if err == nil {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "paddock_caps"})
		if err = c.Flush(); err == nil {
			c.DelTable(t)
			err = c.Flush()
		}
	}
	note("nftables", err)

	// The DNS guard's transparent listener on port 53.
	transparent := func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) }); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("IP_TRANSPARENT: %w", serr)
		}
		return nil
	}
	ln, err := (&net.ListenConfig{Control: transparent}).Listen(context.Background(), "tcp4", "127.0.0.2:15001")
	if err == nil {
		ln.Close()
	}
	note("ip-transparent", err)
	ln, err = net.Listen("tcp4", "127.0.0.1:53")
	if err == nil {
		ln.Close()
	}
	note("bind-53", err)

	// Hand a directory to the proxy user.
	dir, err := os.MkdirTemp("", "paddock-caps-")
	if err == nil {
		defer os.Remove(dir)
		err = os.Chown(dir, proxyUID, proxyUID)
	}
	note("chown", err)

	// Start the proxy child under its own uid, then stop it.
	cmd := exec.Command("sleep", "3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: proxyUID, Gid: proxyUID}}
	err = cmd.Start()
	note("setuid-child", err)
	if err == nil {
		note("kill-child", cmd.Process.Signal(syscall.SIGTERM))
		cmd.Wait() // at most 3s when the signal was refused
	} else {
		note("kill-child", fmt.Errorf("not tried: no child"))
	}

	b, _ := json.Marshal(res)
	fmt.Printf("CAPS %s\n", b)
}

// unitCaps is the unit's CapabilityBoundingSet, lowercased without CAP_.
func unitCaps(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("systemd/paddockd.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapabilityBoundingSet="); ok {
			var caps []string
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
			return caps
		}
	}
	t.Fatal("no CapabilityBoundingSet= in the unit")
	return nil
}

// TestUnitCapabilities proves the unit's capability set is enough for what
// paddockd does (BPF load and tcx attach, nftables, a transparent listener on
// port 53, chown, a child under the proxy uid that it can signal) with no
// CAP_SYS_ADMIN or CAP_DAC_OVERRIDE, and that each capability is needed.
func TestUnitCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the helper in a network namespace under setpriv")
	}
	for _, tool := range []string{"ip", "setpriv", "sleep"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	caps := unitCaps(t)
	if want := []string{"bpf", "perfmon", "net_admin", "net_bind_service", "setuid", "setgid", "chown", "kill"}; !slices.Equal(caps, want) {
		t.Fatalf("unit capabilities %v, want %v: update this test and the DaemonSet with the reason", caps, want)
	}

	ns := helperNetns(t)
	run := func(set []string) map[string]string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		bounding := "-all"
		for _, c := range set {
			bounding += ",+" + c
		}
		return runHelper(t, ctx, ns, "setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs", "--")
	}

	all := run(caps)
	t.Logf("with %v: %v", caps, all)
	for step, err := range all {
		if err != "" {
			t.Errorf("with the unit's capabilities, %s fails: %s", step, err)
		}
	}
	if len(all) != 8 {
		t.Errorf("helper ran %d steps, want 8: %v", len(all), all)
	}

	// Without each capability, the step it is there for fails.
	needs := map[string][]string{
		"bpf":              {"bpf-load"},
		"perfmon":          {"bpf-load"},
		"net_admin":        {"tcx-attach", "nftables", "ip-transparent"},
		"net_bind_service": {"bind-53"},
		"setuid":           {"setuid-child"},
		"setgid":           {"setuid-child"},
		"chown":            {"chown"},
		"kill":             {"kill-child"},
	}
	for _, c := range caps {
		t.Run("without_"+c, func(t *testing.T) {
			res := run(slices.DeleteFunc(slices.Clone(caps), func(x string) bool { return x == c }))
			t.Logf("without CAP_%s: %v", strings.ToUpper(c), res)
			for _, step := range needs[c] {
				if res[step] == "" {
					t.Errorf("%s succeeds without CAP_%s: the unit need not grant it", step, strings.ToUpper(c))
				}
			}
		})
	}
}

// helperNetns is a fresh network namespace with lo up and a veth pair
// (pdkc0, pdkc1) for the helper to attach to; removed at cleanup.
func helperNetns(t *testing.T) string {
	t.Helper()
	suffix := make([]byte, 3)
	rand.Read(suffix)
	ns := "pdk-caps-" + hex.EncodeToString(suffix)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "set", "lo", "up")
	ip("-n", ns, "link", "add", "pdkc0", "type", "veth", "peer", "name", "pdkc1")
	return ns
}

// runHelper runs this binary in helper mode inside ns, behind wrapper (a
// command and its arguments), and returns the helper's step results.
func runHelper(t *testing.T, ctx context.Context, ns string, wrapper ...string) map[string]string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"netns", "exec", ns}, wrapper...), self)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), helperEnv+"=pdkc0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper under %v: %v\n%s", wrapper, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if j, ok := strings.CutPrefix(line, "CAPS "); ok {
			res := map[string]string{}
			if err := json.Unmarshal([]byte(j), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("helper printed no result:\n%s", out)
	return nil
}

// unitSyscalls is every system call the unit's SystemCallFilter= allows,
// with its @groups expanded by systemd-analyze.
func unitSyscalls(t *testing.T) map[string]bool {
	t.Helper()
	unit, err := os.ReadFile("systemd/paddockd.service")
	if err != nil {
		t.Fatal(err)
	}
	var filter []string
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "SystemCallFilter="); ok {
			if strings.HasPrefix(v, "~") {
				t.Fatalf("deny lists are not handled here: %s", line)
			}
			filter = append(filter, strings.Fields(v)...)
		}
	}
	allowed := map[string]bool{}
	var expand func(string)
	expand = func(name string) {
		if !strings.HasPrefix(name, "@") {
			allowed[name] = true
			return
		}
		out, err := exec.Command("systemd-analyze", "syscall-filter", name).Output()
		if err != nil {
			t.Fatalf("systemd-analyze syscall-filter %s: %v", name, err)
		}
		for _, l := range strings.Split(string(out), "\n")[1:] {
			l = strings.TrimSpace(l)
			if l != "" && !strings.HasPrefix(l, "#") {
				expand(l)
			}
		}
	}
	for _, f := range filter {
		expand(f)
	}
	return allowed
}

// TestUnitSyscallFilter traces the helper's privileged operations (and the
// child it starts) and checks that the unit's SystemCallFilter= allows every
// system call they make.
func TestUnitSyscallFilter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the helper in a network namespace")
	}
	for _, tool := range []string{"ip", "strace", "systemd-analyze", "sleep"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	allowed := unitSyscalls(t)
	if !allowed["bpf"] || !allowed["setsockopt"] || len(allowed) < 100 {
		t.Fatalf("expanded SystemCallFilter looks wrong (%d calls)", len(allowed))
	}
	ns := helperNetns(t)
	trace := filepath.Join(t.TempDir(), "strace")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res := runHelper(t, ctx, ns, "strace", "-f", "-qq", "-o", trace)
	for step, err := range res {
		if err != "" {
			t.Fatalf("under strace, %s fails: %s", step, err)
		}
	}
	data, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	call := regexp.MustCompile(`^\d+\s+([a-z0-9_]+)\(`)
	for _, line := range strings.Split(string(data), "\n") {
		if m := call.FindStringSubmatch(line); m != nil {
			used[m[1]] = true
		}
	}
	if len(used) < 20 {
		t.Fatalf("trace holds only %d distinct calls: %v", len(used), used)
	}
	for c := range used {
		if !allowed[c] {
			t.Errorf("paddockd's operations call %s, which SystemCallFilter= does not allow", c)
		}
	}
}
