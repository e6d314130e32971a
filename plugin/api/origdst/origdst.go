package origdst

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// oobSize fits one IP_ORIGDSTADDR (sockaddr_in) and one IP_PKTINFO cmsg.
var oobSize = unix.CmsgSpace(unix.SizeofSockaddrInet4) + unix.CmsgSpace(unix.SizeofInet4Pktinfo)

// ErrNoOrigDst means a datagram arrived without IP_ORIGDSTADDR: the socket
// was not prepared with EnableOrigDst. Callers must drop such datagrams.
var ErrNoOrigDst = errors.New("datagram carries no original destination (IP_RECVORIGDSTADDR not set)")

// EnableOrigDst asks the kernel to report each datagram's original
// destination (IP_RECVORIGDSTADDR) and arrival info (IP_PKTINFO).
func EnableOrigDst(fd uintptr) error {
	if err := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1); err != nil {
		return fmt.Errorf("set IP_RECVORIGDSTADDR: %w", err)
	}
	if err := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_PKTINFO, 1); err != nil {
		return fmt.Errorf("set IP_PKTINFO: %w", err)
	}
	return nil
}

// Transparent sets IP_TRANSPARENT and SO_REUSEADDR: the socket may then
// accept traffic for, and send from, addresses the node does not hold.
func Transparent(fd uintptr) error {
	if err := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
		return fmt.Errorf("set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
	}
	if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("set SO_REUSEADDR: %w", err)
	}
	return nil
}

// ReadFrom reads one datagram and returns its source and the destination the
// sender addressed it to.
func ReadFrom(conn *net.UDPConn, buf []byte) (n int, src, origDst netip.AddrPort, err error) {
	oob := make([]byte, oobSize)
	n, oobn, _, src, err := conn.ReadMsgUDPAddrPort(buf, oob)
	if err != nil {
		return 0, src, origDst, err
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return n, src, origDst, fmt.Errorf("parse control messages: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8 {
			// struct sockaddr_in: family, port (network order), address.
			port := binary.BigEndian.Uint16(m.Data[2:4])
			addr := netip.AddrFrom4([4]byte(m.Data[4:8]))
			return n, src, netip.AddrPortFrom(addr, port), nil
		}
	}
	return n, src, origDst, ErrNoOrigDst
}

// Reply sends payload to `to` with source address and port `from` (the
// original destination ReadFrom returned). When conn is bound to from's port,
// an IP_PKTINFO source override on conn itself is enough; otherwise a
// short-lived transparent socket bound to from sends it, which needs
// CAP_NET_ADMIN.
func Reply(conn *net.UDPConn, payload []byte, to, from netip.AddrPort) error {
	if !from.Addr().Is4() || !to.Addr().Is4() {
		return fmt.Errorf("reply %s -> %s: only IPv4 is supported", from, to)
	}
	if la, ok := conn.LocalAddr().(*net.UDPAddr); ok && la.Port == int(from.Port()) {
		pi := &unix.Inet4Pktinfo{Spec_dst: from.Addr().As4()}
		oob := unix.PktInfo4(pi)
		if _, _, err := conn.WriteMsgUDPAddrPort(payload, oob, to); err != nil {
			return fmt.Errorf("reply from %s to %s: %w", from, to, err)
		}
		return nil
	}
	return replyFromSocket(payload, to, from)
}

func replyFromSocket(payload []byte, to, from netip.AddrPort) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = Transparent(fd) }); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", from.String())
	if err != nil {
		return fmt.Errorf("reply socket on %s: %w", from, err)
	}
	defer pc.Close()
	if _, err := pc.(*net.UDPConn).WriteToUDPAddrPort(payload, to); err != nil {
		return fmt.Errorf("reply from %s to %s: %w", from, to, err)
	}
	return nil
}

// OriginalDst is the destination a transparently redirected TCP connection
// was dialled to: its local address.
func OriginalDst(c net.Conn) netip.AddrPort {
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
