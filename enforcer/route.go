package enforcer

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Policy routing in paddockd's netns. Redirected packets (MarkRedirect) must
// be routed local or the kernel drops them silently; deny-marked packets are
// blackholed by a rule of their own, so they are not forwarded even when the
// nftables table has been deleted.
const blackholePriority = RulePriority + 1

var allIPv4 = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}

func redirectRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	r.Priority = RulePriority
	r.Mark = MarkRedirect
	mask := uint32(0xffffffff)
	r.Mask = &mask
	r.Table = RouteTable
	return r
}

func blackholeRule() *netlink.Rule { return blackholeRuleFamily(unix.AF_INET) }

// blackholeRule6 matters as much as the IPv4 one: the tcx program
// deny-marks every IPv6 packet, and without this rule they would be
// forwarded whenever the nftables table is gone.
func blackholeRule6() *netlink.Rule { return blackholeRuleFamily(unix.AF_INET6) }

func blackholeRuleFamily(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Priority = blackholePriority
	r.Mark = MarkDenyBase
	mask := MarkDenyMask
	r.Mask = &mask
	r.Type = unix.RTN_BLACKHOLE
	return r
}

func localRoute() (*netlink.Route, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	return &netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       allIPv4,
		Table:     RouteTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
	}, nil
}

// sameRule compares what RuleList reports; it does not report the rule's
// action, but a blackhole rule is the only kind with table 0.
func sameRule(a netlink.Rule, b *netlink.Rule) bool {
	return a.Priority == b.Priority && a.Mark == b.Mark && a.Mask != nil && b.Mask != nil &&
		*a.Mask == *b.Mask && a.Table == b.Table
}

func ruleMissing(want *netlink.Rule) (bool, error) {
	rules, err := netlink.RuleList(want.Family)
	if err != nil {
		return false, fmt.Errorf("list ip rules: %w", err)
	}
	for _, r := range rules {
		if sameRule(r, want) {
			return false, nil
		}
	}
	return true, nil
}

func routeMissing(want *netlink.Route) (bool, error) {
	routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, fmt.Errorf("list routes of table %d: %w", RouteTable, err)
	}
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL && r.LinkIndex == want.LinkIndex && (r.Dst == nil || r.Dst.String() == allIPv4.String()) {
			return false, nil
		}
	}
	return true, nil
}

// ensureRoutes installs the redirect rule, the local route and the deny
// blackhole rule where missing. Running it again changes nothing.
func ensureRoutes() error {
	return forMissingRouting(func(rt *netlink.Route) error {
		if err := netlink.RouteReplace(rt); err != nil {
			return fmt.Errorf("add local 0.0.0.0/0 dev lo table %d: %w", RouteTable, err)
		}
		return nil
	}, func(r *netlink.Rule) error {
		if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add ip rule %s: %w", describeRule(r), err)
		}
		return nil
	})
}

// checkRoutes says which part of the policy routing is missing.
func checkRoutes() error {
	return forMissingRouting(func(*netlink.Route) error {
		return fmt.Errorf("route local 0.0.0.0/0 dev lo table %d is missing", RouteTable)
	}, func(r *netlink.Rule) error {
		return fmt.Errorf("ip rule %s is missing", describeRule(r))
	})
}

// forMissingRouting calls onRoute if the local route is missing, then onRule
// for each missing policy rule, in that order, stopping at the first error:
// ensureRoutes and checkRoutes walk the same parts and differ only in what
// they do about a gap.
func forMissingRouting(onRoute func(*netlink.Route) error, onRule func(*netlink.Rule) error) error {
	rt, err := localRoute()
	if err != nil {
		return err
	}
	if missing, err := routeMissing(rt); err != nil {
		return err
	} else if missing {
		if err := onRoute(rt); err != nil {
			return err
		}
	}
	for _, r := range []*netlink.Rule{redirectRule(), blackholeRule(), blackholeRule6()} {
		missing, err := ruleMissing(r)
		if err != nil {
			return err
		}
		if missing {
			if err := onRule(r); err != nil {
				return err
			}
		}
	}
	return nil
}

func describeRule(r *netlink.Rule) string {
	if r.Type == unix.RTN_BLACKHOLE {
		family := ""
		if r.Family == unix.AF_INET6 {
			family = "-6 "
		}
		return fmt.Sprintf("%spref %d fwmark %#x/%#x blackhole", family, r.Priority, r.Mark, *r.Mask)
	}
	return fmt.Sprintf("pref %d fwmark %#x lookup %d", r.Priority, r.Mark, r.Table)
}
