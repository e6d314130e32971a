package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// hostVethPrefix starts every host-side veth name, so an operator sees at a
// glance which links paddock owns.
const hostVethPrefix = "pdk"

// aliasPrefix starts the IFLA_IFALIAS of every host veth; the rest of the
// alias is the attachment key. GC finds stale veths by it even when paddockd
// is down or has lost its state.
const aliasPrefix = "paddock:"

// HostVethName is the node-side veth name of an attachment: "pdk" and the
// first 12 hex digits of sha256(network/containerID/ifname), 15 characters
// (the kernel's IFNAMSIZ limit). It is deterministic, so DEL and GC find the
// link without any state, and it includes the network so one container on
// two paddock networks gets two distinct names.
func HostVethName(k api.Key) string {
	sum := sha256.Sum256([]byte(k.Network + "/" + k.ContainerID + "/" + k.IfName))
	return hostVethPrefix + hex.EncodeToString(sum[:6])
}

// hostAlias is the alias written on a host veth.
func hostAlias(k api.Key) string { return aliasPrefix + k.String() }

// keyFromAlias inverts hostAlias; ok is false for links paddock does not own.
func keyFromAlias(alias string) (api.Key, bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return api.Key{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return api.Key{}, false
	}
	k := api.Key{Network: parts[0], ContainerID: parts[1], IfName: parts[2]}
	return k, k.Validate() == nil
}
