package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// daemon is the part of paddockd's API the plugin uses; *api.Client
// implements it.
type daemon interface {
	Status(ctx context.Context) (api.Status, error)
	Register(ctx context.Context, sb api.Sandbox) (api.Sandbox, error)
	Unregister(ctx context.Context, k api.Key) error
	Get(ctx context.Context, k api.Key) (api.SandboxStatus, error)
	GC(ctx context.Context, req api.GCRequest) (api.GCResponse, error)
}

// dial returns the client for paddockd's socket; it is the one place the
// daemon implementation is chosen.
var dial = func(socket string) daemon { return api.NewClient(socket) }

// callTimeout bounds each request to paddockd, so a hung daemon turns into a
// CNI error instead of a hung runtime.
const callTimeout = 10 * time.Second

func call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

// unreachable is the CNI error for a paddockd that cannot be reached.
func unreachable(socket string, err error) error {
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("paddockd is not reachable at %s: start paddockd (systemctl start paddockd) and retry", socket), err.Error())
}

func keyOf(conf *NetConf, args *skel.CmdArgs) api.Key {
	return api.Key{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

// Add is CNI ADD. Standalone (no prevResult) it creates the veth pair with
// delegated IPAM and the point-to-point layout; chained (after a primary
// plugin) it finds the node end of the primary's veth. Either way it then
// registers the sandbox with paddockd under the policy choosePolicy picked.
// Every failure undoes what paddock did, so no sandbox comes up without
// enforcement.
func Add(args *skel.CmdArgs) (err error) {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := conf.checkMode(); err != nil {
		return err
	}
	cniArgs, err := parseArgs(args.Args)
	if err != nil {
		return err
	}
	k := keyOf(conf, args)
	if err := k.Validate(); err != nil {
		return invalidConfig("attachment %s: %v", k, err)
	}
	policy, err := conf.choosePolicy(cniArgs)
	if err != nil {
		return err
	}

	// Reachability first: nothing is created for a sandbox paddockd
	// could not enforce.
	d := dial(conf.DaemonSocket)
	ctx, cancel := call()
	st, err := d.Status(ctx)
	cancel()
	if err != nil {
		return unreachable(conf.DaemonSocket, err)
	}
	if !st.Ready {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("paddockd at %s is not ready: %s; check `paddock status` and retry", conf.DaemonSocket, st.Message), "")
	}

	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return fmt.Errorf("open netns %q: %w", args.Netns, err)
	}
	defer netns.Close()

	sb := api.Sandbox{
		Network:     k.Network,
		ContainerID: k.ContainerID,
		IfName:      k.IfName,
		Netns:       args.Netns,
		Policy:      policy,
		Args:        identity(cniArgs),
		Created:     time.Now().UTC(),
	}
	if conf.PrevResult != nil {
		return addChained(conf, netns, sb, d)
	}

	var exists bool
	if err := netns.Do(func(ns.NetNS) error {
		var err error
		exists, err = linkExists(k.IfName)
		return err
	}); err != nil {
		return err
	}
	if exists {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("interface %q already exists in netns %s: choose another CNI_IFNAME or remove it", k.IfName, args.Netns), "")
	}
	hostName := HostVethName(k)
	if exists, err = linkExists(hostName); err != nil {
		return err
	} else if exists {
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("host veth %s of attachment %s already exists: the attachment is set up already; DEL it before adding it again", hostName, k), "")
	}

	r, err := ipam.ExecAdd(conf.IPAM.Type, args.StdinData)
	if err != nil {
		return fmt.Errorf("ipam %s add: %w", conf.IPAM.Type, err)
	}
	// From here on every error path undoes everything: the lease, the veth
	// (its sandbox end goes with it) and a registration.
	var registered bool
	defer func() {
		if err == nil {
			return
		}
		if registered {
			ctx, cancel := call()
			_ = d.Unregister(ctx, k)
			cancel()
		}
		_ = deleteHostVeth(hostName)
		_ = ipam.ExecDel(conf.IPAM.Type, args.StdinData)
	}()

	res, err := current.NewResultFromResult(r)
	if err != nil {
		return fmt.Errorf("convert ipam result: %w", err)
	}
	gw, err := ipv4Only("ipam "+conf.IPAM.Type, res)
	if err != nil {
		return err
	}
	if !hasDefaultRoute(res.Routes) {
		res.Routes = append(res.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, GW: gw.AsSlice()})
	}
	for _, rt := range res.Routes {
		if rt.GW == nil {
			rt.GW = gw.AsSlice()
		}
	}
	res.DNS = types.DNS{Nameservers: []string{gw.String()}}

	host, err := setupVeth(netns, k, conf.MTU, res)
	if err != nil {
		return err
	}
	sb.HostVeth, sb.HostIfIndex, sb.HostMAC = host.Name, host.Index, host.MAC
	sb.SandboxMAC = res.Interfaces[1].Mac
	sb.Gateway = gw
	sb.IPs = prefixes(res)
	if err := register(d, conf, sb); err != nil {
		return err
	}
	registered = true
	return types.PrintResult(res, conf.CNIVersion)
}

// addChained registers the sandbox whose interface a primary plugin created
// and returns the primary's result with the DNS guard as its nameserver.
// paddock creates nothing here, so a failure leaves nothing behind but what
// the primary made, which the runtime's DEL removes.
func addChained(conf *NetConf, netns ns.NetNS, sb api.Sandbox, d daemon) (err error) {
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("convert prevResult: %w", err)
	}
	idx, _, err := sandboxInterface(res, sb.IfName, netns.Path())
	if err != nil {
		return err
	}
	own := interfaceIPs(res, idx)
	gw, err := ipv4Only("the primary plugin", own)
	if err != nil {
		return err
	}
	p, err := findPeer(netns, sb.IfName)
	if err != nil {
		return err
	}
	sb.HostVeth, sb.HostIfIndex, sb.HostMAC = p.host.Name, p.host.Index, p.host.MAC
	sb.SandboxMAC = p.sandboxMAC
	sb.Gateway = gw
	sb.IPs = prefixes(own)
	if err := register(d, conf, sb); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			ctx, cancel := call()
			_ = d.Unregister(ctx, sb.Key())
			cancel()
		}
	}()
	// The DNS guard answers on the gateway address; search domains and
	// options the primary set still apply.
	res.DNS.Nameservers = []string{gw.String()}
	return types.PrintResult(res, conf.CNIVersion)
}

// prefixes returns the (IPv4, by ipv4Only) addresses of res.
func prefixes(res *current.Result) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP.To4())
		ones, _ := ipc.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(a, ones))
	}
	return out
}

// register hands sb to paddockd, turning its refusals into CNI errors.
func register(d daemon, conf *NetConf, sb api.Sandbox) error {
	ctx, cancel := call()
	_, err := d.Register(ctx, sb)
	cancel()
	switch {
	case errors.Is(err, api.ErrUnavailable):
		return unreachable(conf.DaemonSocket, err)
	case errors.Is(err, api.ErrUnknownPolicy):
		return invalidConfig("policy %q of sandbox %s does not exist on this node (%v): create it in paddockd's policy dir, or choose an existing policy", sb.Policy, sb.Key(), err)
	case err != nil:
		return fmt.Errorf("register sandbox %s with paddockd: %w", sb.Key(), err)
	}
	return nil
}

// ipv4Only enforces paddock's IPv4-only choice: the enforcer denies IPv6,
// so an IPv6 address would only ever be a dead end (or, if anything else
// routed it, a way around the proxy). It returns the gateway of the single
// IPv4 address.
func ipv4Only(source string, res *current.Result) (netip.Addr, error) {
	var gw netip.Addr
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() == nil {
			return netip.Addr{}, invalidConfig("%s handed out the IPv6 address %s: paddock enforces IPv4 only and the enforcer denies IPv6; configure IPv4 ranges only", source, ipc.Address.String())
		}
		if gw.IsValid() {
			return netip.Addr{}, invalidConfig("%s handed out more than one IPv4 address (%s): configure a single IPv4 range", source, ipc.Address.String())
		}
		g, ok := netip.AddrFromSlice(ipc.Gateway.To4())
		if !ok {
			return netip.Addr{}, invalidConfig("%s gave address %s no gateway: set \"gateway\" in the range (the host veth becomes the gateway)", source, ipc.Address.String())
		}
		gw = g
	}
	if !gw.IsValid() {
		return netip.Addr{}, fmt.Errorf("%s returned no IP address", source)
	}
	return gw, nil
}

func hasDefaultRoute(routes []*types.Route) bool {
	for _, r := range routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.Dst.IP.To4() != nil {
			return true
		}
	}
	return false
}

// Del is CNI DEL: idempotent, and successful when the netns, the link, the
// lease or the registration is already gone, when CNI_NETNS is empty and
// when paddockd is down (paddockd reconciles when it is back). Chained, it
// removes only the registration: the veth and the lease are the primary's.
func Del(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	k := keyOf(conf, args)
	var errs []error
	// The veth goes first: the sandbox loses its network before anything
	// else is released, and its end goes with the host end.
	if !conf.chained() {
		if err := deleteHostVeth(HostVethName(k)); err != nil {
			errs = append(errs, fmt.Errorf("delete host veth: %w", err))
		}
	}
	ctx, cancel := call()
	err = dial(conf.DaemonSocket).Unregister(ctx, k)
	cancel()
	if err != nil && !errors.Is(err, api.ErrUnavailable) {
		errs = append(errs, fmt.Errorf("unregister %s: %w", k, err))
	}
	if !conf.chained() {
		if err := ipam.ExecDel(conf.IPAM.Type, args.StdinData); err != nil {
			errs = append(errs, fmt.Errorf("ipam %s del: %w", conf.IPAM.Type, err))
		}
	}
	return errors.Join(errs...)
}

// Check is CNI CHECK: the sandbox interface still has the prevResult's
// addresses and routes, its node end exists (standalone: paddock's veth
// with the gateway addresses; chained: the primary's veth, still the one
// registered), and paddockd still enforces the registration.
func Check(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return invalidConfig("prevResult is missing: CHECK needs the result of ADD")
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("convert prevResult: %w", err)
	}
	k := keyOf(conf, args)
	if !conf.chained() {
		if err := ipam.ExecCheck(conf.IPAM.Type, args.StdinData); err != nil {
			return fmt.Errorf("ipam %s check: %w", conf.IPAM.Type, err)
		}
	}
	idx, sandboxIf, err := sandboxInterface(res, k.IfName, args.Netns)
	if err != nil {
		return err
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return fmt.Errorf("open netns %q: %w", args.Netns, err)
	}
	defer netns.Close()
	if err := netns.Do(func(ns.NetNS) error {
		return checkSandbox(sandboxIf, interfaceIPs(res, idx))
	}); err != nil {
		return fmt.Errorf("check sandbox netns %s: %w", args.Netns, err)
	}
	var host hostLink
	if conf.chained() {
		p, err := findPeer(netns, k.IfName)
		if err != nil {
			return err
		}
		host = p.host
	} else {
		host.Name = HostVethName(k)
		if err := checkHost(host.Name, res); err != nil {
			return err
		}
	}

	ctx, cancel := call()
	defer cancel()
	st, err := dial(conf.DaemonSocket).Get(ctx, k)
	switch {
	case errors.Is(err, api.ErrUnavailable):
		return unreachable(conf.DaemonSocket, err)
	case errors.Is(err, api.ErrNotFound):
		return fmt.Errorf("sandbox %s is not registered with paddockd at %s: DEL and ADD it again", k, conf.DaemonSocket)
	case err != nil:
		return fmt.Errorf("get sandbox %s from paddockd: %w", k, err)
	}
	if conf.chained() && (st.HostVeth != host.Name || st.HostIfIndex != host.Index) {
		return fmt.Errorf("sandbox %s is registered on %s (ifindex %d) but its interface's node end is now %s (ifindex %d): DEL and ADD it again",
			k, st.HostVeth, st.HostIfIndex, host.Name, host.Index)
	}
	// An empty Enforced means no enforcer reports on this sandbox yet.
	if st.Enforced != "ok" && st.Enforced != "" {
		return fmt.Errorf("sandbox %s is not enforced: %s", k, st.Enforced)
	}
	return nil
}

// Status is CNI STATUS: ready when paddockd answers and says it is ready,
// and the IPAM plugin is ready too.
func Status(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := call()
	defer cancel()
	st, err := dial(conf.DaemonSocket).Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("paddockd is not reachable at %s: start paddockd (systemctl start paddockd)", conf.DaemonSocket), err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("paddockd at %s is not ready: %s", conf.DaemonSocket, st.Message), "")
	}
	if conf.chained() {
		return nil
	}
	if err := ipam.ExecStatus(conf.IPAM.Type, args.StdinData); err != nil {
		return fmt.Errorf("ipam %s status: %w", conf.IPAM.Type, err)
	}
	return nil
}

// GC is CNI GC: it removes every host veth, registration and IPAM lease of
// this network whose attachment is not in cni.dev/valid-attachments;
// chained, only registrations (the primary's GC handles the rest).
//
// The spec makes that key mandatory and gives no meaning to its absence
// (cnitool omits it). Reading a missing list as "nothing is valid" would
// tear down every running sandbox and hand their addresses out again, so a
// GC without the key removes nothing and succeeds: cnitool, which DELs its
// cached attachments itself and then sends GC without the key, keeps working.
func GC(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.validAttachments == nil {
		return nil
	}
	valid := make(map[api.Key]bool, len(conf.validAttachments))
	req := api.GCRequest{Network: conf.Name, Valid: []api.Attachment{}}
	for _, a := range conf.validAttachments {
		valid[api.Key{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName}] = true
		req.Valid = append(req.Valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}

	var errs []error
	ctx, cancel := call()
	resp, err := dial(conf.DaemonSocket).GC(ctx, req)
	cancel()
	if err != nil {
		errs = append(errs, fmt.Errorf("gc registrations in paddockd at %s: %w", conf.DaemonSocket, err))
	}
	if conf.chained() {
		return errors.Join(errs...)
	}
	stale := make(map[string]bool)
	owned, err := ownedVeths(conf.Name)
	if err != nil {
		errs = append(errs, err)
	}
	for k, name := range owned {
		if !valid[k] {
			stale[name] = true
		}
	}
	for _, k := range resp.Removed {
		if k.Network == conf.Name && !valid[k] {
			stale[HostVethName(k)] = true
		}
	}
	for name := range stale {
		if err := deleteHostVeth(name); err != nil {
			errs = append(errs, fmt.Errorf("delete stale host veth: %w", err))
		}
	}
	ipamConf, err := withValidAttachments(args.StdinData, conf.validAttachments)
	if err != nil {
		errs = append(errs, err)
	} else if err := invoke.DelegateGC(context.Background(), conf.IPAM.Type, ipamConf, nil); err != nil {
		errs = append(errs, fmt.Errorf("ipam %s gc: %w", conf.IPAM.Type, err))
	}
	return errors.Join(errs...)
}

// withValidAttachments returns stdin with cni.dev/valid-attachments set to
// valid, so the IPAM plugin sees the list under the key it reads even when
// the runtime used only the old alias.
func withValidAttachments(stdin []byte, valid []types.GCAttachment) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(stdin, &m); err != nil {
		return nil, fmt.Errorf("re-encode configuration for ipam gc: %w", err)
	}
	m["cni.dev/valid-attachments"] = valid
	return json.Marshal(m)
}
