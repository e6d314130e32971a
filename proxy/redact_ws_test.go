package proxy

import (
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

const wsSecret = "s3cr3t-value-123"

// TestMaskKeepsLength: the upgraded-stream mask replaces a secret with as
// many '*' bytes, also when it arrives split across reads, and passes
// what cannot begin a secret at once.
func TestMaskKeepsLength(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	r := newRedactReader(pr, []string{wsSecret})
	r.mask = true
	read := func(want string) { t.Helper(); expectRead(t, r, want) }
	go func() { _, _ = pw.Write([]byte("\x81\x16key=" + wsSecret[:5])) }()
	read("\x81\x16key=")
	go func() { _, _ = pw.Write([]byte(wsSecret[5:] + "!!")) }()
	read(strings.Repeat("*", len(wsSecret)) + "!!")
}

// wsUpstream is a TLS WebSocket server that greets its client with the
// x-api-key it was sent: in one text frame, then in a second whose bytes it
// writes in two TCP segments split inside the key; then it echoes one
// message back. It records each handshake's extension offer. /ws-deflate
// accepts permessage-deflate although nobody offered it.
type wsUpstream struct {
	port int
	mu   sync.Mutex
	ext  []string
}

func startWSUpstream(t *testing.T, w *world) *wsUpstream {
	u := &wsUpstream{}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.ext = append(u.ext, r.Header.Get(wsExtensions))
		u.mu.Unlock()
		c, brw, err := http.NewResponseController(rw).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		accept := base64.StdEncoding.EncodeToString(sum[:])
		extra := ""
		if r.URL.Path == "/ws-deflate" {
			extra = wsExtensions + ": permessage-deflate\r\n"
		}
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n", accept, extra)
		key := r.Header.Get("X-Api-Key")
		frame := wsTextFrame("key=" + key)
		brw.Write(frame)
		if brw.Flush() != nil {
			return
		}
		half := len(frame) - len(key)/2
		for _, part := range [][]byte{frame[:half], frame[half:]} {
			brw.Write(part)
			if brw.Flush() != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		// One masked client frame (FIN, text, payload under 126 bytes).
		var hdr [6]byte
		if _, err := io.ReadFull(brw, hdr[:]); err != nil {
			return
		}
		payload := make([]byte, hdr[1]&0x7f)
		if _, err := io.ReadFull(brw, payload); err != nil {
			return
		}
		for i := range payload {
			payload[i] ^= hdr[2+i%4]
		}
		brw.Write(wsTextFrame("echo " + string(payload)))
		_ = brw.Flush()
	}))
	up.TLS = &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) { return w.upCA.Leaf(h.ServerName) }}
	up.StartTLS()
	t.Cleanup(up.Close)
	u.port = up.Listener.Addr().(*net.TCPAddr).Port
	w.writePolicy("default", fmt.Sprintf(`
egress:
  - domains: [secret.test]
    ports: [%[1]d]
    allowPrivate: true
    inject: [{header: x-api-key, secretEnv: PADDOCK_TEST_SECRET}]
  - domains: [allowed.test]
    ports: [%[1]d]
    allowPrivate: true
`, u.port))
	w.store.Reload()
	return u
}

// wsTextFrame is an unmasked (server-to-client) text frame, payload under 126 bytes.
func wsTextFrame(s string) []byte { return append([]byte{0x81, byte(len(s))}, s...) }

func (u *wsUpstream) extensions() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.ext...)
}

// dialWS opens a WebSocket to host through the proxy (TLS terminated by
// it), offering permessage-deflate and sending x-api-key as given.
func dialWS(t *testing.T, w *world, u *wsUpstream, host, path, apiKey string) (*websocket.Conn, error) {
	t.Helper()
	raw, err := w.dial(w.origFor(u.port))
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: w.nodeRoots, NextProtos: []string{"http/1.1"}})
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	cfg, err := websocket.NewConfig(fmt.Sprintf("wss://%s:%d%s", host, u.port, path), "https://"+host)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Header.Set(wsExtensions, "permessage-deflate; client_max_window_bits")
	if apiKey != "" {
		cfg.Header.Set("X-Api-Key", apiKey)
	}
	return websocket.NewClient(cfg, c)
}

// TestWebSocketEchoMasked: under a rule that injects a key, an upstream
// echoing it over an upgraded WebSocket hands the sandbox '*'s of the same
// length in frames that still parse, also when the key is split across
// TCP segments; the upgrade goes upstream without an extension offer, and
// the sandbox's own frames still reach the upstream.
func TestWebSocketEchoMasked(t *testing.T) {
	t.Setenv("PADDOCK_TEST_SECRET", wsSecret)
	w := newWorld(t, basePolicy)
	u := startWSUpstream(t, w)
	ws, err := dialWS(t, w, u, "secret.test", "/ws", "")
	if err != nil {
		t.Fatalf("websocket upgrade through the proxy: %v", err)
	}
	masked := "key=" + strings.Repeat("*", len(wsSecret))
	for i := range 2 {
		var msg string
		if err := websocket.Message.Receive(ws, &msg); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if msg != masked {
			t.Fatalf("frame %d: got %q, want %q", i, msg, masked)
		}
	}
	if err := websocket.Message.Send(ws, "ping"); err != nil {
		t.Fatal(err)
	}
	var msg string
	if err := websocket.Message.Receive(ws, &msg); err != nil || msg != "echo ping" {
		t.Fatalf("echo of the sandbox's frame: %q %v", msg, err)
	}
	if ext := u.extensions(); len(ext) != 1 || ext[0] != "" {
		t.Fatalf("upstream saw %s %q, want none offered", wsExtensions, ext)
	}
}

// TestWebSocketWithoutInjectionUntouched: without injection the upgrade
// keeps its extension offer and the stream passes as it is, even bytes
// that look like a configured secret.
func TestWebSocketWithoutInjectionUntouched(t *testing.T) {
	t.Setenv("PADDOCK_TEST_SECRET", wsSecret)
	w := newWorld(t, basePolicy)
	u := startWSUpstream(t, w)
	ws, err := dialWS(t, w, u, "allowed.test", "/ws", wsSecret)
	if err != nil {
		t.Fatalf("websocket upgrade through the proxy: %v", err)
	}
	for i := range 2 {
		var msg string
		if err := websocket.Message.Receive(ws, &msg); err != nil || msg != "key="+wsSecret {
			t.Fatalf("frame %d: %q %v", i, msg, err)
		}
	}
	if ext := u.extensions(); len(ext) != 1 || !strings.HasPrefix(ext[0], "permessage-deflate") {
		t.Fatalf("upstream saw %s %q, want the client's offer", wsExtensions, ext)
	}
}

// TestWebSocketUnofferedExtensionRefused: an upstream that switches to a
// compressed stream under an injecting rule gets no upgrade: fail closed.
func TestWebSocketUnofferedExtensionRefused(t *testing.T) {
	t.Setenv("PADDOCK_TEST_SECRET", wsSecret)
	w := newWorld(t, basePolicy)
	u := startWSUpstream(t, w)
	_, err := dialWS(t, w, u, "secret.test", "/ws-deflate", "")
	if err == nil || !strings.Contains(err.Error(), "bad status") {
		t.Fatalf("upgrade with an unoffered extension: err %v, want the handshake refused", err)
	}
	r := w.auditFor(func(r AuditRecord) bool { return r.Host == "secret.test" })
	if r.Status != http.StatusBadGateway || !strings.Contains(r.Error, "permessage-deflate") {
		t.Fatalf("audit: status %d error %q", r.Status, r.Error)
	}
}
