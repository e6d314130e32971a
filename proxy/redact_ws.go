package proxy

import (
	"fmt"
	"io"
	"net/http"
)

// An upgraded connection (WebSocket after 101 Switching Protocols) is
// spliced, not parsed, so a secret the upstream echoes there is masked in
// the raw byte stream. The mask keeps every length: a WebSocket frame
// header states its payload length, and Redacted would make the sandbox
// misread every frame after the first match. Server-to-client frames are
// not masked by the protocol, so a secret sent in one frame appears there
// verbatim and is caught even when TCP splits it across reads. Not covered:
// a secret the upstream splits across two frames (a fragmented message),
// where a frame header interrupts its bytes, and any encoding of it
// (compression, base64), which is why the upgrade request loses
// Sec-WebSocket-Extensions first.

// wsExtensions is the header by which a WebSocket client offers
// permessage-deflate; compressed frames would hide a secret from the mask.
const wsExtensions = "Sec-WebSocket-Extensions"

// maskUpgrade wraps the upstream side of an upgraded connection so that
// what it sends to the sandbox has each secret replaced by as many '*'
// bytes. It refuses (the caller answers 502) an upstream that accepted an
// extension the stripped request did not offer.
func maskUpgrade(resp *http.Response, secrets []string) error {
	if ext := resp.Header.Get(wsExtensions); ext != "" {
		return fmt.Errorf("upstream accepted WebSocket extension %q that was not offered; refused because a compressed stream could carry the injected credential", ext)
	}
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		// ReverseProxy refuses a 101 whose body it cannot write to.
		return nil
	}
	r := newRedactReader(back, secrets)
	r.mask = true
	resp.Body = &maskedConn{redactReader: r, back: back}
	return nil
}

// maskedConn reads from the upstream through the mask and writes to it
// unchanged. It has no WriteTo, so io.Copy reads through the mask.
type maskedConn struct {
	*redactReader // Read masks; Close closes the upstream connection
	back          io.Writer
}

func (c *maskedConn) Write(p []byte) (int, error) { return c.back.Write(p) }
