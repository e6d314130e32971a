package enforcer

// Packet marks are the contract between the tcx program (bpf/redirect.c),
// the nftables ruleset and the policy route. bpf/redirect.c mirrors these
// values; a test checks that the two agree.
const (
	// MarkRedirect is set on packets the data path hands to a local
	// listener (bpf_sk_assign or TPROXY). `ip rule fwmark MarkRedirect
	// lookup RouteTable` routes them local; nft accepts them in input.
	MarkRedirect uint32 = 0x0d0c0001
	// MarkDenyBase | reason is set on packets the BPF program classified as
	// denied; nft logs them with the reason's prefix and drops them.
	MarkDenyBase uint32 = 0x0d0c0100
	// MarkDenyMask selects the deny base; the low byte is the reason.
	MarkDenyMask uint32 = 0xffffff00

	// RouteTable is the policy-routing table holding `local 0.0.0.0/0 dev lo`.
	RouteTable = 0x0d0c
	// RulePriority is the priority of paddock's `ip rule`.
	RulePriority = 90
)

// Reason says why a packet was dropped. Values are shared with BPF and
// appear in NFLOG prefixes as "paddock:<name>".
type Reason uint8

const (
	ReasonUnknown    Reason = 0
	ReasonSpoofIP    Reason = 1  // source IP is not the sandbox's
	ReasonSpoofMAC   Reason = 2  // source MAC is not the sandbox's
	ReasonUDP        Reason = 3  // UDP other than DNS
	ReasonICMP       Reason = 4  // ICMP of any type
	ReasonIPv6       Reason = 5  // IPv6 is not served
	ReasonProto      Reason = 6  // any other IP protocol or raw frame
	ReasonARP        Reason = 7  // ARP for anything but the gateway
	ReasonNoListener Reason = 8  // redirect target gone: fail closed
	ReasonUnmarked   Reason = 9  // nft saw a packet the redirect did not claim
	ReasonFragment   Reason = 10 // IP fragments are not reassembled here
	ReasonEtherType  Reason = 11 // non-IP, non-ARP ethertype
)

var reasonNames = map[Reason]string{
	ReasonUnknown:    "unknown",
	ReasonSpoofIP:    "spoofed-ip",
	ReasonSpoofMAC:   "spoofed-mac",
	ReasonUDP:        "udp",
	ReasonICMP:       "icmp",
	ReasonIPv6:       "ipv6",
	ReasonProto:      "ip-proto",
	ReasonARP:        "arp",
	ReasonNoListener: "no-listener",
	ReasonUnmarked:   "unmarked",
	ReasonFragment:   "fragment",
	ReasonEtherType:  "ethertype",
}

func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return "unknown"
}

// Reasons lists every reason with a name, in value order.
func Reasons() []Reason {
	out := make([]Reason, 0, len(reasonNames))
	// Loop over int: a Reason counter would wrap at 255 and never stop.
	for i := 0; i < 256; i++ {
		if r := Reason(i); reasonNames[r] != "" {
			out = append(out, r)
		}
	}
	return out
}

// NFLOGPrefix is the log prefix nft puts on drops of reason r.
func NFLOGPrefix(r Reason) string { return "paddock:" + r.String() }
