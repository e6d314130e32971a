package plugin

import (
	"context"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

const policyConf = `, "allowedPolicies": [{"namespaces": ["team-a", "team-b*"], "policies": ["strict", "web"]}, {"namespaces": ["*"], "policies": ["offline"]}],
	"policySelectors": [{"namespace": "ci", "podName": "runner-*", "policy": "ci"}, {"namespace": "ci", "policy": "ci-other"}]`

// TestChoosePolicy covers the decision alone: selectors, requests by
// CNI_ARGS and by annotation, grants per namespace, refusals.
func TestChoosePolicy(t *testing.T) {
	for _, tc := range []struct {
		name        string
		fields      string
		args        map[string]string
		annotations string // JSON object, or ""
		want        string // chosen policy, or "" for a refusal
		mentions    []string
	}{
		{name: "default", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-a"}, want: "default"},
		{name: "no args at all", fields: policyConf, want: "default"},
		{name: "arg permitted", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-a", "PADDOCK_POLICY": "web"}, want: "web"},
		{name: "arg permitted by pattern", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-b2", "PADDOCK_POLICY": "strict"}, want: "strict"},
		{name: "arg permitted everywhere", fields: policyConf, args: map[string]string{"K8S_POD_NAME": "podman-ctr", "PADDOCK_POLICY": "offline"}, want: "offline"},
		{name: "arg for another namespace", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-c", "PADDOCK_POLICY": "web"},
			mentions: []string{"PADDOCK_POLICY", `"web"`, `namespace "team-c"`, "allowedPolicies"}},
		{name: "arg without namespace", fields: policyConf, args: map[string]string{"PADDOCK_POLICY": "web"},
			mentions: []string{`"web"`, "without a namespace"}},
		{name: "arg not a policy name", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-a", "PADDOCK_POLICY": "../web"},
			mentions: []string{`"../web"`, "not a valid policy name"}},
		{name: "no grants, request differs", args: map[string]string{"K8S_POD_NAMESPACE": "team-a", "PADDOCK_POLICY": "web"},
			mentions: []string{`"web"`, `its policy here is "default"`}},
		{name: "no grants, request equals default", args: map[string]string{"PADDOCK_POLICY": "default"}, want: "default"},
		{name: "annotation permitted", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-a"}, annotations: `{"paddock.dev/policy": "strict", "other": "x"}`, want: "strict"},
		{name: "annotation not permitted", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "prod"}, annotations: `{"paddock.dev/policy": "strict"}`,
			mentions: []string{"annotation paddock.dev/policy", `"strict"`, `namespace "prod"`}},
		{name: "arg and annotation differ", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-a", "PADDOCK_POLICY": "web"}, annotations: `{"paddock.dev/policy": "strict"}`,
			mentions: []string{"requested twice", `"web"`, `"strict"`}},
		{name: "arg and annotation agree", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-a", "PADDOCK_POLICY": "web"}, annotations: `{"paddock.dev/policy": "web"}`, want: "web"},
		{name: "selector by namespace and name", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "ci", "K8S_POD_NAME": "runner-7"}, want: "ci"},
		{name: "first selector wins", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "ci", "K8S_POD_NAME": "builder"}, want: "ci-other"},
		{name: "selector needs its namespace", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "team-a", "K8S_POD_NAME": "runner-7"}, want: "default"},
		{name: "request equal to selector's choice", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "ci", "K8S_POD_NAME": "runner-1", "PADDOCK_POLICY": "ci"}, want: "ci"},
		{name: "request away from selector's choice", fields: policyConf, args: map[string]string{"K8S_POD_NAMESPACE": "ci", "K8S_POD_NAME": "runner-1", "PADDOCK_POLICY": "default"},
			mentions: []string{`"default"`, `its policy here is "ci"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := goodIPAM + tc.fields
			if tc.annotations != "" {
				fields += `, "runtimeConfig": {"io.kubernetes.cri.pod-annotations": ` + tc.annotations + `}`
			}
			c, err := parseConfig(conf(fields))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.choosePolicy(tc.args)
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("choosePolicy = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if cniCode(err) != types.ErrInvalidNetworkConfig {
				t.Fatalf("want a code 7 refusal, got %q, %v", got, err)
			}
			for _, m := range tc.mentions {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("refusal %q does not mention %q", err, m)
				}
			}
		})
	}
}

func TestIdentityArgs(t *testing.T) {
	args, err := parseArgs("K8S_POD_UID=u1;IgnoreUnknown=1;K8S_POD_NAME=web;PADDOCK_POLICY=x;K8S_POD_INFRA_CONTAINER_ID=c;IP=10.0.0.5;K8S_POD_NAMESPACE=ns")
	if err != nil {
		t.Fatal(err)
	}
	got := identity(args)
	if len(got) != 4 || got["K8S_POD_UID"] != "u1" || got["K8S_POD_NAME"] != "web" || got["K8S_POD_NAMESPACE"] != "ns" || got["K8S_POD_INFRA_CONTAINER_ID"] != "c" {
		t.Fatalf("identity = %v", got)
	}
	if identity(map[string]string{"IgnoreUnknown": "1"}) != nil {
		t.Fatal("identity of no identity keys should be nil")
	}
}

// TestPolicySelection runs the real plugin: the chosen policy is what
// paddockd receives, refusals (not permitted, unknown to paddockd) are code
// 7 and leave nothing behind.
func TestPolicySelection(t *testing.T) {
	// The choice does not depend on the spec version; TestChained runs
	// every version.
	const v = "1.0.0"
	known := map[string]bool{"agents": true, "strict": true, "web": true, "ci": true}
	extra := `"capabilities": {"io.kubernetes.cri.pod-annotations": true},
		"allowedPolicies": [{"namespaces": ["team-a"], "policies": ["strict", "web", "ghost"]}],
		"policySelectors": [{"namespace": "ci", "podName": "runner-*", "policy": "ci"}],`
	for _, tc := range []struct {
		name        string
		args        [][2]string
		annotations map[string]string
		want        string // registered policy, or "" for a refusal
		mentions    string
	}{
		{name: "default", args: [][2]string{{"K8S_POD_NAMESPACE", "team-a"}, {"K8S_POD_NAME", "a"}}, want: "agents"},
		{name: "arg permitted", args: [][2]string{{"K8S_POD_NAMESPACE", "team-a"}, {"PADDOCK_POLICY", "strict"}}, want: "strict"},
		{name: "arg not permitted", args: [][2]string{{"K8S_POD_NAMESPACE", "team-z"}, {"PADDOCK_POLICY", "strict"}}, mentions: `namespace "team-z"`},
		{name: "annotation permitted", args: [][2]string{{"K8S_POD_NAMESPACE", "team-a"}}, annotations: map[string]string{"paddock.dev/policy": "web"}, want: "web"},
		{name: "annotation not permitted", args: [][2]string{{"K8S_POD_NAMESPACE", "prod"}}, annotations: map[string]string{"paddock.dev/policy": "web"}, mentions: "annotation paddock.dev/policy"},
		{name: "selector", args: [][2]string{{"K8S_POD_NAME", "runner-3"}, {"K8S_POD_UID", "u"}, {"K8S_POD_NAMESPACE", "ci"}}, want: "ci"},
		{name: "unknown policy", args: [][2]string{{"K8S_POD_NAMESPACE", "team-a"}, {"PADDOCK_POLICY", "ghost"}}, mentions: `policy "ghost"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, v, "", extra)
			w.daemon.set(func(f *fakeDaemon) { f.policies = known })
			rt := w.sandbox("ctr")
			// host-local refuses CNI_ARGS it does not know unless told
			// to ignore them, as every runtime does.
			rt.Args = append([][2]string{{"IgnoreUnknown", "1"}}, tc.args...)
			if tc.annotations != nil {
				rt.CapabilityArgs = map[string]any{"io.kubernetes.cri.pod-annotations": tc.annotations}
			}
			_, err := w.add(rt)
			if tc.want == "" {
				t.Logf("ADD: %v", err)
				if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), tc.mentions) {
					t.Fatalf("want code 7 mentioning %s, got %v", tc.mentions, err)
				}
				w.assertNothingLeft()
				return
			}
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			sb, ok := w.daemon.registered(w.key(rt))
			if !ok || sb.Policy != tc.want {
				t.Fatalf("registered policy %q (registered %v), want %q", sb.Policy, ok, tc.want)
			}
			if _, ok := sb.Args["PADDOCK_POLICY"]; ok || sb.Args["IgnoreUnknown"] != "" {
				t.Errorf("registered args %v: only identity keys belong there", sb.Args)
			}
			// DEL gets the same annotations from the runtime and must
			// not care what they say.
			if err := inNS(t, w.node, func() error { return w.cni.DelNetworkList(context.Background(), w.list, rt) }); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			w.assertNothingLeft()
		})
	}
}
