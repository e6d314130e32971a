package proxy

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// echConfigList builds an ECHConfigList (RFC 9849, version 0xfe0d) with a
// fresh X25519 key, HKDF-SHA256 and AES-128-GCM, and publicName as the outer
// name a client puts in its visible SNI.
func echConfigList(t *testing.T, publicName string) []byte {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u16 := func(b *bytes.Buffer, v int) { _ = binary.Write(b, binary.BigEndian, uint16(v)) }
	var c bytes.Buffer
	c.WriteByte(7)  // config_id
	u16(&c, 0x0020) // DHKEM(X25519, HKDF-SHA256)
	u16(&c, len(k.PublicKey().Bytes()))
	c.Write(k.PublicKey().Bytes())
	u16(&c, 4)
	u16(&c, 0x0001) // HKDF-SHA256
	u16(&c, 0x0001) // AES-128-GCM
	c.WriteByte(0)  // maximum_name_length
	c.WriteByte(byte(len(publicName)))
	c.WriteString(publicName)
	u16(&c, 0) // extensions
	var cfg bytes.Buffer
	u16(&cfg, 0xfe0d)
	u16(&cfg, c.Len())
	cfg.Write(c.Bytes())
	var list bytes.Buffer
	u16(&list, cfg.Len())
	list.Write(cfg.Bytes())
	return list.Bytes()
}

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
		EncryptedClientHelloConfigList: echConfigList(t, "public.example")})
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
