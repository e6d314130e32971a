package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"time"
)

// replayConn is a net.Conn whose first reads return bytes already consumed
// by sniffing, then continue from the socket.
type replayConn struct {
	net.Conn
	r io.Reader
}

func newReplayConn(c net.Conn, prefix []byte) *replayConn {
	if len(prefix) == 0 {
		return &replayConn{Conn: c, r: c}
	}
	return &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(append([]byte(nil), prefix...)), c)}
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite lets splice half-close through the wrapper.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ClientHello is what the proxy needs of a TLS ClientHello.
type ClientHello struct {
	ServerName string
	ALPN       []string
	// ECH reports an Encrypted Client Hello extension: ServerName is then
	// only the outer, public name, and the real one is encrypted for the
	// upstream.
	ECH bool
}

// extensionECH is the encrypted_client_hello extension (RFC 9849).
const extensionECH = 0xfe0d

var errHelloSeen = errors.New("client hello seen")

// helloConn feeds crypto/tls the recorded bytes and swallows its writes (the
// alert it sends when we abort the handshake after reading the hello).
type helloConn struct {
	net.Conn
	r io.Reader
}

func (c *helloConn) Read(p []byte) (int, error)        { return c.r.Read(p) }
func (c *helloConn) Write(p []byte) (int, error)       { return len(p), nil }
func (c *helloConn) SetDeadline(time.Time) error       { return nil }
func (c *helloConn) SetWriteDeadline(time.Time) error  { return nil }
func (c *helloConn) SetReadDeadline(t time.Time) error { return nil }
func (c *helloConn) Close() error                      { return nil }

// readClientHello parses a ClientHello from r with crypto/tls's own parser
// (bounds-checked, maintained) and returns every byte it consumed so the
// hello can be replayed to an upstream or to our own TLS server.
func readClientHello(r io.Reader) (*ClientHello, []byte, error) {
	var rec bytes.Buffer
	// crypto/tls limits a handshake message to 64 KiB plus record framing.
	src := io.TeeReader(io.LimitReader(r, 70<<10), &rec)
	var hello *ClientHello
	cfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hello = &ClientHello{ServerName: h.ServerName, ALPN: append([]string(nil), h.SupportedProtos...), ECH: slices.Contains(h.Extensions, extensionECH)}
		return nil, errHelloSeen
	}}
	err := tls.Server(&helloConn{Conn: nopConn{}, r: src}, cfg).Handshake()
	if hello == nil {
		if err == nil {
			err = errors.New("no client hello")
		}
		return nil, rec.Bytes(), err
	}
	return hello, rec.Bytes(), nil
}

// nopConn satisfies net.Conn for helloConn's address methods.
type nopConn struct{ net.Conn }

func (nopConn) LocalAddr() net.Addr  { return &net.TCPAddr{} }
func (nopConn) RemoteAddr() net.Addr { return &net.TCPAddr{} }

// protocol of a connection, decided from its first bytes.
type protocol int

const (
	protoOpaque protocol = iota
	protoTLS
	protoHTTP
)

var httpMethods = [][]byte{
	[]byte("GET "), []byte("HEAD "), []byte("POST "), []byte("PUT "), []byte("DELETE "),
	[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE "), []byte("PRI * "),
}

// classify looks at the first bytes of a connection. more reports whether
// more bytes could change the answer.
func classify(b []byte) (p protocol, more bool) {
	if len(b) == 0 {
		return protoOpaque, true
	}
	if b[0] == 0x16 { // TLS handshake record
		return protoTLS, false
	}
	for _, m := range httpMethods {
		n := min(len(b), len(m))
		if bytes.Equal(b[:n], m[:n]) {
			if n == len(m) {
				return protoHTTP, false
			}
			more = true
		}
	}
	return protoOpaque, more
}

// sniff reads the first bytes of c (waiting at most timeout for the client to
// speak: server-first protocols stay silent) and classifies them.
func sniff(c net.Conn, timeout time.Duration) (protocol, []byte, error) {
	buf := make([]byte, 0, 16)
	deadline := time.Now().Add(timeout)
	if err := c.SetReadDeadline(deadline); err != nil {
		return protoOpaque, nil, err
	}
	defer c.SetReadDeadline(time.Time{})
	for {
		p, more := classify(buf)
		if !more || len(buf) == cap(buf) {
			return p, buf, nil
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				p, _ := classify(buf)
				return p, buf, nil
			}
			return protoOpaque, buf, err
		}
	}
}
