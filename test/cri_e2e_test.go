package test

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/plugin"
	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/test/world"
)

// criPolicies are the policies the CRI tests' pods run under: the network's
// policy; one a pod may request by annotation where the conflist's
// allowedPolicies permits it (namespace team-a only); and one the
// operator's policySelectors give the pods named runner-* in namespace ci.
var criPolicies = map[string]string{
	"default": "dns: allowlist\negress:\n  - domains: [allowed.test]\n",
	"other":   "dns: allowlist\negress:\n  - domains: [other.test]\n",
	"ci":      "dns: allowlist\negress:\n  - domains: [echo.test]\n",
}

// criPod is a pod crictl started, with what paddock and containerd know of it.
type criPod struct {
	ID, Container string
	Spec          string // the pod spec runp read; crictl create wants it again
	Key           api.Key
	HostVeth      string // paddock's in standalone mode, ptp's when chained
	IP            netip.Addr
	Netns         string
}

// criPaddock is the paddock entry of both CRI conflists: pod annotations
// passed (a request allowedPolicies grants to team-a only), and the
// operator's selector for CI runners.
func criPaddock(w *world.World) map[string]any {
	return map[string]any{
		"type":            "paddock",
		"daemonSocket":    w.DaemonSocket(),
		"policy":          "default",
		"capabilities":    map[string]bool{"io.kubernetes.cri.pod-annotations": true},
		"policySelectors": []plugin.PolicySelector{{Namespace: "ci", PodName: "runner-*", Policy: "ci"}},
		"allowedPolicies": []plugin.PolicyGrant{{Namespaces: []string{"team-a"}, Policies: []string{"other"}}},
	}
}

// criConflist is the network containerd gives every pod: paddock alone
// (it makes the veth, host-local the address), or chained after ptp, which
// makes the veth and routes a default route through it. Both lease from
// the world's IPAM dir, so the lease checks are the same.
func criConflist(t *testing.T, w *world.World, chained bool) []byte {
	t.Helper()
	ipam := map[string]any{
		"type":    "host-local",
		"dataDir": w.IPAMDir(),
		"ranges":  [][]map[string]string{{{"subnet": w.Subnet.String()}}},
	}
	p := criPaddock(w)
	plugins := []any{p}
	if chained {
		ipam["routes"] = []map[string]string{{"dst": "0.0.0.0/0"}}
		plugins = []any{map[string]any{"type": "ptp", "ipam": ipam}, p}
	} else {
		p["ipam"] = ipam
	}
	b, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       w.NetworkName(),
		"plugins":    plugins,
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startCRI is the common setup of the CRI tests: a world with criPolicies,
// a ready paddockd, and containerd in node with criConflist.
func startCRI(t *testing.T, chained bool) (*world.World, *world.Daemon, *criEnv) {
	t.Helper()
	world.RequireRoot(t)
	requireContainerd(t)
	w := newWorld(t)
	for name, yaml := range criPolicies {
		if err := w.WritePolicy(name, yaml); err != nil {
			t.Fatal(err)
		}
	}
	d := readyDaemon(t, w)
	e := startContainerd(t, w, criConflist(t, w, chained))
	e.chained = chained
	return w, d, e
}

// TestCRIContainerd drives containerd's CRI with crictl, containerd running
// contained in a world's node namespace with paddock as its pod network:
// pods are registered and enforced, their containers reach allowed sites
// only through the proxy, stopp and rmp leave nothing behind, the pod
// annotation paddock.dev/policy selects a policy where allowedPolicies
// permits it and fails runp where it does not, policySelectors choose a
// policy by pod namespace and name, and containerd calls only ADD and DEL,
// as KERNEL-FACTS.md records.
func TestCRIContainerd(t *testing.T) {
	w, d, e := startCRI(t, false)

	t.Run("DefaultPolicyEnforced", func(t *testing.T) { e.defaultPolicyEnforced(t, d, "agent") })

	t.Run("AnnotationPermitted", func(t *testing.T) {
		p := e.runPod(t, d, "team-a", "annotated", map[string]string{plugin.PolicyAnnotation: "other"})
		assertCRIPolicy(t, d, p, "other")
		e.startContainer(t, p, d.CADir)
		e.expectReach(t, p, "other.test")
		e.expectRefused(t, p, "allowed.test")
		e.stopAndRemove(t, w, d, p)
	})

	t.Run("AnnotationRefused", func(t *testing.T) {
		before := len(e.verbs(t))
		spec := e.podSpec(t, "team-b", "intruder", map[string]string{plugin.PolicyAnnotation: "other"})
		ctx, cancel := context.WithTimeout(context.Background(), criTimeout)
		defer cancel()
		id, err := e.crictlRun(ctx, "runp", spec)
		if err == nil {
			t.Fatalf("runp of a team-b pod requesting policy other succeeded (%s); allowedPolicies grants it to team-a only", id)
		}
		if !strings.Contains(err.Error(), "does not permit") {
			t.Errorf("runp error does not say the policy is not permitted: %v", err)
		}
		t.Logf("refused as expected: %v", err)
		calls := e.verbs(t)[before:]
		if len(calls) < 2 || calls[0].Command != "ADD" || calls[len(calls)-1].Command != "DEL" {
			t.Fatalf("CNI calls for the refused pod %+v, want ADD then DEL", calls)
		}
		if del := calls[len(calls)-1]; del.PrevResult || del.ContainerID != calls[0].ContainerID {
			t.Errorf("DEL after the failed ADD %+v, want the same container and no prevResult", del)
		}
		k := key(w, calls[0].ContainerID, "eth0")
		assertGone(t, w, d, k, "")
		if slices.Contains(sandboxIfs(t, w), plugin.HostVethName(k)) {
			t.Errorf("nftables set %s lists host veth %s of a refused ADD", nftSandboxIfs, plugin.HostVethName(k))
		}
		if l := leases(t, w); len(l) != 0 {
			t.Errorf("leases left after a refused ADD: %v", l)
		}
		if out, err := e.crictlRun(ctx, "pods", "-q", "--namespace", "team-b"); err != nil || out != "" {
			t.Errorf("crictl pods in team-b: %q %v, want none", out, err)
		}
	})

	t.Run("PolicySelector", func(t *testing.T) { e.policySelector(t, d) })

	t.Run("VerbsAddDelOnly", func(t *testing.T) { e.assertVerbsAddDel(t) })

	w.AssertNoLeaks(t)
}

// TestCRIContainerdChained: paddock chained after ptp, as an operator adds
// it to a routed pod network. ptp makes the veth and the lease, paddock
// registers and polices ptp's host veth: the container reaches the allowed
// site only through the proxy, policySelectors apply as in standalone
// mode, and stopp/rmp leave neither paddock's registration and nftables
// element nor ptp's veth and lease.
func TestCRIContainerdChained(t *testing.T) {
	w, d, e := startCRI(t, true)
	t.Run("DefaultPolicyEnforced", func(t *testing.T) { e.defaultPolicyEnforced(t, d, "chained") })
	t.Run("PolicySelector", func(t *testing.T) { e.policySelector(t, d) })
	t.Run("VerbsAddDelOnly", func(t *testing.T) { e.assertVerbsAddDel(t) })
	w.AssertNoLeaks(t)
}

// defaultPolicyEnforced runs a pod under the network's policy: allowed.test
// through the proxy, blocked.test and other.test refused, ping dropped on
// the node; then stopp and rmp leave nothing.
func (e *criEnv) defaultPolicyEnforced(t *testing.T, d *world.Daemon, name string) {
	t.Helper()
	p := e.runPod(t, d, "team-a", name, nil)
	assertCRIPolicy(t, d, p, "default")
	e.startContainer(t, p, d.CADir)
	e.expectReach(t, p, "allowed.test")
	e.expectRefused(t, p, "blocked.test")
	e.expectRefused(t, p, "other.test")
	// What the proxy cannot carry is dropped on the node, never
	// forwarded: the leak detector checks it at the end.
	out, err := e.execIn(p.Container, 30*time.Second, "ping", "-c", "1", "-W", "2", world.EchoAddr.String())
	if err == nil || !strings.Contains(out, "0 packets received") {
		t.Errorf("container ping %s: %v: %s, want it sent and unanswered", world.EchoAddr, err, out)
	}
	e.stopAndRemove(t, e.w, d, p)
}

// policySelector checks that the operator's selector, not the pod's author,
// gives CI runners their policy: ci/runner-1 runs under "ci" without an
// annotation and reaches only echo.test; a pod matching one pattern of the
// two keeps the network's policy.
func (e *criEnv) policySelector(t *testing.T, d *world.Daemon) {
	t.Helper()
	p := e.runPod(t, d, "ci", "runner-1", nil)
	assertCRIPolicy(t, d, p, "ci")
	e.startContainer(t, p, d.CADir)
	e.expectReach(t, p, "echo.test")
	e.expectRefused(t, p, "allowed.test")
	e.stopAndRemove(t, e.w, d, p)
	for _, pod := range [][2]string{{"ci", "builder"}, {"team-a", "runner-2"}} {
		p := e.runPod(t, d, pod[0], pod[1], nil)
		assertCRIPolicy(t, d, p, "default")
		e.stopAndRemove(t, e.w, d, p)
	}
}

// assertVerbsAddDel checks that containerd called paddock with ADD and DEL
// only.
func (e *criEnv) assertVerbsAddDel(t *testing.T) {
	t.Helper()
	calls := e.verbs(t)
	for _, c := range calls {
		t.Logf("CNI %s container=%.12s netns=%q prevResult=%v", c.Command, c.ContainerID, c.Netns, c.PrevResult)
		if c.Command != "ADD" && c.Command != "DEL" {
			t.Errorf("containerd called %s; 1.6 is known to call only ADD and DEL", c.Command)
		}
	}
	if len(calls) == 0 {
		t.Error("the wrapper recorded no CNI call")
	}
}

// runPod starts a pod with crictl runp and checks what containerd and
// paddock report for it: one ADD with its netns (and, chained, ptp's
// result as prevResult), a registration enforced on every layer naming the
// host veth (paddock's own, or ptp's when chained), that veth in nftables.
func (e *criEnv) runPod(t *testing.T, d *world.Daemon, ns, name string, annotations map[string]string) *criPod {
	t.Helper()
	before := len(e.verbs(t))
	spec := e.podSpec(t, ns, name, annotations)
	id := e.mustCrictl(t, "runp", spec)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), criTimeout)
		defer cancel()
		_, _ = e.crictlRun(ctx, "rmp", "--force", id)
	})
	insp := e.inspectp(t, id)
	p := &criPod{ID: id, Spec: spec, Key: key(e.w, id, "eth0"), Netns: insp.netns()}
	if insp.Status.State != "SANDBOX_READY" {
		t.Fatalf("pod %s state %s, want SANDBOX_READY", id, insp.Status.State)
	}
	if p.IP, _ = netip.ParseAddr(insp.Status.Network.IP); !e.w.Subnet.Contains(p.IP) {
		t.Fatalf("pod %s ip %q, want one in the paddock network %s", id, insp.Status.Network.IP, e.w.Subnet)
	}
	calls := e.verbs(t)[before:]
	if len(calls) != 1 || calls[0].Command != "ADD" || calls[0].ContainerID != id || calls[0].Netns != p.Netns || calls[0].PrevResult != e.chained {
		t.Errorf("CNI calls for runp %+v, want one ADD for %s in %s, with a prevResult only when chained (%v)", calls, id, p.Netns, e.chained)
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	sb, err := d.Client().Get(ctx, p.Key)
	if err != nil {
		t.Fatalf("pod %s is not registered with paddockd: %v", id, err)
	}
	p.HostVeth = plugin.HostVethName(p.Key)
	if e.chained {
		// ptp names its host veth veth<random hex>; paddock must police
		// that one and make none of its own.
		p.HostVeth = sb.HostVeth
		if !strings.HasPrefix(p.HostVeth, "veth") || !linkInNode(t, e.w, p.HostVeth) {
			t.Errorf("chained registration names host veth %q, want ptp's veth in node", p.HostVeth)
		}
		if v := nodeVeths(t, e.w); len(v) != 0 {
			t.Errorf("paddock made host veths %v in chained mode, want ptp's alone", v)
		}
	}
	if sb.Enforced != "ok" || sb.HostVeth != p.HostVeth || !slices.Equal(sb.IPs, []netip.Prefix{netip.PrefixFrom(p.IP, e.w.Subnet.Bits())}) {
		t.Errorf("registration %+v, want enforced ok, host veth %s, ip %s", sb, p.HostVeth, p.IP)
	}
	if sb.Args["K8S_POD_NAMESPACE"] != ns || sb.Args["K8S_POD_NAME"] != name {
		t.Errorf("registration args %v, want the pod's namespace %s and name %s", sb.Args, ns, name)
	}
	if s, ok := cliStatus(t, e.w).registered(p.Key); !ok || s.Enforced != "ok" {
		t.Errorf("paddock status --json: %+v (listed %v), want Enforced ok", s, ok)
	}
	if !slices.Contains(sandboxIfs(t, e.w), p.HostVeth) {
		t.Errorf("nftables set %s does not list host veth %s", nftSandboxIfs, p.HostVeth)
	}
	return p
}

// assertCRIPolicy checks the policy paddockd enforces for the pod.
func assertCRIPolicy(t *testing.T, d *world.Daemon, p *criPod, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	sb, err := d.Client().Get(ctx, p.Key)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Policy != want {
		t.Errorf("pod %.12s runs under policy %q, want %q", p.ID, sb.Policy, want)
	}
}

// startContainer creates and starts a container with curl in the pod.
func (e *criEnv) startContainer(t *testing.T, p *criPod, caDir string) {
	t.Helper()
	p.Container = e.mustCrictl(t, "create", p.ID, e.containerSpec(t, "curl-"+p.ID[:12], caDir), p.Spec)
	e.mustCrictl(t, "start", p.Container)
	if out, err := e.execIn(p.Container, 30*time.Second, "ls", "/paddock-ca"); err != nil || strings.TrimSpace(out) != "ca.pem" {
		t.Errorf("the container sees %q in /paddock-ca (%v), want the CA certificate alone, never its key", out, err)
	}
}

// curlArgs fetches https://host/ trusting only the paddock CA mounted into
// the container: the world's servers present certificates of another CA,
// so a page that arrives came through paddock's proxy.
func curlArgs(host string) []string {
	return []string{"curl", "-sS", "-m", "10", "--cacert", "/paddock-ca/ca.pem", "https://" + host + "/"}
}

func (e *criEnv) expectReach(t *testing.T, p *criPod, host string) {
	t.Helper()
	out, err := e.execIn(p.Container, 30*time.Second, curlArgs(host)...)
	if err != nil || !strings.Contains(out, "hello from "+host) {
		t.Errorf("container in pod %.12s: curl %s: %v: %s", p.ID, host, err, out)
	}
}

// expectRefused checks both gates for a host the pod's policy does not
// name: the DNS guard does not resolve it, and with the address given
// (curl --resolve) the proxy refuses the connection by its SNI.
func (e *criEnv) expectRefused(t *testing.T, p *criPod, host string) {
	t.Helper()
	for _, args := range [][]string{
		curlArgs(host),
		append(curlArgs(host), "--resolve", host+":443:"+world.WebAddr.String()),
	} {
		out, err := e.execIn(p.Container, 30*time.Second, args...)
		if strings.Contains(out, "hello from") {
			t.Errorf("container in pod %.12s reached %s, which its policy does not name: %v: %s", p.ID, host, err, out)
		}
		// Given the address, the request reaches the proxy, which answers
		// with its refusal instead of the site.
		if len(args) > len(curlArgs(host)) && !strings.Contains(out, "denied by policy") {
			t.Errorf("container in pod %.12s: curl %s at %s: %v: %q, want the proxy's refusal", p.ID, host, world.WebAddr, err, out)
		}
		t.Logf("%s refused: %s", strings.Join(args[len(curlArgs(host))-1:], " "), firstLine(out))
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// stopAndRemove runs stopp then rmp and checks the DEL each sends (stopp:
// netns and prevResult; rmp: empty netns, no prevResult) and that nothing
// of the pod is left: host veth, lease, registration, nftables elements.
func (e *criEnv) stopAndRemove(t *testing.T, w *world.World, d *world.Daemon, p *criPod) {
	t.Helper()
	before := len(e.verbs(t))
	e.mustCrictl(t, "stopp", p.ID)
	calls := e.verbs(t)[before:]
	if len(calls) != 1 || calls[0].Command != "DEL" || calls[0].Netns != p.Netns || !calls[0].PrevResult {
		t.Errorf("CNI calls for stopp %+v, want one DEL with netns %s and a prevResult", calls, p.Netns)
	}
	e.assertPodGone(t, w, d, p)

	before = len(e.verbs(t))
	e.mustCrictl(t, "rmp", p.ID)
	calls = e.verbs(t)[before:]
	for _, c := range calls {
		if c.Command != "DEL" || c.ContainerID != p.ID {
			t.Errorf("rmp made CNI call %+v, want only DELs for %s", c, p.ID)
		}
	}
	t.Logf("rmp sent %d DEL(s): %+v", len(calls), calls)
	e.assertPodGone(t, w, d, p)
	if out, err := e.crictlRun(context.Background(), "pods", "-q", "--id", p.ID); err != nil || out != "" {
		t.Errorf("crictl pods --id %s after rmp: %q %v, want none", p.ID, out, err)
	}
}

func (e *criEnv) assertPodGone(t *testing.T, w *world.World, d *world.Daemon, p *criPod) {
	t.Helper()
	assertGone(t, w, d, p.Key, "")
	if linkInNode(t, w, p.HostVeth) {
		t.Errorf("host veth %s of pod %.12s left in node", p.HostVeth, p.ID)
	}
	for _, l := range leases(t, w) {
		if l == p.IP.String() {
			t.Errorf("lease %s of pod %.12s left", l, p.ID)
		}
	}
	if slices.Contains(sandboxIfs(t, w), p.HostVeth) {
		t.Errorf("nftables set %s still lists host veth %s", nftSandboxIfs, p.HostVeth)
	}
}

// nftSandboxIfs is the nftables set of paddock's host veths: the second,
// independent layer's list of interfaces to police.
const nftSandboxIfs = "sandbox_ifs"

// sandboxIfs lists the elements of nftSandboxIfs in node.
func sandboxIfs(t *testing.T, w *world.World) []string {
	t.Helper()
	out, err := w.ExecNode("nft", "-j", "list", "set", "inet", "paddock", nftSandboxIfs)
	if err != nil {
		t.Fatalf("nft list set inet paddock %s: %v: %s", nftSandboxIfs, err, out)
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []string `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("nft -j list set %s: %v: %s", nftSandboxIfs, err, out)
	}
	for _, o := range doc.Nftables {
		if o.Set != nil {
			return o.Set.Elem
		}
	}
	t.Fatalf("nft -j list set %s printed no set: %s", nftSandboxIfs, out)
	return nil
}
