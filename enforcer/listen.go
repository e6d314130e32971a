package enforcer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/plugin/api/origdst"
)

// Default listen addresses. DNS listens on port 53 so a reply sent from the
// listener with an IP_PKTINFO source override carries the right source port.
var (
	DefaultTCPListen = netip.MustParseAddrPort("127.0.0.1:15001")
	DefaultDNSListen = netip.MustParseAddrPort("127.0.0.1:53")
)

// Listeners are the transparent sockets redirected sandbox traffic arrives
// on. paddockd creates them (it holds CAP_NET_ADMIN) and may hand them to the
// proxy process.
type Listeners struct {
	TCP    *net.TCPListener
	DNSUDP *net.UDPConn
	DNSTCP *net.TCPListener
}

func transparentControl(extra func(fd uintptr) error) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = origdst.Transparent(fd)
			if serr == nil && extra != nil {
				serr = extra(fd)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// listenTransparent opens the three listeners. On failure nothing stays open.
func listenTransparent(ctx context.Context, tcp, dnsAddr netip.AddrPort) (Listeners, error) {
	var l Listeners
	if !tcp.Addr().Is4() || !dnsAddr.Addr().Is4() {
		return l, fmt.Errorf("listen addresses %s and %s must be IPv4 ip:port", tcp, dnsAddr)
	}
	lc := net.ListenConfig{Control: transparentControl(nil)}
	// MPTCP listeners cannot go into a SOCKMAP (EOPNOTSUPP).
	lc.SetMultipathTCP(false)
	ln, err := listenRetry(func() (net.Listener, error) { return lc.Listen(ctx, "tcp4", tcp.String()) })
	if err != nil {
		return l, fmt.Errorf("listen tcp %s: %w (pick a free address with --tcp-listen)", tcp, err)
	}
	l.TCP = ln.(*net.TCPListener)
	ln, err = lc.Listen(ctx, "tcp4", dnsAddr.String())
	if err != nil {
		l.Close()
		return Listeners{}, fmt.Errorf("listen dns tcp %s: %w (pick a free address with --dns-listen; port 53 lets replies leave from the listener itself)", dnsAddr, err)
	}
	l.DNSTCP = ln.(*net.TCPListener)
	ulc := net.ListenConfig{Control: transparentControl(origdst.EnableOrigDst)}
	pc, err := ulc.ListenPacket(ctx, "udp4", dnsAddr.String())
	if err != nil {
		l.Close()
		return Listeners{}, fmt.Errorf("listen dns udp %s: %w (pick a free address with --dns-listen; port 53 lets replies leave from the listener itself)", dnsAddr, err)
	}
	l.DNSUDP = pc.(*net.UDPConn)
	return l, nil
}

// listenRetry retries a bind that failed with EADDRINUSE for up to two
// seconds: the proxy child of a paddockd that was just killed holds the
// port until the kernel has delivered its parent-death signal.
func listenRetry(listen func() (net.Listener, error)) (net.Listener, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		ln, err := listen()
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close closes every listener that is open.
func (l Listeners) Close() error {
	var errs []error
	if l.TCP != nil {
		errs = append(errs, l.TCP.Close())
	}
	if l.DNSTCP != nil {
		errs = append(errs, l.DNSTCP.Close())
	}
	if l.DNSUDP != nil {
		errs = append(errs, l.DNSUDP.Close())
	}
	return errors.Join(errs...)
}

// denyServer is the stand-in until the proxy serves the listeners: it names
// the sandbox and the destination it tried, then refuses.
type denyServer struct {
	lookup Lookup
	log    *slog.Logger
}

func (s denyServer) serve(ctx context.Context, l Listeners) {
	restore := stopOnDone(ctx, l)
	defer restore()
	var wg sync.WaitGroup
	wg.Go(func() { s.acceptLoop(ctx, l.TCP, s.denyConn) })
	wg.Go(func() { s.acceptLoop(ctx, l.DNSTCP, s.refuseDNSTCP) })
	wg.Go(func() { s.udpLoop(ctx, l.DNSUDP) })
	wg.Wait()
}

func (s denyServer) sandbox(src netip.Addr) (api.Sandbox, bool) {
	if s.lookup == nil {
		return api.Sandbox{}, false
	}
	return s.lookup(src.Unmap())
}

func (s denyServer) acceptLoop(ctx context.Context, ln *net.TCPListener, handle func(net.Conn)) {
	for ctx.Err() == nil {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			s.log.Warn("accept failed", "listener", ln.Addr().String(), "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go handle(c)
	}
}

func remoteAddr(c net.Conn) netip.AddrPort {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func (s denyServer) denyConn(c net.Conn) {
	defer c.Close()
	src := remoteAddr(c)
	sb, ok := s.sandbox(src.Addr())
	if !ok {
		s.log.Warn("connection from unknown source closed", "src", src.String(), "dst", origdst.OriginalDst(c).String())
		return
	}
	s.log.Info("connection denied", "sandbox", sb.ShortID(), "dst", origdst.OriginalDst(c).String(), "reason", "no proxy")
}

func refused(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeRefused)
	return m
}

func qname(m *dns.Msg) string {
	if len(m.Question) > 0 {
		return m.Question[0].Name
	}
	return ""
}

func (s denyServer) refuseDNSTCP(c net.Conn) {
	defer c.Close()
	src := remoteAddr(c)
	sb, ok := s.sandbox(src.Addr())
	if !ok {
		s.log.Warn("dns connection from unknown source closed", "src", src.String())
		return
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	dc := &dns.Conn{Conn: c}
	req, err := dc.ReadMsg()
	if err != nil {
		return
	}
	s.log.Info("dns query refused", "sandbox", sb.ShortID(), "dst", origdst.OriginalDst(c).String(), "name", qname(req), "reason", "no proxy")
	_ = dc.WriteMsg(refused(req))
}

func (s denyServer) udpLoop(ctx context.Context, conn *net.UDPConn) {
	buf := make([]byte, dns.MaxMsgSize)
	for ctx.Err() == nil {
		n, src, dst, err := origdst.ReadFrom(conn, buf)
		if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
			return
		}
		if err != nil {
			s.log.Warn("dns read failed", "err", err)
			continue
		}
		sb, ok := s.sandbox(src.Addr())
		if !ok {
			s.log.Warn("dns query from unknown source dropped", "src", src.String(), "dst", dst.String())
			continue
		}
		req := new(dns.Msg)
		if err := req.Unpack(buf[:n]); err != nil {
			s.log.Info("malformed dns query dropped", "sandbox", sb.ShortID(), "dst", dst.String())
			continue
		}
		s.log.Info("dns query refused", "sandbox", sb.ShortID(), "dst", dst.String(), "name", qname(req), "reason", "no proxy")
		out, err := refused(req).Pack()
		if err != nil {
			continue
		}
		if err := origdst.Reply(conn, out, src, dst); err != nil {
			s.log.Warn("dns reply failed", "sandbox", sb.ShortID(), "dst", dst.String(), "err", err)
		}
	}
}
