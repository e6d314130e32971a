package world

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// maxLeaks bounds what the capture remembers; it keeps counting past it.
const maxLeaks = 1000

// Capture is the leak detector: an AF_PACKET socket on internet's veth that
// sees every frame arriving from node, before any firewall could hide it.
type Capture struct {
	fd      int
	sandbox netip.Prefix
	node    netip.Addr
	done    chan struct{}
	stopped chan struct{}

	mu        sync.Mutex
	leaks     []string
	leakCount int
	nodePkts  uint64
}

// StartCapture opens the capture inside netNS on link ifname. Packets from
// sandbox (IPv4) or over IPv6 (except neighbour discovery and MLD from
// link-local addresses, which never cross a router) are leaks; packets from
// node are counted.
func StartCapture(netNS ns.NetNS, ifname string, sandbox netip.Prefix, node netip.Addr) (*Capture, error) {
	c := &Capture{fd: -1, sandbox: sandbox, node: node, done: make(chan struct{}), stopped: make(chan struct{})}
	err := netNS.Do(func(ns.NetNS) error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("capture link %s: %w", ifname, err)
		}
		// SOCK_DGRAM: the kernel strips the link header and tells the
		// protocol and direction in the address.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("capture socket: %w", err)
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("capture bind %s: %w", ifname, err)
		}
		// A read timeout lets Close stop the reader: closing an fd does not
		// wake a thread blocked in recvfrom.
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("capture timeout: %w", err)
		}
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		return nil, err
	}
	go c.run()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) run() {
	defer close(c.stopped)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
		if err != nil {
			continue // timeout or EINTR: look at done again
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		c.inspect(htons(ll.Protocol), buf[:min(n, len(buf))])
	}
}

func (c *Capture) inspect(proto uint16, p []byte) {
	switch proto {
	case unix.ETH_P_IP:
		if len(p) < 20 {
			return
		}
		src := netip.AddrFrom4([4]byte(p[12:16]))
		dst := netip.AddrFrom4([4]byte(p[16:20]))
		ihl := int(p[0]&0x0f) * 4
		c.mu.Lock()
		defer c.mu.Unlock()
		if src == c.node {
			c.nodePkts++
		}
		if c.sandbox.Contains(src) {
			c.record(describe("ipv4", src, dst, p[9], p[min(ihl, len(p)):]))
		}
	case unix.ETH_P_IPV6:
		if len(p) < 40 {
			return
		}
		src := netip.AddrFrom16([16]byte(p[8:24]))
		dst := netip.AddrFrom16([16]byte(p[24:40]))
		next, l4 := skipExtensions(p[6], p[40:])
		if next == unix.IPPROTO_ICMPV6 && len(l4) > 0 && isLinkControl(l4[0]) && (src.IsLinkLocalUnicast() || src.IsUnspecified()) {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.record(describe("ipv6", src, dst, next, l4))
	}
}

// skipExtensions walks IPv6 extension headers (MLD reports carry a
// hop-by-hop header) to the upper-layer protocol.
func skipExtensions(next byte, p []byte) (byte, []byte) {
	for i := 0; i < 8; i++ {
		switch next {
		case 0, unix.IPPROTO_ROUTING, unix.IPPROTO_DSTOPTS:
			if len(p) < 8 {
				return next, p
			}
			n := (int(p[1]) + 1) * 8
			next, p = p[0], p[min(n, len(p)):]
		case unix.IPPROTO_FRAGMENT:
			if len(p) < 8 {
				return next, p
			}
			next, p = p[0], p[8:]
		default:
			return next, p
		}
	}
	return next, p
}

// isLinkControl reports ICMPv6 types that stay on one link: MLD (130-132,
// 143) and neighbour discovery (133-137).
func isLinkControl(t byte) bool {
	return t >= 130 && t <= 137 || t == 143
}

func (c *Capture) record(desc string) {
	c.leakCount++
	if len(c.leaks) < maxLeaks {
		c.leaks = append(c.leaks, time.Now().Format("15:04:05.000")+" "+desc)
	}
}

func describe(family string, src, dst netip.Addr, proto byte, l4 []byte) string {
	switch proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		name := "tcp"
		if proto == unix.IPPROTO_UDP {
			name = "udp"
		}
		if len(l4) >= 4 {
			sp, dp := binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
			return fmt.Sprintf("%s %s %s -> %s", family, name, netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp))
		}
		return fmt.Sprintf("%s %s %s -> %s", family, name, src, dst)
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		if len(l4) >= 2 {
			return fmt.Sprintf("%s icmp %s -> %s type %d code %d", family, src, dst, l4[0], l4[1])
		}
		return fmt.Sprintf("%s icmp %s -> %s", family, src, dst)
	default:
		return fmt.Sprintf("%s proto %d %s -> %s", family, proto, src, dst)
	}
}

// Leaks returns descriptions of the leaked packets (at most 1000, then a
// line saying how many more).
func (c *Capture) Leaks() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]string(nil), c.leaks...)
	if c.leakCount > len(c.leaks) {
		out = append(out, fmt.Sprintf("... and %d more", c.leakCount-len(c.leaks)))
	}
	return out
}

// Reset forgets the leaks recorded so far.
func (c *Capture) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leaks, c.leakCount = nil, 0
}

// NodePackets counts packets from the node's own address.
func (c *Capture) NodePackets() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodePkts
}

// Sync waits for frames still in flight and until the capture has drained
// what the kernel queued for it (bounded: about a second), so that a check
// right after traffic sees that traffic.
func (c *Capture) Sync() {
	time.Sleep(50 * time.Millisecond)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		queued, err := unix.IoctlGetInt(c.fd, unix.SIOCINQ)
		if err != nil || queued == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The frame being inspected right now is no longer queued.
	time.Sleep(10 * time.Millisecond)
}

// Close stops the reader and closes the socket.
func (c *Capture) Close() {
	select {
	case <-c.done:
		return
	default:
	}
	close(c.done)
	<-c.stopped
	unix.Close(c.fd)
}
