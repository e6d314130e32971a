package plugin

import (
	"fmt"
	"path"

	"github.com/containernetworking/cni/pkg/types"
)

// The places a sandbox's policy request can come from, and the identity the
// runtime passes in CNI_ARGS.
const (
	// PolicyArg is the CNI_ARGS key that requests a policy, for runtimes
	// and tools that let the caller add CNI_ARGS (cnitool, wrappers).
	PolicyArg = "PADDOCK_POLICY"
	// PolicyAnnotation is the pod annotation that requests a policy; it
	// reaches the plugin through the io.kubernetes.cri.pod-annotations
	// capability.
	PolicyAnnotation = "paddock.dev/policy"

	argNamespace = "K8S_POD_NAMESPACE"
	argPodName   = "K8S_POD_NAME"
)

// identityArgs are the CNI_ARGS keys stored with a registration: what tells
// an operator which pod a sandbox is. IgnoreUnknown, IP=, MAC= and the
// policy request are not identity.
var identityArgs = []string{argNamespace, argPodName, "K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID"}

// PolicyGrant permits sandboxes in Namespaces to request any of Policies.
// Namespaces are shell patterns (path.Match); "*" also matches a sandbox
// without a namespace (podman passes none).
type PolicyGrant struct {
	Namespaces []string `json:"namespaces"`
	Policies   []string `json:"policies"`
}

// PolicySelector assigns Policy to the sandboxes whose K8S_POD_NAMESPACE and
// K8S_POD_NAME match its patterns; an empty pattern matches anything, but a
// selector must set at least one.
type PolicySelector struct {
	Namespace string `json:"namespace,omitempty"`
	PodName   string `json:"podName,omitempty"`
	Policy    string `json:"policy"`
}

// RuntimeConfig is the part of runtimeConfig the plugin reads.
type RuntimeConfig struct {
	PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
}

// validatePolicies checks the operator's grants and selectors.
func (c *NetConf) validatePolicies() *types.Error {
	for i, g := range c.AllowedPolicies {
		if len(g.Namespaces) == 0 || len(g.Policies) == 0 {
			return invalidConfig("allowedPolicies[%d] needs both \"namespaces\" and \"policies\": list the namespaces and the policies they may request", i)
		}
		for _, ns := range g.Namespaces {
			if err := checkPattern(ns); err != nil {
				return invalidConfig("allowedPolicies[%d] namespace pattern %q: %v", i, ns, err)
			}
		}
		for _, p := range g.Policies {
			if !policyName.MatchString(p) {
				return invalidConfig("allowedPolicies[%d] policy %q is not a valid policy name: use 1-63 lowercase letters, digits, '-', '_' or '.'", i, p)
			}
		}
	}
	for i, s := range c.PolicySelectors {
		if s.Namespace == "" && s.PodName == "" {
			return invalidConfig("policySelectors[%d] has neither \"namespace\" nor \"podName\": it would match every sandbox; set \"policy\" instead", i)
		}
		for _, p := range []string{s.Namespace, s.PodName} {
			if err := checkPattern(p); err != nil {
				return invalidConfig("policySelectors[%d] pattern %q: %v", i, p, err)
			}
		}
		if !policyName.MatchString(s.Policy) {
			return invalidConfig("policySelectors[%d] policy %q is not a valid policy name: use 1-63 lowercase letters, digits, '-', '_' or '.'", i, s.Policy)
		}
	}
	return nil
}

func checkPattern(p string) error {
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("not a valid shell pattern: %w", err)
	}
	return nil
}

// match reports whether name matches pattern; an empty pattern matches all.
func match(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	ok, _ := path.Match(pattern, name) // patterns were checked by validatePolicies
	return ok
}

// choosePolicy returns the policy for a sandbox with CNI_ARGS args.
//
// The operator's choice comes first: the first policySelectors entry that
// matches the pod, else "policy". A request (CNI_ARGS PADDOCK_POLICY or the
// paddock.dev/policy pod annotation) is written by the pod's author, so it
// replaces the operator's choice only when an allowedPolicies grant for the
// pod's namespace lists it; asking for the policy the operator chose anyway
// needs no grant. Refusals are CNI error 7: the request travels in the
// plugin's input (CNI_ARGS, runtimeConfig) and is invalid for this network,
// and retrying cannot help, which is what 7 tells a runtime.
func (c *NetConf) choosePolicy(args map[string]string) (string, error) {
	namespace, pod := args[argNamespace], args[argPodName]
	chosen := c.Policy
	for _, s := range c.PolicySelectors {
		if match(s.Namespace, namespace) && match(s.PodName, pod) {
			chosen = s.Policy
			break
		}
	}

	fromArg, fromAnnotation := args[PolicyArg], c.RuntimeConfig.PodAnnotations[PolicyAnnotation]
	requested, source := fromArg, "CNI_ARGS "+PolicyArg
	switch {
	case fromArg != "" && fromAnnotation != "" && fromArg != fromAnnotation:
		return "", invalidConfig("policy requested twice with different names: CNI_ARGS %s=%q and annotation %s=%q: request one policy", PolicyArg, fromArg, PolicyAnnotation, fromAnnotation)
	case fromArg == "":
		requested, source = fromAnnotation, "annotation "+PolicyAnnotation
	}
	if requested == "" || requested == chosen {
		return chosen, nil
	}
	if !policyName.MatchString(requested) {
		return "", invalidConfig("%s requests %q, which is not a valid policy name: use 1-63 lowercase letters, digits, '-', '_' or '.'", source, requested)
	}
	for _, g := range c.AllowedPolicies {
		if !grantsNamespace(g, namespace) {
			continue
		}
		for _, p := range g.Policies {
			if p == requested {
				return requested, nil
			}
		}
	}
	who := "sandboxes without a namespace"
	if namespace != "" {
		who = fmt.Sprintf("namespace %q", namespace)
	}
	return "", invalidConfig("%s requests policy %q, which network %q does not permit for %s (its policy here is %q): the operator can add an allowedPolicies entry for it, or remove the request",
		source, requested, c.Name, who, chosen)
}

func grantsNamespace(g PolicyGrant, namespace string) bool {
	for _, p := range g.Namespaces {
		if p == "*" || (namespace != "" && match(p, namespace)) {
			return true
		}
	}
	return false
}

// identity returns the identity keys of CNI_ARGS, or nil if there are none.
func identity(args map[string]string) map[string]string {
	var out map[string]string
	for _, k := range identityArgs {
		if v, ok := args[k]; ok {
			if out == nil {
				out = make(map[string]string, len(identityArgs))
			}
			out[k] = v
		}
	}
	return out
}
