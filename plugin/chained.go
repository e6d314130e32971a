package plugin

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Chained mode supports one kind of primary: a veth pair whose node end is
// a routed interface of the runtime's netns, as ptp creates. Everything else
// is refused at ADD, because paddock's enforcement (tcx on the node end,
// nftables rules keyed on its name) would not see the sandbox's packets:
//
//   - macvlan, ipvlan, vlan, netkit, ... have no node-side peer at all:
//     their traffic leaves through the parent device, and sk_assign is
//     broken on netkit anyway.
//   - a veth whose node end is a bridge port (bridge, and every primary
//     that enslaves its veth): tcx on the port still sees each frame, but
//     the IP layer sees the bridge as the input interface, never the port,
//     so nftables' fail-closed layer (iifname @sandbox_ifs) would let
//     through whatever tcx did not handle, and frames between two sandboxes
//     of the bridge are switched without being routed at all.

// unsupportedPrimary is the CNI error for a primary paddock cannot enforce.
func unsupportedPrimary(ifName, kind, why string) *types.Error {
	return invalidConfig("the primary plugin's interface %q is %s: %s; paddock chained mode supports only a routed veth pair (ptp), not macvlan, ipvlan, bridge or netkit: put paddock alone in the conflist (it creates its own veth) or after ptp",
		ifName, kind, why)
}

// peer is what chained ADD and CHECK learn about the primary's veth pair.
type peer struct {
	host       hostLink
	sandboxMAC string
}

// findPeer finds the node end of the veth the primary plugin created as
// ifName in netns. It runs in the runtime's netns, where the node end must
// be: the sandbox end's IFLA_LINK is an ifindex of its peer's netns, so it
// is looked up there and must point back at the sandbox end.
func findPeer(netns ns.NetNS, ifName string) (peer, error) {
	var p peer
	var sandboxIndex, peerIndex int
	err := netns.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("the primary plugin's interface %q is not in netns %s: %w", ifName, netns.Path(), err)
		}
		if link.Type() != "veth" {
			return unsupportedPrimary(ifName, "a "+link.Type()+" link", "it has no node-side peer for paddock to enforce on")
		}
		if _, peerIndex, err = ip.GetVethPeerIfindex(ifName); err != nil {
			return fmt.Errorf("find the peer of veth %q: %w", ifName, err)
		}
		sandboxIndex = link.Attrs().Index
		p.sandboxMAC = link.Attrs().HardwareAddr.String()
		return nil
	})
	if err != nil {
		return peer{}, err
	}

	link, err := netlink.LinkByIndex(peerIndex)
	if err != nil {
		return peer{}, fmt.Errorf("the peer of veth %q (ifindex %d) is not in the runtime's netns: %w", ifName, peerIndex, err)
	}
	name := link.Attrs().Name
	if link.Type() != "veth" || link.Attrs().ParentIndex != sandboxIndex {
		return peer{}, fmt.Errorf("the peer of veth %q (ifindex %d) is not in the runtime's netns: ifindex %d here is %s (%s), whose peer is not the sandbox's interface", ifName, peerIndex, peerIndex, name, link.Type())
	}
	if m := link.Attrs().MasterIndex; m != 0 {
		kind, master := "a device", fmt.Sprintf("ifindex %d", m)
		if ml, err := netlink.LinkByIndex(m); err == nil {
			kind, master = ml.Type(), ml.Attrs().Name
		}
		return peer{}, unsupportedPrimary(ifName, fmt.Sprintf("a veth whose node end %s is a port of %s %s", name, kind, master),
			"the IP layer sees the "+kind+" as the input interface, not "+name+", so nftables' fail-closed rules would not apply and frames between sandboxes would be switched, not routed")
	}
	p.host = hostLink{Name: name, Index: link.Attrs().Index, MAC: link.Attrs().HardwareAddr.String()}
	return p, nil
}

// sandboxInterface returns the index and entry of ifName in res, the
// interface the primary plugin put in netnsPath.
func sandboxInterface(res *current.Result, ifName, netnsPath string) (int, *current.Interface, error) {
	for i, ifc := range res.Interfaces {
		if ifc.Name == ifName && ifc.Sandbox != "" {
			if ifc.Sandbox != netnsPath {
				return 0, nil, fmt.Errorf("interface %q is in netns %s according to prevResult, not in CNI_NETNS %s", ifName, ifc.Sandbox, netnsPath)
			}
			return i, ifc, nil
		}
	}
	return 0, nil, invalidConfig("prevResult has no interface %q in a sandbox: the plugin before paddock must create CNI_IFNAME in the sandbox's netns", ifName)
}

// interfaceIPs keeps the addresses of res that belong to interface idx (or
// to no interface in particular).
func interfaceIPs(res *current.Result, idx int) *current.Result {
	out := *res
	out.IPs = nil
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface == idx {
			out.IPs = append(out.IPs, ipc)
		}
	}
	return &out
}
