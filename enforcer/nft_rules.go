package enforcer

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside table inet paddock. Operators see them in `nft list table
// inet paddock`, so they say what they hold.
const (
	nftTable       = "paddock"
	setIfs         = "sandbox_ifs"
	setSrc         = "sandbox_src"
	setMAC         = "sandbox_mac"
	mapDenyMarks   = "deny_marks"
	chainPre       = "prerouting"
	chainInput     = "input"
	chainForward   = "forward"
	chainSbPre     = "sandbox_prerouting"
	chainSbInput   = "sandbox_input"
	dropChainPfx   = "drop_"
	logRate        = 50  // log lines per second per reason; drops are always counted
	logBurst       = 100 // packets logged in a burst before the rate applies
	ifNameLen      = unix.IFNAMSIZ
	objTypeCounter = unix.NFT_OBJECT_COUNTER
)

// priorityPrerouting runs after conntrack (-200) so that tproxy sees
// conntrack state, and before routing.
var priorityPrerouting = nftables.ChainPriorityMangle

// nftName turns a reason into a chain/counter name (nft identifiers cannot
// hold every character a reason name may carry).
func nftName(r Reason) string { return strings.ReplaceAll(r.String(), "-", "_") }

func dropChain(r Reason) string { return dropChainPfx + nftName(r) }

// ifnameKey is the set key nft uses for type ifname: the name, NUL-padded.
func ifnameKey(name string) []byte {
	b := make([]byte, ifNameLen)
	copy(b, name)
	return b
}

// validIfName checks what the kernel would refuse later, so that a bad
// sandbox fails before anything is sent.
func validIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("host veth name is empty: the CNI plugin must report the node-side interface")
	case len(name) >= ifNameLen:
		return fmt.Errorf("host veth name %q is longer than %d bytes", name, ifNameLen-1)
	case strings.ContainsAny(name, "/ \x00"):
		return fmt.Errorf("host veth name %q contains '/', space or NUL", name)
	}
	return nil
}

// ruleset holds the objects of one table build; sets are needed again
// to add elements in the same batch.
type ruleset struct {
	table *nftables.Table
	ifs   *nftables.Set
	src   *nftables.Set
	mac   *nftables.Set
}

// build queues the whole table on c: delete any old copy, then create
// everything. The caller flushes once, so the kernel applies all or nothing.
func (f *Firewall) build(c *nftables.Conn) (*ruleset, error) {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: nftTable}
	// Adding before deleting makes the delete valid whether or not the
	// table exists; the kernel applies both in the same transaction.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	rs := &ruleset{table: t}

	// nft stores ifname keys in host byte order; saying so lets `nft
	// list` print the names instead of empty strings.
	rs.ifs = &nftables.Set{Table: t, Name: setIfs, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	if err := c.AddSet(rs.ifs, nil); err != nil {
		return nil, fmt.Errorf("add set %s: %w", setIfs, err)
	}
	if f.cfg.Mode == RedirectNftables {
		srcType, err := nftables.ConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)
		if err != nil {
			return nil, err
		}
		rs.src = &nftables.Set{Table: t, Name: setSrc, KeyType: srcType, Concatenation: true}
		if err := c.AddSet(rs.src, nil); err != nil {
			return nil, fmt.Errorf("add set %s: %w", setSrc, err)
		}
		macType, err := nftables.ConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr)
		if err != nil {
			return nil, err
		}
		rs.mac = &nftables.Set{Table: t, Name: setMAC, KeyType: macType, Concatenation: true}
		if err := c.AddSet(rs.mac, nil); err != nil {
			return nil, fmt.Errorf("add set %s: %w", setMAC, err)
		}
	}

	// One counter, one log-and-drop chain per reason: the rule count is
	// fixed by the reason list, never by the number of sandboxes.
	for _, r := range Reasons() {
		c.AddObj(&nftables.CounterObj{Table: t, Name: nftName(r)})
		ch := c.AddChain(&nftables.Chain{Name: dropChain(r), Table: t})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Objref{Type: objTypeCounter, Name: nftName(r)},
		}})
		// limit and log in one rule, the drop in the next: a limit that
		// is over its rate ends the rule, and must not end the drop.
		logs := []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: logRate, Unit: expr.LimitTimeSecond, Burst: logBurst}}
		for _, g := range []uint16{f.cfg.NFLOGGroup, f.cfg.TapGroup} {
			if g == 0 {
				continue
			}
			logs = append(logs, &expr.Log{
				Key:   1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX,
				Group: g,
				Data:  []byte(NFLOGPrefix(r)),
			})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: logs})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{verdict(expr.VerdictDrop, "")}})
	}

	if f.cfg.Mode == RedirectBPF {
		if err := f.buildBPFPrerouting(c, rs); err != nil {
			return nil, err
		}
	} else {
		f.buildNftPrerouting(c, rs)
	}

	// prerouting: only sandbox interfaces are examined; the node's own
	// traffic passes untouched (policy accept).
	pre := c.AddChain(&nftables.Chain{Name: chainPre, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: priorityPrerouting, Policy: policy(nftables.ChainPolicyAccept)})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: append(iifIn(rs.ifs), verdict(expr.VerdictJump, chainSbPre))})

	// input: the only sandbox packets the node itself may receive are the
	// ones handed to a local listener.
	sbIn := c.AddChain(&nftables.Chain{Name: chainSbInput, Table: t})
	c.AddRule(&nftables.Rule{Table: t, Chain: sbIn, Exprs: append(markIs(MarkRedirect), verdict(expr.VerdictAccept, ""))})
	c.AddRule(&nftables.Rule{Table: t, Chain: sbIn, Exprs: []expr.Any{verdict(expr.VerdictGoto, dropChain(ReasonUnmarked))}})
	in := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: policy(nftables.ChainPolicyAccept)})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: append(iifIn(rs.ifs), verdict(expr.VerdictJump, chainSbInput))})

	// forward: nothing from a sandbox is ever forwarded. A redirect mark
	// here means the listener or the policy route is missing.
	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: policy(nftables.ChainPolicyAccept)})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(iifIn(rs.ifs), markIs(MarkRedirect), []expr.Any{verdict(expr.VerdictGoto, dropChain(ReasonNoListener))})})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(iifIn(rs.ifs), verdict(expr.VerdictGoto, dropChain(ReasonUnmarked)))})
	// Nothing unsolicited into a sandbox.
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(oifIn(rs.ifs), ctStateNew(), []expr.Any{&expr.Counter{}, verdict(expr.VerdictDrop, "")})})
	return rs, nil
}

// buildBPFPrerouting: the tcx program has classified every packet by its
// mark; nft enforces that classification and drops what it did not claim.
func (f *Firewall) buildBPFPrerouting(c *nftables.Conn, rs *ruleset) error {
	t := rs.table
	vmap := &nftables.Set{Table: t, Name: mapDenyMarks, IsMap: true, KeyType: nftables.TypeMark, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
	var elems []nftables.SetElement
	for _, r := range Reasons() {
		elems = append(elems, nftables.SetElement{
			Key:         binaryutil.NativeEndian.PutUint32(MarkDenyBase | uint32(r)),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: dropChain(r)},
		})
	}
	if err := c.AddSet(vmap, elems); err != nil {
		return fmt.Errorf("add map %s: %w", mapDenyMarks, err)
	}
	ch := c.AddChain(&nftables.Chain{Name: chainSbPre, Table: t})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(markIs(MarkRedirect), verdict(expr.VerdictAccept, ""))})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: vmap.Name, SetID: vmap.ID},
	}})
	// A deny mark with a reason this build does not know still drops.
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkDenyMask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(MarkDenyBase)},
		verdict(expr.VerdictGoto, dropChain(ReasonUnknown)),
	}})
	// Unmarked: the BPF program is missing or let a packet through.
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{verdict(expr.VerdictGoto, dropChain(ReasonUnmarked))}})
	return nil
}

// buildNftPrerouting is the fallback without BPF: nft classifies and
// redirects with TPROXY itself.
func (f *Firewall) buildNftPrerouting(c *nftables.Conn, rs *ruleset) {
	t := rs.table
	ch := c.AddChain(&nftables.Chain{Name: chainSbPre, Table: t})
	add := func(e ...[]expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: concat(e...)}) }
	gotoDrop := func(r Reason) []expr.Any { return []expr.Any{verdict(expr.VerdictGoto, dropChain(r))} }

	// iifname . ether saddr != @sandbox_mac (the iiftype match lets nft
	// print the payload as "ether saddr"; sandbox ifs are all Ethernet)
	add([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint16(unix.ARPHRD_ETHER)},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: unix.NFT_REG32_00},
		&expr.Payload{DestRegister: unix.NFT_REG32_04, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: rs.mac.Name, SetID: rs.mac.ID, Invert: true},
	}, gotoDrop(ReasonSpoofMAC))
	add(nfproto(unix.NFPROTO_IPV6), gotoDrop(ReasonIPv6))
	// iifname . ip saddr != @sandbox_src
	add(nfproto(unix.NFPROTO_IPV4), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: unix.NFT_REG32_00},
		&expr.Payload{DestRegister: unix.NFT_REG32_04, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: rs.src.Name, SetID: rs.src.ID, Invert: true},
	}, gotoDrop(ReasonSpoofIP))
	// ip frag-off & 0x3fff != 0: no ports to classify by.
	add(nfproto(unix.NFPROTO_IPV4), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 6, Len: 2},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 2, Mask: []byte{0x3f, 0xff}, Xor: []byte{0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0}},
	}, gotoDrop(ReasonFragment))
	// Anything not IPv4 (ARP never reaches the inet family).
	add([]expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}, gotoDrop(ReasonProto))
	// DNS over UDP and TCP, then every other TCP connection. tproxy does
	// nothing when no transparent socket matches; the no-listener drops
	// right after are what keeps that from becoming a forwarded leak.
	add(l4proto(unix.IPPROTO_UDP), dport(53), tproxy(f.cfg.DNSListen))
	add(l4proto(unix.IPPROTO_TCP), dport(53), tproxy(f.cfg.DNSListen))
	add(l4proto(unix.IPPROTO_TCP), dport(53), gotoDrop(ReasonNoListener))
	add(l4proto(unix.IPPROTO_UDP), dport(53), gotoDrop(ReasonNoListener))
	add(l4proto(unix.IPPROTO_TCP), tproxy(f.cfg.TCPListen))
	add(l4proto(unix.IPPROTO_TCP), gotoDrop(ReasonNoListener))
	add(l4proto(unix.IPPROTO_UDP), gotoDrop(ReasonUDP))
	add(l4proto(unix.IPPROTO_ICMP), gotoDrop(ReasonICMP))
	add(gotoDrop(ReasonProto))
}

// tproxy is `tproxy ip to ADDR:PORT meta mark set MarkRedirect accept`.
// An unspecified address means "the incoming interface's address".
func tproxy(ap netip.AddrPort) []expr.Any {
	e := []expr.Any{&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ap.Port())}}
	tp := &expr.TProxy{Family: unix.NFPROTO_IPV4, TableFamily: unix.NFPROTO_INET, RegPort: 2}
	if a := ap.Addr(); a.IsValid() && !a.IsUnspecified() {
		a4 := a.As4()
		e = append(e, &expr.Immediate{Register: 1, Data: a4[:]})
		tp.RegAddr = 1
	}
	return append(e, tp,
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(MarkRedirect)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		verdict(expr.VerdictAccept, ""))
}

func iifIn(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

func oifIn(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

func markIs(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(m)},
	}
}

func nfproto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// dport matches the destination port of TCP or UDP (same offset in both).
func dport(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
	}
}

func ctStateNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func verdict(k expr.VerdictKind, chain string) *expr.Verdict {
	return &expr.Verdict{Kind: k, Chain: chain}
}

func policy(p nftables.ChainPolicy) *nftables.ChainPolicy { return &p }

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// sandboxElems are the set elements one sandbox contributes.
type sandboxElems struct {
	ifname string
	src    netip.Addr // nftables mode only
	mac    net.HardwareAddr
}

func (e sandboxElems) srcKey() []byte {
	a := e.src.As4()
	return append(ifnameKey(e.ifname), a[:]...)
}

func (e sandboxElems) macKey() []byte {
	// ether_addr is padded to 8 bytes inside a concatenation.
	k := append(ifnameKey(e.ifname), e.mac...)
	return append(k, 0, 0)
}
