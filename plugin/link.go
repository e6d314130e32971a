package plugin

import (
	"errors"
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// hostLink is what ADD learns about the node-side veth.
type hostLink struct {
	Name  string
	Index int
	MAC   string
}

// linkExists reports whether a link named name exists in the current netns.
func linkExists(name string) (bool, error) {
	_, err := netlinksafe.LinkByName(name)
	if err == nil {
		return true, nil
	}
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return false, nil
	}
	return false, fmt.Errorf("look up link %q: %w", name, err)
}

// setupVeth creates the veth pair for k with the sandbox end in netns, and
// lays out a point-to-point network as containernetworking's ptp does: the
// host end holds every gateway as a /32 and routes each sandbox address as a
// /32 to the sandbox; the sandbox reaches only its gateway on-link and
// everything else, its own subnet included, through it. It fills
// res.Interfaces (0 host, 1 sandbox) and points every IP at interface 1.
// The caller runs it in the node netns and deletes the host veth on error.
func setupVeth(netns ns.NetNS, k api.Key, mtu int, res *current.Result) (hostLink, error) {
	hostName := HostVethName(k)
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return hostLink{}, fmt.Errorf("open node netns: %w", err)
	}
	defer hostNS.Close()

	sandboxIf := &current.Interface{Name: k.IfName, Sandbox: netns.Path()}
	err = netns.Do(func(_ ns.NetNS) error {
		_, contVeth, err := ip.SetupVethWithName(k.IfName, hostName, mtu, "", hostNS)
		if err != nil {
			return fmt.Errorf("create veth pair %s/%s: %w", hostName, k.IfName, err)
		}
		sandboxIf.Mac = contVeth.HardwareAddr.String()
		res.Interfaces = []*current.Interface{{Name: hostName}, sandboxIf}
		for _, ipc := range res.IPs {
			ipc.Interface = current.Int(1)
		}
		if err := ipam.ConfigureIface(k.IfName, res); err != nil {
			return fmt.Errorf("configure %s: %w", k.IfName, err)
		}
		return sandboxRoutes(contVeth.Index, res)
	})
	if err != nil {
		return hostLink{}, err
	}

	link, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return hostLink{}, fmt.Errorf("look up host veth %s: %w", hostName, err)
	}
	// The alias lets GC find this veth again without paddockd's help.
	if err := netlink.LinkSetAlias(link, k.Alias()); err != nil {
		return hostLink{}, fmt.Errorf("set alias on host veth %s: %w", hostName, err)
	}
	for _, ipc := range res.IPs {
		gw := &net.IPNet{IP: ipc.Gateway, Mask: net.CIDRMask(32, 32)}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: gw}); err != nil {
			return hostLink{}, fmt.Errorf("add gateway %s to host veth %s: %w", gw, hostName, err)
		}
		route := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Scope:     netlink.SCOPE_LINK,
			Dst:       &net.IPNet{IP: ipc.Address.IP, Mask: net.CIDRMask(32, 32)},
			Src:       ipc.Gateway,
		}
		if err := netlink.RouteAdd(route); err != nil {
			return hostLink{}, fmt.Errorf("add route %s dev %s: %w", route.Dst, hostName, err)
		}
	}
	mac := link.Attrs().HardwareAddr.String()
	res.Interfaces[0].Mac = mac
	return hostLink{Name: hostName, Index: link.Attrs().Index, MAC: mac}, nil
}

// sandboxRoutes replaces the subnet route the kernel added with the address
// by "gateway/32 dev ifname" and "subnet via gateway", so even neighbours in
// the same subnet are reached through the node (and its enforcement). The
// default route comes from res.Routes, applied by ipam.ConfigureIface.
func sandboxRoutes(ifIndex int, res *current.Result) error {
	for _, ipc := range res.IPs {
		subnet := &net.IPNet{IP: ipc.Address.IP.Mask(ipc.Address.Mask), Mask: ipc.Address.Mask}
		if err := netlink.RouteDel(&netlink.Route{LinkIndex: ifIndex, Dst: subnet, Scope: netlink.SCOPE_NOWHERE}); err != nil {
			return fmt.Errorf("delete on-link route %s: %w", subnet, err)
		}
		for _, r := range []netlink.Route{
			{LinkIndex: ifIndex, Dst: &net.IPNet{IP: ipc.Gateway, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK, Src: ipc.Address.IP},
			{LinkIndex: ifIndex, Dst: subnet, Scope: netlink.SCOPE_UNIVERSE, Gw: ipc.Gateway, Src: ipc.Address.IP},
		} {
			if err := netlink.RouteAdd(&r); err != nil {
				return fmt.Errorf("add route %s: %w", r.Dst, err)
			}
		}
	}
	return nil
}

// deleteHostVeth removes a host veth (and with it the sandbox end); a link
// that is already gone is success.
func deleteHostVeth(name string) error {
	if err := ip.DelLinkByName(name); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
		return err
	}
	return nil
}

// ownedVeths lists the host veths in the current netns whose alias says
// they belong to network.
func ownedVeths(network string) (map[api.Key]string, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make(map[api.Key]string)
	for _, l := range links {
		if l.Type() != "veth" {
			continue
		}
		k, ok := api.KeyFromAlias(l.Attrs().Alias)
		if ok && k.Network == network && l.Attrs().Name == HostVethName(k) {
			out[k] = l.Attrs().Name
		}
	}
	return out, nil
}

// checkSandbox verifies, inside the sandbox netns, that the interface of
// prevResult is there with its MAC, addresses and routes.
func checkSandbox(want *current.Interface, res *current.Result) error {
	link, err := netlinksafe.LinkByName(want.Name)
	if err != nil {
		return fmt.Errorf("interface %q is missing: %w", want.Name, err)
	}
	if want.Mac != "" && link.Attrs().HardwareAddr.String() != want.Mac {
		return fmt.Errorf("interface %q has MAC %s, prevResult says %s", want.Name, link.Attrs().HardwareAddr, want.Mac)
	}
	if err := ip.ValidateExpectedInterfaceIPs(want.Name, res.IPs); err != nil {
		return fmt.Errorf("interface %q addresses: %w", want.Name, err)
	}
	if err := ip.ValidateExpectedRoute(res.Routes); err != nil {
		return fmt.Errorf("interface %q routes: %w", want.Name, err)
	}
	return nil
}

// checkHost verifies that the host veth exists in the current netns and
// still holds the gateway addresses of res.
func checkHost(name string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host veth %s is missing: %w", name, err)
	}
	if link.Type() != "veth" {
		return fmt.Errorf("host veth %s is a %s link, not a veth", name, link.Type())
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of host veth %s: %w", name, err)
	}
	for _, ipc := range res.IPs {
		found := false
		for _, a := range addrs {
			found = found || a.IP.Equal(ipc.Gateway)
		}
		if !found {
			return fmt.Errorf("host veth %s lacks the gateway address %s", name, ipc.Gateway)
		}
	}
	return nil
}
