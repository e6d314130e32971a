package enforcer

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// FirewallConfig configures table inet paddock.
type FirewallConfig struct {
	Mode RedirectMode
	// NFLOGGroup is the group paddockd reads; TapGroup (0 = none) is a
	// second group every drop is also logged to, for `tcpdump -i nflog:N`.
	NFLOGGroup, TapGroup uint16
	// TCPListen and DNSListen are the transparent listeners TPROXY hands
	// packets to (nftables mode only).
	TCPListen, DNSListen netip.AddrPort
	Logger               *slog.Logger
	Metrics              prometheus.Registerer
}

// Firewall owns table inet paddock: the default-deny second layer behind
// the BPF redirect (mode bpf), or the whole redirect (mode nftables).
type Firewall struct {
	cfg FirewallConfig
	log *slog.Logger

	mu   sync.Mutex
	conn *nftables.Conn
	rs   *ruleset
	sbs  map[api.Key]sandboxElems
	// inherited holds set keys found in the table a previous paddockd
	// left, by set name: they stay enforced until Sync says otherwise, so
	// a restart never opens a window with empty sets.
	inherited map[string][][]byte
	want      int // rule count of a complete table
	health    string
	deleted   bool

	restores prometheus.Counter
}

// NewFirewall creates (or replaces) table inet paddock in one batch. Other
// tables are left alone.
func NewFirewall(cfg FirewallConfig) (*Firewall, error) {
	switch cfg.Mode {
	case RedirectBPF:
	case RedirectNftables:
		for name, ap := range map[string]netip.AddrPort{"tcp": cfg.TCPListen, "dns": cfg.DNSListen} {
			if !ap.IsValid() || ap.Port() == 0 || !ap.Addr().Unmap().Is4() {
				return nil, fmt.Errorf("nftables mode needs an IPv4 %s listener address with a port, got %q", name, ap.String())
			}
		}
	default:
		return nil, fmt.Errorf("unknown redirect mode %q: use %q or %q", cfg.Mode, RedirectBPF, RedirectNftables)
	}
	if cfg.NFLOGGroup == 0 {
		return nil, fmt.Errorf("nflog group 0 is reserved: pick a group for drop logs")
	}
	if cfg.NFLOGGroup == cfg.TapGroup {
		return nil, fmt.Errorf("tap group %d equals the nflog group: a group has one reader, pick another", cfg.TapGroup)
	}
	cfg.TCPListen = netip.AddrPortFrom(cfg.TCPListen.Addr().Unmap(), cfg.TCPListen.Port())
	cfg.DNSListen = netip.AddrPortFrom(cfg.DNSListen.Addr().Unmap(), cfg.DNSListen.Port())
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// A lasting connection stays in the network namespace it was opened
	// in, whichever thread later uses it.
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	f := &Firewall{cfg: cfg, log: cfg.Logger, conn: conn, sbs: map[api.Key]sandboxElems{}}
	f.inherited = f.readOldSets()
	f.restores = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "paddock_nft_restores_total",
		Help: "Times table inet paddock was found missing or altered and restored.",
	})
	// Metrics first: a failure here must not leave the node with the old
	// table deleted and no new one.
	var registered []prometheus.Collector
	unregister := func() {
		for _, c := range registered {
			cfg.Metrics.Unregister(c)
		}
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{f.restores, dropCounters{f}} {
			if err := cfg.Metrics.Register(c); err != nil {
				unregister()
				conn.CloseLasting()
				return nil, fmt.Errorf("register nftables metrics: %w", err)
			}
			registered = append(registered, c)
		}
	}
	if err := f.restore(); err != nil {
		unregister()
		conn.CloseLasting()
		return nil, err
	}
	return f, nil
}

// readOldSets returns the element keys of the sets of an existing table
// paddock (none if there is no such table).
func (f *Firewall) readOldSets() map[string][][]byte {
	out := map[string][][]byte{}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: nftTable}
	names := []string{setIfs}
	if f.cfg.Mode == RedirectNftables {
		names = append(names, setSrc, setMAC)
	}
	for _, name := range names {
		s, err := f.conn.GetSetByName(t, name)
		if err != nil {
			continue
		}
		elems, err := f.conn.GetSetElements(s)
		if err != nil {
			continue
		}
		for _, e := range elems {
			out[name] = append(out[name], e.Key)
		}
	}
	return out
}

// dropInherited forgets inherited keys of ifname (all sets start their
// keys with the interface name) and queues their deletion.
func (f *Firewall) dropInherited(ifname string) error {
	prefix := ifnameKey(ifname)
	for _, s := range []*nftables.Set{f.rs.ifs, f.rs.src, f.rs.mac} {
		if s == nil {
			continue
		}
		var keep [][]byte
		for _, k := range f.inherited[s.Name] {
			if !bytes.HasPrefix(k, prefix) {
				keep = append(keep, k)
				continue
			}
			if err := f.conn.SetDeleteElements(s, []nftables.SetElement{{Key: k}}); err != nil {
				return fmt.Errorf("delete from %s: %w", s.Name, err)
			}
		}
		f.inherited[s.Name] = keep
	}
	return nil
}

// restore writes the whole table and every known sandbox in one
// transaction. Callers hold f.mu (or own f exclusively).
func (f *Firewall) restore() error {
	rs, err := f.build(f.conn)
	if err != nil {
		return err
	}
	var ifs, src, mac []nftables.SetElement
	for _, e := range f.sbs {
		ifs = append(ifs, nftables.SetElement{Key: ifnameKey(e.ifname)})
		if f.cfg.Mode == RedirectNftables {
			src = append(src, nftables.SetElement{Key: e.srcKey()})
			mac = append(mac, nftables.SetElement{Key: e.macKey()})
		}
	}
	for _, k := range f.inherited[setIfs] {
		ifs = append(ifs, nftables.SetElement{Key: k})
	}
	for _, k := range f.inherited[setSrc] {
		src = append(src, nftables.SetElement{Key: k})
	}
	for _, k := range f.inherited[setMAC] {
		mac = append(mac, nftables.SetElement{Key: k})
	}
	if err := f.addElems(rs, ifs, src, mac); err != nil {
		return err
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("apply table inet %s: %w", nftTable, err)
	}
	f.rs = rs
	n, err := f.ruleCount()
	if err != nil {
		return err
	}
	f.want = n
	f.health = "ok"
	return nil
}

func (f *Firewall) addElems(rs *ruleset, ifs, src, mac []nftables.SetElement) error {
	for _, x := range []struct {
		s *nftables.Set
		e []nftables.SetElement
	}{{rs.ifs, ifs}, {rs.src, src}, {rs.mac, mac}} {
		if x.s == nil || len(x.e) == 0 {
			continue
		}
		if err := f.conn.SetAddElements(x.s, x.e); err != nil {
			return fmt.Errorf("add elements to %s: %w", x.s.Name, err)
		}
	}
	return nil
}

func (f *Firewall) delElems(rs *ruleset, e sandboxElems) error {
	if err := f.conn.SetDeleteElements(rs.ifs, []nftables.SetElement{{Key: ifnameKey(e.ifname)}}); err != nil {
		return fmt.Errorf("delete from %s: %w", setIfs, err)
	}
	if f.cfg.Mode == RedirectNftables {
		if err := f.conn.SetDeleteElements(rs.src, []nftables.SetElement{{Key: e.srcKey()}}); err != nil {
			return fmt.Errorf("delete from %s: %w", setSrc, err)
		}
		if err := f.conn.SetDeleteElements(rs.mac, []nftables.SetElement{{Key: e.macKey()}}); err != nil {
			return fmt.Errorf("delete from %s: %w", setMAC, err)
		}
	}
	return nil
}

// elemsFor validates sb and returns what it puts into the sets.
func (f *Firewall) elemsFor(sb api.Sandbox) (sandboxElems, error) {
	if err := sb.Key().Validate(); err != nil {
		return sandboxElems{}, fmt.Errorf("sandbox: %w", err)
	}
	if err := validIfName(sb.HostVeth); err != nil {
		return sandboxElems{}, fmt.Errorf("sandbox %s: %w", sb.ShortID(), err)
	}
	e := sandboxElems{ifname: sb.HostVeth}
	if f.cfg.Mode != RedirectNftables {
		return e, nil
	}
	ip, ok := sb.IPv4()
	if !ok {
		return sandboxElems{}, fmt.Errorf("sandbox %s has no IPv4 address (ips %v): nftables mode pins each sandbox to its IPv4 source", sb.ShortID(), sb.IPs)
	}
	e.src = ip
	mac, err := net.ParseMAC(sb.SandboxMAC)
	if err != nil || len(mac) != 6 {
		return sandboxElems{}, fmt.Errorf("sandbox %s: sandbox MAC %q is not an Ethernet address: nftables mode pins each sandbox to its MAC", sb.ShortID(), sb.SandboxMAC)
	}
	e.mac = mac
	return e, nil
}

func sameElems(a, b sandboxElems) bool {
	return a.ifname == b.ifname && a.src == b.src && bytes.Equal(a.mac, b.mac)
}

// AddSandbox puts sb's host veth (and in nftables mode its address and
// MAC) into the sets, in one batch. Adding twice is fine.
func (f *Firewall) AddSandbox(sb api.Sandbox) error {
	e, err := f.elemsFor(sb)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleted {
		return errors.New("nftables firewall was deleted")
	}
	key := sb.Key()
	if old, ok := f.sbs[key]; ok && sameElems(old, e) {
		return nil
	}
	// A host veth name belongs to one sandbox at a time: an older entry
	// with the same name is stale.
	var stale []api.Key
	for k, old := range f.sbs {
		if k == key || old.ifname == e.ifname {
			if err := f.delElems(f.rs, old); err != nil {
				return err
			}
			stale = append(stale, k)
		}
	}
	inherited := f.inherited
	f.inherited = cloneInherited(inherited)
	if err := f.dropInherited(e.ifname); err != nil {
		f.inherited = inherited
		return err
	}
	var src, mac []nftables.SetElement
	if f.cfg.Mode == RedirectNftables {
		src = []nftables.SetElement{{Key: e.srcKey()}}
		mac = []nftables.SetElement{{Key: e.macKey()}}
	}
	if err := f.addElems(f.rs, []nftables.SetElement{{Key: ifnameKey(e.ifname)}}, src, mac); err != nil {
		f.inherited = inherited
		return err
	}
	if err := f.conn.Flush(); err != nil {
		f.inherited = inherited
		return fmt.Errorf("add sandbox %s (%s) to nftables sets: %w", sb.ShortID(), e.ifname, err)
	}
	for _, k := range stale {
		delete(f.sbs, k)
	}
	f.sbs[key] = e
	return nil
}

// RemoveSandbox takes sb out of the sets. An unknown sandbox is not an error.
func (f *Firewall) RemoveSandbox(sb api.Sandbox) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleted {
		return nil
	}
	old, ok := f.sbs[sb.Key()]
	if !ok {
		return f.removeInherited(sb)
	}
	if err := f.delElems(f.rs, old); err != nil {
		return err
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("remove sandbox %s (%s) from nftables sets: %w", sb.ShortID(), old.ifname, err)
	}
	delete(f.sbs, sb.Key())
	return nil
}

// removeInherited drops what a previous paddockd put in the sets for
// sb's host veth, when sb is removed before the first Sync.
func (f *Firewall) removeInherited(sb api.Sandbox) error {
	if validIfName(sb.HostVeth) != nil {
		return nil
	}
	inherited := f.inherited
	f.inherited = cloneInherited(inherited)
	if err := f.dropInherited(sb.HostVeth); err != nil {
		f.inherited = inherited
		return err
	}
	if err := f.conn.Flush(); err != nil {
		f.inherited = inherited
		return fmt.Errorf("remove sandbox %s (%s) from nftables sets: %w", sb.ShortID(), sb.HostVeth, err)
	}
	return nil
}

// CheckSandbox reports whether the kernel's sets hold sb's elements.
func (f *Firewall) CheckSandbox(sb api.Sandbox) error {
	want, err := f.elemsFor(sb)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.health != "ok" {
		return fmt.Errorf("nftables: %s", f.health)
	}
	checks := []struct {
		set string
		key []byte
	}{{setIfs, ifnameKey(want.ifname)}}
	if f.cfg.Mode == RedirectNftables {
		checks = append(checks, struct {
			set string
			key []byte
		}{setSrc, want.srcKey()}, struct {
			set string
			key []byte
		}{setMAC, want.macKey()})
	}
	for _, c := range checks {
		s, err := f.conn.GetSetByName(f.rs.table, c.set)
		if err != nil {
			return fmt.Errorf("nftables set %s: %w", c.set, err)
		}
		elems, err := f.conn.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("list nftables set %s: %w", c.set, err)
		}
		found := false
		for _, el := range elems {
			if bytes.Equal(el.Key, c.key) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("sandbox %s (%s) is missing from nftables set %s", sb.ShortID(), want.ifname, c.set)
		}
	}
	return nil
}

// Sync makes the set contents exactly sbs, in one transaction. Sandboxes
// that fail validation are left out and reported; the others are applied.
func (f *Firewall) Sync(sbs []api.Sandbox) error {
	next := map[api.Key]sandboxElems{}
	byIf := map[string]api.Key{}
	var errs []error
	for _, sb := range sbs {
		e, err := f.elemsFor(sb)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if k, dup := byIf[e.ifname]; dup {
			errs = append(errs, fmt.Errorf("sandboxes %s and %s both claim host veth %q: keeping the first", k, sb.Key(), e.ifname))
			continue
		}
		byIf[e.ifname] = sb.Key()
		next[sb.Key()] = e
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleted {
		return errors.New("nftables firewall was deleted")
	}
	for _, s := range []*nftables.Set{f.rs.ifs, f.rs.src, f.rs.mac} {
		if s != nil {
			f.conn.FlushSet(s)
		}
	}
	var ifs, src, mac []nftables.SetElement
	for _, e := range next {
		ifs = append(ifs, nftables.SetElement{Key: ifnameKey(e.ifname)})
		if f.cfg.Mode == RedirectNftables {
			src = append(src, nftables.SetElement{Key: e.srcKey()})
			mac = append(mac, nftables.SetElement{Key: e.macKey()})
		}
	}
	if err := f.addElems(f.rs, ifs, src, mac); err != nil {
		return err
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("sync nftables sets: %w", err)
	}
	f.sbs = next
	f.inherited = map[string][][]byte{}
	return errors.Join(errs...)
}

// Health is "ok" or what is wrong with the table.
func (f *Firewall) Health() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.health
}

// Delete removes table inet paddock (uninstall, tests) and stops Watch
// from restoring it.
func (f *Firewall) Delete() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = true
	f.health = "deleted"
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: nftTable}
	f.conn.AddTable(t)
	f.conn.DelTable(t)
	err := f.conn.Flush()
	f.conn.CloseLasting()
	if err != nil {
		return fmt.Errorf("delete table inet %s: %w", nftTable, err)
	}
	return nil
}

// RuleCount is the number of rules in table inet paddock.
func (f *Firewall) RuleCount() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ruleCount()
}

func (f *Firewall) ruleCount() (int, error) {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: nftTable}
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return 0, fmt.Errorf("list nftables chains: %w", err)
	}
	n := 0
	for _, c := range chains {
		if c.Table.Name != nftTable {
			continue
		}
		rules, err := f.conn.GetRules(t, c)
		if err != nil {
			return 0, fmt.Errorf("list rules of chain %s: %w", c.Name, err)
		}
		n += len(rules)
	}
	return n, nil
}

// Ruleset is `nft -s list table inet paddock` (no counter values), with
// one-line element lists sorted, for golden tests and debugging. It runs
// the nft CLI, which must be installed, in the process's network namespace.
func (f *Firewall) Ruleset() (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command("nft", "-s", "list", "table", "inet", nftTable)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("nft list table inet %s: %w: %s", nftTable, err, strings.TrimSpace(errb.String()))
	}
	return normaliseRuleset(out.String()), nil
}

// normaliseRuleset sorts one-line element lists so the text does not
// depend on hash order.
func normaliseRuleset(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if !strings.HasPrefix(t, "elements = {") || !strings.HasSuffix(t, "}") {
			continue
		}
		body := strings.TrimSuffix(strings.TrimPrefix(t, "elements = {"), "}")
		parts := strings.Split(body, ",")
		for j := range parts {
			parts[j] = strings.TrimSpace(parts[j])
		}
		sort.Strings(parts)
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		lines[i] = indent + "elements = { " + strings.Join(parts, ", ") + " }"
	}
	return strings.Join(lines, "\n")
}

func cloneInherited(m map[string][][]byte) map[string][][]byte {
	out := make(map[string][][]byte, len(m))
	for k, v := range m {
		out[k] = append([][]byte(nil), v...)
	}
	return out
}
