package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// Defaults for the optional fields of NetConf.
const (
	DefaultPolicy = "default"
	DefaultMTU    = 1500
	minMTU        = 576 // smallest datagram every IPv4 host must accept (RFC 791)
	maxMTU        = 65535
)

// policyName is the shape of a policy name: it becomes a file name under
// /etc/paddock/policies and a label in logs and metrics, so it is kept to
// lowercase letters, digits and "-", "_", "." with an alphanumeric first
// character and at most 63 characters.
var policyName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// NetConf is the paddock plugin's configuration. Fields a runtime adds
// (runtimeConfig, args, capabilities, ...) are accepted and ignored.
type NetConf struct {
	types.NetConf

	// Policy names the egress policy paddockd applies to the sandbox.
	Policy string `json:"policy,omitempty"`
	// DaemonSocket is paddockd's API socket.
	DaemonSocket string `json:"daemonSocket,omitempty"`
	// MTU of both ends of the veth pair; 0 means DefaultMTU. Standalone
	// mode only: chained, the primary plugin sets the MTU.
	MTU int `json:"mtu,omitempty"`
	// AllowedPolicies lists which policies sandboxes of which namespaces
	// may request instead of their operator-chosen one.
	AllowedPolicies []PolicyGrant `json:"allowedPolicies,omitempty"`
	// PolicySelectors choose a policy by pod namespace and name; the
	// first match wins over Policy.
	PolicySelectors []PolicySelector `json:"policySelectors,omitempty"`
	// RuntimeConfig carries the pod annotations a runtime passes when the
	// plugin declares the io.kubernetes.cri.pod-annotations capability.
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`

	// validAttachments is cni.dev/valid-attachments (or its misspelt 1.1.0
	// alias cni.dev/attachments) as given to GC; nil when the runtime
	// sent neither key, which is not the same as an empty list.
	validAttachments []types.GCAttachment
}

// gcKeys are the top-level keys a GC request may carry its list in; libcni
// sends both because the 1.1.0 spec first named the key wrongly (cni#1101).
type gcKeys struct {
	Valid *[]types.GCAttachment `json:"cni.dev/valid-attachments"`
	Alias *[]types.GCAttachment `json:"cni.dev/attachments"`
}

// invalidConfig is CNI error 7 with a lowercase message.
func invalidConfig(format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, a...), "")
}

// parseConfig unmarshals the plugin's stdin, applies defaults, parses a
// prevResult and validates every field. Errors are CNI errors: code 7 for
// anything wrong with the configuration, naming the field and its value.
func parseConfig(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			// Fields of the embedded types.NetConf come prefixed with
			// its Go name, which means nothing to the user.
			te.Field = strings.TrimPrefix(te.Field, "NetConf.")
			return nil, invalidConfig("%s has the wrong type: got %s (a JSON %s), want %s", te.Field, topValue(stdin, te.Field), te.Value, jsonKind(te.Type.Kind()))
		}
		return nil, types.NewError(types.ErrDecodingFailure, "parse network configuration: "+err.Error(), "")
	}
	var keys gcKeys
	if err := json.Unmarshal(stdin, &keys); err != nil {
		return nil, invalidConfig("cni.dev/valid-attachments is malformed: %v: give a list of {\"containerID\", \"ifname\"} objects", err)
	}
	switch {
	case keys.Valid != nil:
		conf.validAttachments = *keys.Valid
	case keys.Alias != nil:
		conf.validAttachments = *keys.Alias
	}
	if conf.validAttachments == nil && (keys.Valid != nil || keys.Alias != nil) {
		conf.validAttachments = []types.GCAttachment{}
	}

	if conf.Policy == "" {
		conf.Policy = DefaultPolicy
	}
	if conf.DaemonSocket == "" {
		conf.DaemonSocket = api.DefaultSocket
	}
	if conf.MTU == 0 {
		conf.MTU = DefaultMTU
	}

	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parse prevResult: "+err.Error(), "")
	}
	if err := conf.validate(stdin); err != nil {
		return nil, err
	}
	return conf, nil
}

func (c *NetConf) validate(stdin []byte) *types.Error {
	if c.Name == "" {
		return invalidConfig("name is empty: give the network a name")
	}
	if !policyName.MatchString(c.Policy) {
		return invalidConfig("policy %q is not a valid policy name: use 1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit", c.Policy)
	}
	if !strings.HasPrefix(c.DaemonSocket, "/") {
		return invalidConfig("daemonSocket %q is not an absolute path: give the path of paddockd's API socket, e.g. %s", c.DaemonSocket, api.DefaultSocket)
	}
	if c.MTU < minMTU || c.MTU > maxMTU {
		return invalidConfig("mtu %d is out of range: use %d..%d, or 0 for %d", c.MTU, minMTU, maxMTU, DefaultMTU)
	}
	if err := c.validatePolicies(); err != nil {
		return err
	}
	var raw struct {
		IPAM json.RawMessage `json:"ipam"`
	}
	_ = json.Unmarshal(stdin, &raw) // already decoded once above
	// Without ipam the plugin runs chained (see checkMode); whether that
	// fits the verb's input is decided there, not here, because DEL, GC
	// and STATUS of a chained network carry no prevResult to tell.
	if len(raw.IPAM) == 0 || string(raw.IPAM) == "null" {
		return nil
	}
	if c.IPAM.Type == "" {
		return invalidConfig("ipam %s has no type: name the IPAM plugin, e.g. \"type\": \"host-local\"", string(raw.IPAM))
	}
	if strings.ContainsAny(c.IPAM.Type, "/\\") {
		return invalidConfig("ipam type %q is not a plugin name: give the binary's name in CNI_PATH, e.g. \"host-local\"", c.IPAM.Type)
	}
	return nil
}

// chained reports whether this network runs paddock after a primary plugin:
// it then has no ipam section of its own.
func (c *NetConf) chained() bool { return c.IPAM.Type == "" }

// checkMode matches an ADD's input to the network's mode: standalone needs
// ipam and no prevResult; chained (after a primary plugin, with prevResult)
// must not have ipam, since the primary owns the addresses and paddock
// would otherwise allocate and release a second lease.
func (c *NetConf) checkMode() *types.Error {
	switch {
	case c.PrevResult == nil && c.chained():
		return invalidConfig("ipam is missing: standalone paddock allocates addresses itself, so add an \"ipam\" section, e.g. {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"10.208.0.0/16\"}]]}; or list paddock after a primary plugin (ptp) in the conflist")
	case c.PrevResult != nil && !c.chained():
		return invalidConfig("network %q runs paddock after another plugin (there is a prevResult) but paddock's entry has an ipam section: remove it, the primary plugin allocates the addresses", c.Name)
	}
	return nil
}

// parseArgs parses CNI_ARGS ("K1=V1;K2=V2") into a map; runtimes send the
// pairs in any order, so callers look them up by key.
func parseArgs(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := make(map[string]string)
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return nil, invalidConfig("CNI_ARGS item %q is not KEY=VALUE: fix the runtime's CNI_ARGS %q", pair, s)
		}
		out[k] = v
	}
	return out, nil
}

// jsonKind names the JSON type a Go kind decodes from, for error messages.
func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	default:
		return "a number"
	}
}

// topValue returns the raw JSON of the top-level key that field (a dotted
// path such as "ipam.type") starts with, for quoting in an error.
func topValue(stdin []byte, field string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(stdin, &m) != nil {
		return "?"
	}
	top, _, _ := strings.Cut(field, ".")
	v := string(m[top])
	if len(v) > 200 {
		v = v[:200] + "..."
	}
	return v
}
