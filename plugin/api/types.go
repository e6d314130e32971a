package api

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// DefaultSocket is where paddockd serves its API unless told otherwise.
const DefaultSocket = "/run/paddock/paddockd.sock"

// Sandbox is one registered attachment: one interface of one container on one
// CNI network. (Network, ContainerID, IfName) is its identity.
type Sandbox struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns,omitempty"`

	// HostVeth is the node-side peer of the sandbox interface; enforcement
	// is attached here, out of the sandbox's reach.
	HostVeth    string `json:"hostVeth"`
	HostIfIndex int    `json:"hostIfIndex"`
	HostMAC     string `json:"hostMAC,omitempty"`
	// SandboxMAC is the MAC of the sandbox-side interface (anti-spoofing).
	SandboxMAC string `json:"sandboxMAC,omitempty"`

	IPs     []netip.Prefix `json:"ips"`
	Gateway netip.Addr     `json:"gateway"`

	Policy string            `json:"policy"`
	Args   map[string]string `json:"args,omitempty"`

	Created time.Time `json:"created"`
}

// Key identifies an attachment; it is stable across paddockd restarts.
func (s Sandbox) Key() Key {
	return Key{Network: s.Network, ContainerID: s.ContainerID, IfName: s.IfName}
}

// ShortID is what logs show as "sandbox": the first 12 characters of the
// container id, as container tools do.
func (s Sandbox) ShortID() string {
	if len(s.ContainerID) > 12 {
		return s.ContainerID[:12]
	}
	return s.ContainerID
}

// IPv4 returns the sandbox's first IPv4 address, if any.
func (s Sandbox) IPv4() (netip.Addr, bool) {
	for _, p := range s.IPs {
		if p.Addr().Is4() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// Key is the identity of an attachment.
type Key struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (k Key) String() string { return k.Network + "/" + k.ContainerID + "/" + k.IfName }

// Validate reports the first missing field of k.
func (k Key) Validate() error {
	switch {
	case k.Network == "":
		return fmt.Errorf("network name is empty")
	case k.ContainerID == "":
		return fmt.Errorf("container id is empty")
	case k.IfName == "":
		return fmt.Errorf("interface name is empty")
	case strings.ContainsAny(k.Network+k.ContainerID+k.IfName, "/\x00"):
		return fmt.Errorf("key %q contains '/' or NUL", k.String())
	}
	return nil
}

// AliasPrefix starts the IFLA_IFALIAS the plugin writes on every host veth
// it creates; the rest of the alias is the attachment key. GC finds stale
// veths by it even when paddockd is down or has lost its state, and the drop
// log names the sandbox of a packet dropped before its registration landed.
const AliasPrefix = "paddock:"

// Alias is the link alias naming k on its host veth.
func (k Key) Alias() string { return AliasPrefix + k.String() }

// KeyFromAlias inverts Key.Alias; ok is false for links paddock does not own.
func KeyFromAlias(alias string) (Key, bool) {
	rest, ok := strings.CutPrefix(alias, AliasPrefix)
	if !ok {
		return Key{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return Key{}, false
	}
	k := Key{Network: parts[0], ContainerID: parts[1], IfName: parts[2]}
	return k, k.Validate() == nil
}

// Attachment is one entry of cni.dev/valid-attachments.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// GCRequest asks paddockd to forget every sandbox of Network that is not in Valid.
type GCRequest struct {
	Network string       `json:"network"`
	Valid   []Attachment `json:"valid"`
}

// GCResponse lists what a GC removed.
type GCResponse struct {
	Removed []Key `json:"removed"`
}

// Status is paddockd's health as the plugin's STATUS and `paddock status` see it.
type Status struct {
	Ready     bool      `json:"ready"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	Redirect  string    `json:"redirect"` // "bpf" or "nftables"
	Sandboxes int       `json:"sandboxes"`
	// Components maps a part of the data path ("bpf", "nftables", "nflog",
	// "proxy", ...) to "ok" or a description of what is wrong.
	Components map[string]string `json:"components,omitempty"`
	Message    string            `json:"message,omitempty"`
}

// SandboxStatus is a registration plus what the enforcer says about it.
type SandboxStatus struct {
	Sandbox
	// Enforced is "ok" when every layer is in place, else what is missing.
	Enforced string `json:"enforced"`
}
