package testutil

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"testing"
)

// ECHConfigList builds an ECHConfigList (RFC 9849, version 0xfe0d) with a
// fresh X25519 key, HKDF-SHA256 and AES-128-GCM, and publicName as the outer
// name a client puts in its visible SNI: enough for a Go client to send an
// Encrypted Client Hello that hides its real server name.
func ECHConfigList(t testing.TB, publicName string) []byte {
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
