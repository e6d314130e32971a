package plugin

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// hostVethPrefix starts every host-side veth name, so an operator sees at a
// glance which links paddock owns.
const hostVethPrefix = "pdk"

// HostVethName is the node-side veth name of an attachment: "pdk" and the
// first 12 hex digits of sha256(network/containerID/ifname), 15 characters
// (the kernel's IFNAMSIZ limit). It is deterministic, so DEL and GC find the
// link without any state, and it includes the network so one container on
// two paddock networks gets two distinct names.
func HostVethName(k api.Key) string {
	sum := sha256.Sum256([]byte(k.Network + "/" + k.ContainerID + "/" + k.IfName))
	return hostVethPrefix + hex.EncodeToString(sum[:6])
}
