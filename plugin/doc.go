// Package plugin implements the paddock CNI plugin (CNI 0.4.0 to 1.1.0):
// ADD/CHECK/DEL/STATUS/GC, config parsing, the veth pair with delegated IPAM,
// and registration of each sandbox with paddockd.
//
// Standalone (paddock alone in its conflist, with an "ipam" section) the
// plugin owns the interface: a veth pair whose host end (named by
// HostVethName and tagged with an alias naming its attachment) is the
// sandbox's gateway in a point-to-point layout, so every packet of the
// sandbox crosses the host end where paddockd enforces.
//
// Chained (paddock after a primary plugin, without "ipam") the plugin creates
// nothing: it reads the peer ifindex of the primary's veth in the sandbox,
// finds that veth's node end in the runtime's netns, registers it, and
// returns the primary's result with the gateway (the DNS guard) as the only
// nameserver. Only a routed veth pair (ptp) can be enforced: macvlan, ipvlan,
// vlan and netkit interfaces have no node end, and a veth enslaved to a
// bridge is a bridge port whose packets the IP layer attributes to the
// bridge, so nftables' fail-closed rules keyed on the host veth would never
// see them and sandbox-to-sandbox frames would be switched, not routed.
// Those are refused at ADD with CNI error 7 naming the interface kind. DEL
// and GC of a chained network remove only the registration; the primary's
// DEL and GC remove its veth and lease.
//
// The policy is chosen per sandbox from operator-owned configuration:
//
//	"policy": "default",
//	"policySelectors": [{"namespace": "ci", "podName": "runner-*", "policy": "ci"}],
//	"allowedPolicies": [{"namespaces": ["team-a", "team-b-*"], "policies": ["strict", "web"]},
//	                    {"namespaces": ["*"], "policies": ["offline"]}]
//
// The first policySelectors entry whose shell patterns match
// K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS (an empty pattern matches
// anything) replaces "policy". A sandbox may request a policy through
// CNI_ARGS PADDOCK_POLICY=name or the pod annotation paddock.dev/policy
// (declare the io.kubernetes.cri.pod-annotations capability). Its author
// writes both, so a request that differs from the operator's choice is
// honoured only if an allowedPolicies entry for the pod's namespace lists it
// ("*" also covers sandboxes without a namespace, as podman's); otherwise ADD
// fails with CNI error 7 before anything is created. paddockd refuses a
// policy it has no file for, which ADD also reports as error 7 after undoing
// its work. Code 7 because the request arrives in the plugin's input and is
// invalid for this network, and retrying cannot help. The chosen policy and
// the identity keys of CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME,
// K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID) are registered with the sandbox.
//
// paddock is IPv4-only: an IPv6 address from IPAM or the primary is refused
// at ADD (the enforcer denies IPv6), and ADD fails with nothing left behind
// unless paddockd is reachable, ready and accepts the registration. GC needs
// cni.dev/valid-attachments; without it GC succeeds and removes nothing,
// since the spec makes the list mandatory and reading its absence as
// "nothing is valid" would tear down every running sandbox.
package plugin
