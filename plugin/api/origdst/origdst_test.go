package origdst

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

func listenOrigDst(t *testing.T) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = EnableOrigDst(fd) }); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// On loopback nothing is redirected, so the original destination is the
// listener itself; the redirected case is tested in enforcer's netns tests.
func TestReadFromAndReply(t *testing.T) {
	srv := listenOrigDst(t)
	cli, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	_ = srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, src, dst, err := ReadFrom(srv, buf)
	if err != nil {
		t.Fatalf("ReadFrom: %v", err)
	}
	if string(buf[:n]) != "query" {
		t.Errorf("payload %q", buf[:n])
	}
	if want := srv.LocalAddr().(*net.UDPAddr).AddrPort(); dst != want {
		t.Errorf("original destination %s, want %s", dst, want)
	}
	if want := cli.LocalAddr().(*net.UDPAddr).AddrPort(); src != want {
		t.Errorf("source %s, want %s", src, want)
	}
	if err := Reply(srv, []byte("answer"), src, dst); err != nil {
		t.Fatalf("Reply: %v", err)
	}
	// cli is connected: it only receives what comes from exactly dst.
	_ = cli.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err = cli.Read(buf)
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}
}

func TestReadFromWithoutOrigDst(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	srv := pc.(*net.UDPConn)
	cli, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	_, _ = cli.Write([]byte("x"))
	_ = srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, _, _, err := ReadFrom(srv, make([]byte, 8)); !errors.Is(err, ErrNoOrigDst) {
		t.Fatalf("ReadFrom on a plain socket: %v, want ErrNoOrigDst", err)
	}
}

func TestReplyRejectsIPv6(t *testing.T) {
	srv := listenOrigDst(t)
	err := Reply(srv, nil, netip.MustParseAddrPort("[2001:db8::1]:53"), netip.MustParseAddrPort("192.0.2.53:53"))
	if err == nil {
		t.Fatal("reply to an IPv6 address succeeded")
	}
}

func TestOriginalDst(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, want := OriginalDst(s), ln.Addr().(*net.TCPAddr).AddrPort(); got != want {
		t.Errorf("OriginalDst = %s, want %s", got, want)
	}
}
