package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Nothing a sandbox sends is ever forwarded (redirected packets are routed
// local), so its host veth is closed to forwarding outside nftables too:
// while the table is missing (deleted, flushed, before the watcher restores
// it) nothing else would stop unmarked traffic from being routed out in
// nftables mode, or IPv6 whose deny mark no blackhole rule catches.

// noForwarding turns IPv4 forwarding off on veth and blackholes IPv6
// received on it (IPv6 has no per-interface forwarding switch). Packets for
// the node's own addresses still reach input: the local table comes first.
func noForwarding(veth string) error {
	p := filepath.Join("/proc/sys/net/ipv4/conf", veth, "forwarding")
	if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
		return fmt.Errorf("turn off ipv4 forwarding on %s: %w", veth, err)
	}
	if err := netlink.RuleAdd(vethBlackhole6(veth)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add ip -6 rule iif %s blackhole: %w", veth, err)
	}
	return nil
}

// allowForwarding removes what noForwarding added that outlives the veth's
// use by a sandbox; a rule already gone is fine.
func allowForwarding(veth string) error {
	if err := netlink.RuleDel(vethBlackhole6(veth)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete ip -6 rule iif %s blackhole: %w", veth, err)
	}
	return nil
}

func vethBlackhole6(veth string) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET6
	r.Priority = blackholePriority
	r.IifName = veth
	r.Type = unix.RTN_BLACKHOLE
	return r
}
