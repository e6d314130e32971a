package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// clientHello records the first flight of a real crypto/tls client.
func clientHello(t testing.TB, sni string, alpn []string) []byte {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		_ = tls.Client(c1, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
	}()
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := c2.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestReadClientHello(t *testing.T) {
	raw := clientHello(t, "api.example.com", []string{"h2", "http/1.1"})
	// One byte at a time: the hello must survive arbitrary segmentation.
	h, rec, err := readClientHello(iotest.OneByteReader(bytes.NewReader(append(raw, "after"...))))
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "api.example.com" || strings.Join(h.ALPN, ",") != "h2,http/1.1" {
		t.Fatalf("hello %+v", h)
	}
	if !bytes.Equal(rec, raw) {
		t.Fatalf("recorded %d bytes, hello is %d: replay would be wrong", len(rec), len(raw))
	}
	if _, _, err := readClientHello(bytes.NewReader([]byte("\x16\x03\x01\x00\x05hello"))); err == nil {
		t.Fatal("garbage accepted as a ClientHello")
	}
}

func TestClassify(t *testing.T) {
	for in, want := range map[string]protocol{
		"\x16\x03\x01": protoTLS, "GET / HTTP/1.1\r\n": protoHTTP, "POST /x": protoHTTP,
		"SSH-2.0-OpenSSH": protoOpaque, "GE": protoOpaque, "\x00\x01": protoOpaque,
	} {
		if got, _ := classify([]byte(in)); got != want {
			t.Errorf("classify(%q) = %v, want %v", in, got, want)
		}
	}
}

func FuzzReadClientHello(f *testing.F) {
	f.Add(clientHello(f, "a.test", nil))
	f.Add(clientHello(f, "very.long.name.example.org", []string{"h2"}))
	f.Add([]byte("\x16\x03\x01\x00\x00"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, rec, err := readClientHello(bytes.NewReader(data))
		if len(rec) > len(data) {
			t.Fatalf("recorded %d of %d bytes", len(rec), len(data))
		}
		if !bytes.Equal(rec, data[:len(rec)]) {
			t.Fatal("recorded bytes differ from the input: replay would corrupt the stream")
		}
		if err == nil && h == nil {
			t.Fatal("no hello and no error")
		}
	})
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"GET ", "PRI * HTTP/2.0", "\x16\x03", "CONNECT a:1", "x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, more := classify(data)
		if p != protoOpaque && more {
			t.Fatal("decided yet asks for more")
		}
	})
}

func TestRedactAcrossReads(t *testing.T) {
	secret := "SECRET-abcdef"
	body := "x" + secret + "y" + secret[:5] + "-" + secret + secret
	want := "x" + Redacted + "y" + secret[:5] + "-" + Redacted + Redacted
	for _, chunk := range []int{1, 2, 3, 7, 100} {
		r := newRedactReader(io.NopCloser(iotest.HalfReader(&chunkReader{s: body, n: chunk})), []string{secret, "other"})
		got, err := io.ReadAll(r)
		if err != nil || string(got) != want {
			t.Fatalf("chunk %d: %q %v, want %q", chunk, got, err, want)
		}
	}
}

type chunkReader struct {
	s string
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.s == "" {
		return 0, io.EOF
	}
	n := min(c.n, len(c.s), len(p))
	copy(p, c.s[:n])
	c.s = c.s[n:]
	return n, nil
}

func FuzzRedact(f *testing.F) {
	f.Add("hello SECRET world", "SECRET", 3)
	f.Add("SESECRET", "SECRET", 1)
	f.Fuzz(func(t *testing.T, body, secret string, chunk int) {
		if secret == "" || chunk <= 0 || chunk > 1<<16 {
			return
		}
		got, err := io.ReadAll(newRedactReader(io.NopCloser(&chunkReader{s: body, n: chunk}), []string{secret}))
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.ReplaceAll(body, secret, Redacted); string(got) != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}
