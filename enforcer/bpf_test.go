package enforcer

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/paddock-sandbox/paddock/bpf"
	"github.com/paddock-sandbox/paddock/plugin/api"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF, netns, transparent sockets); run as root to test the data path")
	}
}

func randSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// testBPF loads the program with its maps pinned in a private bpffs dir.
func testBPF(t *testing.T) *bpfRedirect {
	t.Helper()
	requireRoot(t)
	dir := filepath.Join(bpffsRoot, "paddock-test-"+randSuffix())
	b, err := loadBPF(dir)
	if err != nil {
		t.Fatalf("load bpf: %v", err)
	}
	t.Cleanup(func() {
		b.Close()
		os.RemoveAll(dir)
	})
	return b
}

// skBuff is struct __sk_buff up to and including ifindex, padded to the
// 192 bytes the kernel's test-run expects at most.
type skBuff struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
	_                                                                                                              [192 - 44]byte
}

var (
	testSbxIP  = netip.MustParseAddr("10.99.0.2")
	testGW     = netip.MustParseAddr("10.99.0.1")
	testSbxMAC = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}
	testGWMAC  = net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 1}
)

type frame struct {
	srcMAC  net.HardwareAddr
	src     netip.Addr
	dst     netip.Addr
	proto   byte
	sport   uint16
	dport   uint16
	syn     bool
	ack     bool
	fragOff uint16
}

func (f frame) bytes() []byte {
	eth := append(append(append([]byte{}, testGWMAC...), f.srcMAC...), 0x08, 0x00)
	var l4 []byte
	switch f.proto {
	case 6:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], f.sport)
		binary.BigEndian.PutUint16(l4[2:], f.dport)
		l4[12] = 5 << 4
		if f.syn {
			l4[13] |= 0x02
		}
		if f.ack {
			l4[13] |= 0x10
		}
	case 17:
		l4 = make([]byte, 8+12)
		binary.BigEndian.PutUint16(l4[0:], f.sport)
		binary.BigEndian.PutUint16(l4[2:], f.dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	default:
		l4 = []byte{8, 0, 0, 0, 0, 1, 0, 1} // ICMP echo request
	}
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[6:], f.fragOff)
	ip[8] = 64
	ip[9] = f.proto
	s, d := f.src.As4(), f.dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return append(append(eth, ip...), l4...)
}

func arpFrame(srcMAC net.HardwareAddr, spa, tpa netip.Addr) []byte {
	b := append(append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, srcMAC...), 0x08, 0x06)
	b = append(b, 0, 1, 8, 0, 6, 4, 0, 1)
	b = append(b, srcMAC...)
	s, d := spa.As4(), tpa.As4()
	b = append(b, s[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return append(b, d[:]...)
}

func ipv6Frame() []byte {
	b := append(append(append([]byte{}, testGWMAC...), testSbxMAC...), 0x86, 0xdd)
	ip := make([]byte, 40+8)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], 8)
	ip[6] = 17
	ip[7] = 64
	return append(b, ip...)
}

func runProg(t *testing.T, b *bpfRedirect, data []byte) (verdict uint32, mark uint32) {
	t.Helper()
	// Frames shorter than ETH_HLEN+IP header are refused by test-run; pad.
	for len(data) < 64 {
		data = append(data, 0)
	}
	var in, out skBuff
	ret, err := b.objs.PaddockIngress.Run(&ebpf.RunOptions{Data: data, Context: in, ContextOut: &out})
	if err != nil {
		t.Fatalf("test-run paddock_ingress: %v", err)
	}
	return ret, out.Mark
}

const (
	tcActOK   = 0
	tcActShot = 2
)

func TestConstantsMatch(t *testing.T) {
	if uint32(bpf.RedirectPaddockMarkPADDOCK_MARK_REDIRECT) != MarkRedirect {
		t.Errorf("C mark redirect %#x != Go %#x", bpf.RedirectPaddockMarkPADDOCK_MARK_REDIRECT, MarkRedirect)
	}
	if uint32(bpf.RedirectPaddockMarkPADDOCK_MARK_DENY_BASE) != MarkDenyBase {
		t.Errorf("C mark deny base %#x != Go %#x", bpf.RedirectPaddockMarkPADDOCK_MARK_DENY_BASE, MarkDenyBase)
	}
	pairs := map[bpf.RedirectPaddockReason]Reason{
		bpf.RedirectPaddockReasonPADDOCK_REASON_SPOOF_IP:    ReasonSpoofIP,
		bpf.RedirectPaddockReasonPADDOCK_REASON_SPOOF_MAC:   ReasonSpoofMAC,
		bpf.RedirectPaddockReasonPADDOCK_REASON_UDP:         ReasonUDP,
		bpf.RedirectPaddockReasonPADDOCK_REASON_ICMP:        ReasonICMP,
		bpf.RedirectPaddockReasonPADDOCK_REASON_IPV6:        ReasonIPv6,
		bpf.RedirectPaddockReasonPADDOCK_REASON_PROTO:       ReasonProto,
		bpf.RedirectPaddockReasonPADDOCK_REASON_ARP:         ReasonARP,
		bpf.RedirectPaddockReasonPADDOCK_REASON_NO_LISTENER: ReasonNoListener,
		bpf.RedirectPaddockReasonPADDOCK_REASON_UNMARKED:    ReasonUnmarked,
		bpf.RedirectPaddockReasonPADDOCK_REASON_FRAGMENT:    ReasonFragment,
		bpf.RedirectPaddockReasonPADDOCK_REASON_ETHERTYPE:   ReasonEtherType,
	}
	for c, g := range pairs {
		if uint32(c) != uint32(g) {
			t.Errorf("C reason %d != Go reason %s (%d)", c, g, g)
		}
	}
	if len(pairs) != len(Reasons())-1 { // Go's 0 is "unknown", C's 0 counts redirects
		t.Errorf("C mirrors %d reasons, Go has %d besides unknown: update bpf/redirect.c", len(pairs), len(Reasons())-1)
	}
}

func TestProgramClassifies(t *testing.T) {
	b := testBPF(t)
	const lo = 1 // test-run runs packets on lo unless told otherwise
	e, err := sandboxEntry(bpfTestSandbox("lo", lo))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.objs.PaddockSbx.Put(uint32(lo), &e); err != nil {
		t.Fatal(err)
	}
	ext := netip.MustParseAddr("192.0.2.77")
	syn := frame{srcMAC: testSbxMAC, src: testSbxIP, dst: ext, proto: 6, sport: 40000, dport: 443, syn: true}
	dnsUDP := frame{srcMAC: testSbxMAC, src: testSbxIP, dst: ext, proto: 17, sport: 40000, dport: 53}

	// Without listeners, what would be redirected is denied: fail closed.
	if v, m := runProg(t, b, syn.bytes()); v != tcActOK || m != MarkDenyBase|uint32(ReasonNoListener) {
		t.Errorf("SYN without listener: verdict %d mark %#x, want deny no-listener", v, m)
	}
	if v, m := runProg(t, b, dnsUDP.bytes()); v != tcActOK || m != MarkDenyBase|uint32(ReasonNoListener) {
		t.Errorf("DNS without listener: verdict %d mark %#x, want deny no-listener", v, m)
	}

	ls, err := listenTransparent(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	if err := b.setListener(slotTCP, ls.TCP); err != nil {
		t.Fatal(err)
	}
	if err := b.setListener(slotDNSUDP, ls.DNSUDP); err != nil {
		t.Fatal(err)
	}
	if err := b.setListener(slotDNSTCP, ls.DNSTCP); err != nil {
		t.Fatal(err)
	}
	if h := b.health(); h != "ok" {
		t.Fatalf("health with listeners: %s", h)
	}

	deny := func(r Reason) uint32 { return MarkDenyBase | uint32(r) }
	spoofIP := syn
	spoofIP.src = netip.MustParseAddr("10.99.0.3")
	spoofMAC := syn
	spoofMAC.srcMAC = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 9}
	ntp := dnsUDP
	ntp.dport = 123
	icmp := frame{srcMAC: testSbxMAC, src: testSbxIP, dst: ext, proto: 1}
	gre := frame{srcMAC: testSbxMAC, src: testSbxIP, dst: ext, proto: 47}
	frag := dnsUDP
	frag.fragOff = 0x2000 // more fragments
	ack := syn
	ack.syn, ack.ack = false, true

	cases := []struct {
		name    string
		data    []byte
		verdict uint32
		mark    uint32
	}{
		// Test-run is not tc ingress, so bpf_sk_assign refuses there
		// (EOPNOTSUPP) and the program fails closed; TestRedirectInNetns
		// proves the assignment on a real veth.
		{"tcp syn (sk_assign refused by test-run)", syn.bytes(), tcActOK, deny(ReasonNoListener)},
		{"dns udp (sk_assign refused by test-run)", dnsUDP.bytes(), tcActOK, deny(ReasonNoListener)},
		// A segment with no socket of its own goes to the listener too (a
		// SYN-cookie ACK has none); test-run refuses that assignment as well.
		{"tcp ack without connection (sk_assign refused by test-run)", ack.bytes(), tcActOK, deny(ReasonNoListener)},
		{"udp 123", ntp.bytes(), tcActOK, deny(ReasonUDP)},
		{"icmp", icmp.bytes(), tcActOK, deny(ReasonICMP)},
		{"gre", gre.bytes(), tcActOK, deny(ReasonProto)},
		{"fragment", frag.bytes(), tcActOK, deny(ReasonFragment)},
		{"ipv6", ipv6Frame(), tcActOK, deny(ReasonIPv6)},
		{"spoofed ip", spoofIP.bytes(), tcActOK, deny(ReasonSpoofIP)},
		{"spoofed mac", spoofMAC.bytes(), tcActOK, deny(ReasonSpoofMAC)},
		{"arp for gateway", arpFrame(testSbxMAC, testSbxIP, testGW), tcActOK, 0},
		{"arp for another host", arpFrame(testSbxMAC, testSbxIP, netip.MustParseAddr("10.99.0.9")), tcActShot, 0},
		{"arp from spoofed ip", arpFrame(testSbxMAC, netip.MustParseAddr("10.99.0.3"), testGW), tcActShot, 0},
	}
	for _, c := range cases {
		v, m := runProg(t, b, c.data)
		if v != c.verdict || m != c.mark {
			t.Errorf("%s: verdict %d mark %#x, want verdict %d mark %#x", c.name, v, m, c.verdict, c.mark)
		}
	}

	// Counters are per interface and reason: the SYN and DNS query before
	// the listeners existed, then the SYN, DNS query and ACK test-run
	// would not let the program assign.
	var vals []bpf.RedirectCounterVal
	if err := b.objs.PaddockCnt.Lookup(bpf.RedirectCounterKey{Ifindex: lo, Reason: uint32(ReasonNoListener)}, &vals); err != nil {
		t.Fatalf("no-listener counter: %v", err)
	}
	var pk uint64
	for _, v := range vals {
		pk += v.Packets
	}
	if pk != 5 {
		t.Errorf("no-listener packets counted %d, want 5", pk)
	}

	// An interface the map does not know is denied, unmarked reason.
	if err := b.objs.PaddockSbx.Delete(uint32(lo)); err != nil {
		t.Fatal(err)
	}
	if v, m := runProg(t, b, syn.bytes()); v != tcActOK || m != deny(ReasonUnmarked) {
		t.Errorf("unknown ifindex: verdict %d mark %#x, want deny unmarked", v, m)
	}

	// Closing the listeners empties their slots by itself: fail closed again.
	ls.Close()
	if err := b.objs.PaddockSbx.Put(uint32(lo), &e); err != nil {
		t.Fatal(err)
	}
	if v, m := runProg(t, b, ack.bytes()); v != tcActOK || m != deny(ReasonNoListener) {
		t.Errorf("ACK after listener closed: verdict %d mark %#x, want deny no-listener", v, m)
	}
	if h := b.health(); h == "ok" {
		t.Error("health says ok with the listeners closed")
	}
}

func bpfTestSandbox(veth string, ifindex int) api.Sandbox {
	return api.Sandbox{
		Network: "test", ContainerID: "c0ffee" + veth, IfName: "eth0",
		HostVeth: veth, HostIfIndex: ifindex, SandboxMAC: testSbxMAC.String(),
		IPs: []netip.Prefix{netip.PrefixFrom(testSbxIP, 24)}, Gateway: testGW,
	}
}

// A pinned link whose veth was deleted while paddockd was down is dropped
// at start instead of failing it.
func TestAdoptDefunctLinkInNetns(t *testing.T) {
	if nftInNodeNetns(t) {
		return
	}
	veth := "pdx" + randSuffix()
	nftRun(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", veth+"p")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", veth).Run() })
	ifc, err := net.InterfaceByName(veth)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(bpffsRoot, "paddock-test-"+randSuffix())
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := loadBPF(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.attach(bpfTestSandbox(veth, ifc.Index)); err != nil {
		t.Fatalf("attach: %v", err)
	}
	b.Close()
	nftRun(t, "ip", "link", "del", veth)
	b, err = loadBPF(dir)
	if err != nil {
		t.Fatalf("load with a defunct pinned link: %v", err)
	}
	defer b.Close()
	if _, err := os.Stat(b.linkPath(veth)); !os.IsNotExist(err) {
		t.Errorf("defunct link pin kept: %v", err)
	}
}
