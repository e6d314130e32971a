package proxy

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/test/testutil"
)

// TestReadClientHelloECH: a client using Encrypted Client Hello shows only
// the public name; readClientHello must say ECH is in use so that a
// passthrough rule is not decided on that outer name.
func TestReadClientHelloECH(t *testing.T) {
	hello := func(cfg *tls.Config) []byte {
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		go func() { _ = tls.Client(c1, cfg).Handshake() }()
		_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64<<10)
		n, err := c2.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	raw := hello(&tls.Config{ServerName: "hidden.example", MinVersion: tls.VersionTLS13,
		EncryptedClientHelloConfigList: testutil.ECHConfigList(t, "public.example")})
	h, _, err := readClientHello(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if !h.ECH || h.ServerName != "public.example" {
		t.Fatalf("ECH hello read as %+v: want ECH with the outer name public.example", h)
	}
	h, _, err = readClientHello(bytes.NewReader(hello(&tls.Config{ServerName: "plain.example", InsecureSkipVerify: true})))
	if err != nil {
		t.Fatal(err)
	}
	if h.ECH || h.ServerName != "plain.example" {
		t.Fatalf("plain hello read as %+v", h)
	}
}
