package test

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// podmanPolicies: the network's default allows allowed.test; containers
// named pmweb-* are given "web", which allows other.test instead.
var podmanPolicies = map[string]string{
	"default": "dns: allowlist\negress:\n  - domains: [allowed.test]\n",
	"web":     "dns: allowlist\negress:\n  - domains: [other.test]\n",
}

// podmanPaddock is the paddock entry of the test networks. The operator
// picks a container's policy by its name, which podman passes as
// K8S_POD_NAME (policySelectors). A podman user can request one too:
// podman 4.3 appends the CNI_ARGS of its own environment to what it passes
// the plugins (`CNI_ARGS=PADDOCK_POLICY=web podman run ...`), so
// allowedPolicies decides whether that request is honoured; podman
// containers have no namespace, which "*" covers.
func podmanPaddock(e *podmanEnv) map[string]any {
	return map[string]any{
		"type":            "paddock",
		"daemonSocket":    e.w.DaemonSocket(),
		"policy":          "default",
		"policySelectors": []any{map[string]any{"podName": "pmweb-*", "policy": "web"}},
		"allowedPolicies": []any{map[string]any{"namespaces": []string{"*"}, "policies": []string{"web"}}},
	}
}

// TestPodmanStandalone: podman containers on a paddock-only network (paddock
// makes the veth, host-local the address) reach what their policy allows
// through the proxy and nothing else; restart, stop/start, rm and --rm
// leave no state; the policy follows the container's name.
func TestPodmanStandalone(t *testing.T) {
	e := newPodman(t, podmanPolicies, func(e *podmanEnv) []any {
		p := podmanPaddock(e)
		p["ipam"] = map[string]any{
			"type": "host-local", "dataDir": e.ipamDir,
			"ranges": [][]map[string]string{{{"subnet": e.w.Subnet.String()}}},
		}
		return []any{p}
	})
	name := "pmagent-" + e.w.ID
	id := e.detach(t, name, "600")
	sb := e.mustRegistration(t, id)
	if sb.Policy != "default" || sb.Args["K8S_POD_NAME"] != name {
		t.Errorf("registration: policy %q, args %v; want default and K8S_POD_NAME=%s", sb.Policy, sb.Args, name)
	}
	e.expectReach(t, id, "allowed.test")
	e.expectRefused(t, id, "blocked.test")

	// restart: one DEL of the old attachment, then ADD with the same id in
	// a new netns, and the container works again.
	n := len(e.verbs(t))
	e.mustRun(t, "restart", "--time", "0", id)
	calls := e.verbsSince(t, n)
	if len(calls) != 2 || calls[0].Command != "DEL" || calls[1].Command != "ADD" ||
		calls[0].ContainerID != id || calls[1].ContainerID != id || calls[0].Netns == calls[1].Netns || !calls[0].PrevResult {
		t.Errorf("CNI calls for podman restart: %v; want DEL (with prevResult) then ADD, same id, new netns", calls)
	}
	sb2 := e.mustRegistration(t, id)
	if sb2.Netns == sb.Netns {
		t.Errorf("after restart the registration still names the old netns %s", sb.Netns)
	}
	e.expectReach(t, id, "allowed.test")

	// stop leaves nothing; start attaches again; rm leaves nothing.
	n = len(e.verbs(t))
	e.mustRun(t, "stop", "--time", "0", id)
	e.assertGone(t, sb2)
	if calls := e.verbsSince(t, n); len(calls) != 1 || calls[0].Command != "DEL" {
		t.Errorf("CNI calls for podman stop: %v; want one DEL", calls)
	}
	e.mustRun(t, "start", id)
	sb3 := e.mustRegistration(t, id)
	e.expectRefused(t, id, "other.test")
	n = len(e.verbs(t))
	e.mustRun(t, "rm", "--force", "--time", "0", id)
	e.assertGone(t, sb3)
	if calls := e.verbsSince(t, n); len(calls) != 1 || calls[0].Command != "DEL" {
		t.Errorf("CNI calls for podman rm -f of a running container: %v; want one DEL", calls)
	}

	// A container whose process exits by itself is detached by `podman
	// container cleanup`, which conmon spawns with a cut-down environment:
	// its DEL must still find the plugin and leave nothing.
	n = len(e.verbs(t))
	short := e.detach(t, "pmshort-"+e.w.ID, "4")
	sb4 := e.mustRegistration(t, short)
	e.assertGone(t, sb4)
	if calls := e.verbsSince(t, n); len(calls) != 2 || calls[1].Command != "DEL" || calls[1].ContainerID != short {
		t.Errorf("CNI calls for a container that exited: %v; want ADD, then DEL from podman container cleanup", calls)
	}
	e.mustRun(t, "rm", short)

	// --rm: the policy follows the name (K8S_POD_NAME); a PADDOCK_POLICY
	// in CNI_ARGS of podman's environment is a request allowedPolicies
	// grants ("web") or refuses ("wide": ADD fails, nothing is left).
	n = len(e.verbs(t))
	web := "pmweb-" + e.w.ID
	out, err := e.run(nil, append(e.runArgs(web, "--rm"), podmanCurl("other.test")...)...)
	if err != nil || !strings.Contains(out, "hello from other.test") {
		t.Errorf("--rm container %s (policy web by name): curl other.test: %v: %s", web, err, out)
	}
	asked := "pmask-" + e.w.ID
	out, err = e.run([]string{"CNI_ARGS=PADDOCK_POLICY=web"}, append(e.runArgs(asked, "--rm"), podmanCurl("other.test")...)...)
	if err != nil || !strings.Contains(out, "hello from other.test") {
		t.Errorf("--rm container %s with CNI_ARGS=PADDOCK_POLICY=web: curl other.test: %v: %s", asked, err, out)
	}
	greedy := "pmgreedy-" + e.w.ID
	out, err = e.run([]string{"CNI_ARGS=PADDOCK_POLICY=wide"}, append(e.runArgs(greedy, "--rm"), podmanCurl("other.test")...)...)
	if err == nil || !strings.Contains(err.Error(), "wide") || strings.Contains(out, "hello from") {
		t.Errorf("--rm container %s with CNI_ARGS=PADDOCK_POLICY=wide (not allowed): %v: %s; want podman run to fail naming the policy", greedy, err, out)
	}
	t.Logf("refused request: %v", err)
	var adds []podmanVerb
	for _, v := range e.verbsSince(t, n) {
		if v.Command == "ADD" {
			adds = append(adds, v)
		}
	}
	if len(adds) != 3 || !strings.Contains(adds[0].Args, "K8S_POD_NAME="+web) || !strings.Contains(adds[1].Args, "PADDOCK_POLICY=web") || !strings.Contains(adds[2].Args, "PADDOCK_POLICY=wide") {
		t.Errorf("ADDs of the --rm containers: %+v; want %s by name, then the web and wide requests", adds, web)
	}
	if !waitFor(15*time.Second, func() bool { return len(cliStatus(t, e.w).Sandboxes) == 0 }) {
		t.Errorf("registrations left after the --rm containers exited: %+v", cliStatus(t, e.w).Sandboxes)
	}
	if l := leasesIn(t, e.ipamDir+"/"+e.network()); len(l) != 0 {
		t.Errorf("host-local leases left: %v", l)
	}
	if v := nodeVeths(t, e.w); len(v) != 0 {
		t.Errorf("paddock host veths left in node: %v", v)
	}
	e.assertNoSandboxIfs(t)
	e.assertVerbs(t)
	e.w.AssertNoLeaks(t)
}

// TestPodmanChained: paddock after ptp, as an operator chains it onto a
// routed podman network: allowed site through the proxy, blocked refused,
// and rm leaves neither ptp's veth and lease nor paddock's registration.
func TestPodmanChained(t *testing.T) {
	e := newPodman(t, podmanPolicies, func(e *podmanEnv) []any {
		return []any{
			map[string]any{
				"type": "ptp",
				"ipam": map[string]any{
					"type": "host-local", "dataDir": e.ipamDir,
					"ranges": [][]map[string]string{{{"subnet": e.w.Subnet.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			podmanPaddock(e),
		}
	})
	id := e.detach(t, "pmchain-"+e.w.ID, "600")
	sb := e.mustRegistration(t, id)
	if strings.HasPrefix(sb.HostVeth, "pdk") {
		t.Errorf("chained registration names host veth %s, want ptp's", sb.HostVeth)
	}
	e.expectReach(t, id, "allowed.test")
	e.expectRefused(t, id, "blocked.test")
	e.mustRun(t, "rm", "--force", "--time", "0", id)
	e.assertGone(t, sb)

	out, err := e.run(nil, append(e.runArgs("pmchainrm-"+e.w.ID, "--rm"), podmanCurl("allowed.test")...)...)
	if err != nil || !strings.Contains(out, "hello from allowed.test") {
		t.Errorf("--rm container on the chained network: curl allowed.test: %v: %s", err, out)
	}
	if !waitFor(15*time.Second, func() bool { return len(cliStatus(t, e.w).Sandboxes) == 0 }) {
		t.Errorf("registrations left after the --rm container exited: %+v", cliStatus(t, e.w).Sandboxes)
	}
	if l := leasesIn(t, e.ipamDir+"/"+e.network()); len(l) != 0 {
		t.Errorf("host-local leases left: %v", l)
	}
	e.assertNoSandboxIfs(t)
	e.assertVerbs(t)
	e.w.AssertNoLeaks(t)
}

// assertVerbs checks podman 4.3's calling pattern: VERSION (before the
// first ADD and before each DEL; a restart's ADD comes without one), ADD
// and DEL only — never CHECK, STATUS or GC.
func (e *podmanEnv) assertVerbs(t *testing.T) {
	t.Helper()
	calls := e.verbs(t)
	if len(calls) == 0 || calls[0].Command != "VERSION" {
		t.Errorf("podman's first CNI call is not VERSION: %v", calls)
	}
	for _, v := range calls {
		if !slices.Contains([]string{"VERSION", "ADD", "DEL"}, v.Command) {
			t.Errorf("podman called %s", v)
		}
	}
}
