//go:build ignore

// paddock_ingress runs at tcx ingress on the node-side veth of every sandbox.
// It is the redirect and the first filter: TCP and DNS go to paddockd's
// transparent listeners via bpf_sk_assign, everything else is marked with a
// deny reason so the nftables table logs and drops it. It never lets a packet
// through unmarked: what it cannot classify, it denies.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

// Marks and reasons mirror enforcer/marks.go; TestConstantsMatch checks them
// through the Go constants bpf2go generates from these enums.
enum paddock_mark {
	PADDOCK_MARK_REDIRECT = 0x0d0c0001,
	PADDOCK_MARK_DENY_BASE = 0x0d0c0100,
};

enum paddock_reason {
	PADDOCK_REASON_REDIRECTED = 0, // counters only: the packet went to a listener
	PADDOCK_REASON_SPOOF_IP = 1,
	PADDOCK_REASON_SPOOF_MAC = 2,
	PADDOCK_REASON_UDP = 3,
	PADDOCK_REASON_ICMP = 4,
	PADDOCK_REASON_IPV6 = 5,
	PADDOCK_REASON_PROTO = 6,
	PADDOCK_REASON_ARP = 7,
	PADDOCK_REASON_NO_LISTENER = 8,
	PADDOCK_REASON_UNMARKED = 9,
	PADDOCK_REASON_FRAGMENT = 10,
	PADDOCK_REASON_ETHERTYPE = 11,
};

enum paddock_listener {
	PADDOCK_LSN_TCP = 0,
	PADDOCK_LSN_DNS_UDP = 1,
	PADDOCK_LSN_DNS_TCP = 2,
};

// One sandbox interface, keyed by the host veth's ifindex. Addresses are in
// network byte order.
struct sandbox {
	__u32 ipv4;
	__u32 gateway;
	__u8 mac[6];
	__u8 pad[2];
};

struct counter_key {
	__u32 ifindex;
	__u32 reason;
};

struct counter_val {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct sandbox);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} paddock_sbx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} paddock_lsn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384 * 12);
	__type(key, struct counter_key);
	__type(value, struct counter_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} paddock_cnt SEC(".maps");

// Keep the enums in BTF so bpf2go can emit them as Go constants.
const enum paddock_mark *unused_mark __attribute__((unused));
const enum paddock_reason *unused_reason __attribute__((unused));
const enum paddock_listener *unused_listener __attribute__((unused));

#define ETH_P_ARP_BE bpf_htons(0x0806)
#define ETH_P_IP_BE bpf_htons(0x0800)
#define ETH_P_IPV6_BE bpf_htons(0x86DD)
#define TCP_LISTEN_STATE 10

struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline void count(__u32 ifindex, __u32 reason, __u32 len)
{
	struct counter_key k = {.ifindex = ifindex, .reason = reason};
	struct counter_val *v = bpf_map_lookup_elem(&paddock_cnt, &k);
	if (v) {
		v->packets++;
		v->bytes += len;
		return;
	}
	struct counter_val init = {.packets = 1, .bytes = len};
	bpf_map_update_elem(&paddock_cnt, &k, &init, BPF_NOEXIST);
}

static __always_inline int deny(struct __sk_buff *skb, __u32 reason)
{
	skb->mark = PADDOCK_MARK_DENY_BASE | reason;
	count(skb->ifindex, reason, skb->len);
	return TC_ACT_OK; // nftables logs the mark's reason and drops it
}

static __always_inline int redirected(struct __sk_buff *skb)
{
	skb->mark = PADDOCK_MARK_REDIRECT;
	count(skb->ifindex, PADDOCK_REASON_REDIRECTED, skb->len);
	return TC_ACT_OK;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] &&
	       a[4] == b[4] && a[5] == b[5];
}

// assign_listener hands skb to listener slot idx; a missing or unusable
// listener is a deny, never a pass.
static __always_inline int assign_listener(struct __sk_buff *skb, __u32 idx)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&paddock_lsn, &idx);
	if (!sk)
		return deny(skb, PADDOCK_REASON_NO_LISTENER);
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return deny(skb, PADDOCK_REASON_NO_LISTENER);
	return redirected(skb);
}

static __always_inline int handle_arp(struct __sk_buff *skb, struct sandbox *sbx,
				      struct ethhdr *eth, void *data_end)
{
	struct arp_ipv4 *arp = (void *)(eth + 1);
	if ((void *)(arp + 1) > data_end)
		goto drop;
	if (arp->htype != bpf_htons(1) || arp->ptype != ETH_P_IP_BE || arp->hlen != 6 ||
	    arp->plen != 4)
		goto drop;
	if (!mac_eq(eth->h_source, sbx->mac) || !mac_eq(arp->sha, sbx->mac))
		goto drop;
	__u32 spa, tpa;
	__builtin_memcpy(&spa, arp->spa, 4);
	__builtin_memcpy(&tpa, arp->tpa, 4);
	// Requests for the gateway, and replies to the gateway's own requests.
	if (spa != sbx->ipv4 || tpa != sbx->gateway)
		goto drop;
	if (arp->oper != bpf_htons(1) && arp->oper != bpf_htons(2))
		goto drop;
	return TC_ACT_OK;
drop:
	count(skb->ifindex, PADDOCK_REASON_ARP, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline int handle_tcp(struct __sk_buff *skb, struct iphdr *ip, void *l4,
				      void *data_end)
{
	struct tcphdr *tcp = l4;
	if ((void *)(tcp + 1) > data_end)
		return deny(skb, PADDOCK_REASON_PROTO);
	__u32 idx = tcp->dest == bpf_htons(53) ? PADDOCK_LSN_DNS_TCP : PADDOCK_LSN_TCP;
	if (tcp->syn && !tcp->ack)
		return assign_listener(skb, idx);

	// Later segments belong to the connection the listener accepted: hand
	// them to it directly. Giving them the listener would reset the handshake.
	struct bpf_sock_tuple tuple = {};
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	tuple.ipv4.sport = tcp->source;
	tuple.ipv4.dport = tcp->dest;
	struct bpf_sock *sk =
		bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != TCP_LISTEN_STATE) {
			long err = bpf_sk_assign(skb, sk, 0);
			bpf_sk_release(sk);
			if (err)
				return deny(skb, PADDOCK_REASON_NO_LISTENER);
			return redirected(skb);
		}
		bpf_sk_release(sk);
	}
	// No connection of its own: the listener decides. A final ACK whose
	// handshake ended in a SYN cookie (the SYN queue overflowed, e.g. another
	// sandbox flooding SYNs) has no request socket, and only the listener
	// can validate it; the kernel's own demux would find no socket on the
	// original destination and reset it. Stray segments get the listener's
	// reset. Without a listener we fail closed.
	return assign_listener(skb, idx);
}

SEC("tcx/ingress")
int paddock_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 ifindex = skb->ifindex;

	struct sandbox *sbx = bpf_map_lookup_elem(&paddock_sbx, &ifindex);
	if (!sbx) {
		skb->mark = PADDOCK_MARK_DENY_BASE | PADDOCK_REASON_UNMARKED;
		return TC_ACT_OK;
	}

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return deny(skb, PADDOCK_REASON_ETHERTYPE);

	if (eth->h_proto == ETH_P_ARP_BE)
		return handle_arp(skb, sbx, eth, data_end);
	if (eth->h_proto == ETH_P_IPV6_BE)
		return deny(skb, PADDOCK_REASON_IPV6);
	if (eth->h_proto != ETH_P_IP_BE)
		return deny(skb, PADDOCK_REASON_ETHERTYPE);

	if (!mac_eq(eth->h_source, sbx->mac))
		return deny(skb, PADDOCK_REASON_SPOOF_MAC);

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return deny(skb, PADDOCK_REASON_PROTO);
	if (ip->version != 4 || ip->ihl < 5)
		return deny(skb, PADDOCK_REASON_PROTO);
	if (ip->saddr != sbx->ipv4)
		return deny(skb, PADDOCK_REASON_SPOOF_IP);
	if (ip->frag_off & bpf_htons(0x3fff))
		return deny(skb, PADDOCK_REASON_FRAGMENT);

	void *l4 = (void *)ip + ip->ihl * 4;
	switch (ip->protocol) {
	case IPPROTO_TCP:
		return handle_tcp(skb, ip, l4, data_end);
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return deny(skb, PADDOCK_REASON_PROTO);
		if (udp->dest != bpf_htons(53))
			return deny(skb, PADDOCK_REASON_UDP);
		return assign_listener(skb, PADDOCK_LSN_DNS_UDP);
	}
	case IPPROTO_ICMP:
		return deny(skb, PADDOCK_REASON_ICMP);
	default:
		return deny(skb, PADDOCK_REASON_PROTO);
	}
}
