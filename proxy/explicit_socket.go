package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// explicitHeaderTimeout bounds how long a client of the explicit socket may
// take to name its sandbox.
const explicitHeaderTimeout = 5 * time.Second

// ServeExplicitSocket serves paddockd's root-only explicit socket on l until
// l fails. Each client first writes one api.ExplicitHeader line naming the
// sandbox it relays for and its policy, then speaks the HTTP proxy protocol,
// served as ServeExplicit serves it for that sandbox. A connection whose
// peer is not root or whose header is bad is audited as a deny and closed.
func (s *Server) ServeExplicitSocket(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return fmt.Errorf("explicit socket accept: %w", err)
		}
		go s.serveExplicitSocketConn(c)
	}
}

func (s *Server) serveExplicitSocketConn(c net.Conn) {
	defer c.Close()
	start := time.Now()
	src := "unix"
	sb, err := func() (api.Sandbox, error) {
		cred, err := peerCred(c)
		if err != nil {
			return api.Sandbox{}, err
		}
		src = fmt.Sprintf("unix:pid=%d,uid=%d", cred.Pid, cred.Uid)
		if cred.Uid != 0 {
			return api.Sandbox{}, fmt.Errorf("explicit socket client uid %d is not root", cred.Uid)
		}
		return readExplicitHeader(c)
	}()
	if err != nil {
		m := &connMeta{sb: api.Sandbox{Network: api.ExplicitNetwork}, src: src, raw: c}
		r := s.record(m, "tcp")
		r.Decision, r.Error = "deny", err.Error()
		s.finish(r, start)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	s.serveExplicitConn(c, &connMeta{sb: sb, src: src, raw: c})
}

// readExplicitHeader reads the header line one byte at a time, so nothing
// of the HTTP stream behind it is consumed.
func readExplicitHeader(c net.Conn) (api.Sandbox, error) {
	_ = c.SetReadDeadline(time.Now().Add(explicitHeaderTimeout))
	buf := make([]byte, 0, api.MaxExplicitHeader)
	b := make([]byte, 1)
	for len(buf) < api.MaxExplicitHeader {
		if _, err := c.Read(b); err != nil {
			return api.Sandbox{}, fmt.Errorf("read explicit header: %w", err)
		}
		buf = append(buf, b[0])
		if b[0] == '\n' {
			return api.ParseExplicitHeader(string(buf))
		}
	}
	return api.Sandbox{}, fmt.Errorf("explicit header longer than %d bytes", api.MaxExplicitHeader)
}

// peerCred is the connecting process's identity (SO_PEERCRED): the socket
// file is root-only already; this keeps a leaked descriptor from lending
// trust.
func peerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, errors.New("explicit socket client is not on a Unix socket")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("peer credentials: %w", serr)
	}
	return cred, nil
}
