package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// trailerAtEOF fills resp.Trailer when the body ends, as net/http's client does.
type trailerAtEOF struct {
	io.Reader
	resp *http.Response
	val  string
}

func (b *trailerAtEOF) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF {
		b.resp.Trailer = http.Header{"X-Error": {b.val}}
	}
	return n, err
}

func (b *trailerAtEOF) Close() error { return nil }

// TestRedactTrailersAndInformational: a secret an upstream quotes in a
// trailer or in a 103 Early Hints response is redacted like one in the
// final headers or the body.
func TestRedactTrailersAndInformational(t *testing.T) {
	secrets := []string{"s3cr3t-value-123"}
	resp := &http.Response{}
	resp.Body = &trailerRedactor{ReadCloser: newRedactReader(&trailerAtEOF{Reader: strings.NewReader("body"), resp: resp, val: "invalid key s3cr3t-value-123"}, secrets), resp: resp, secrets: secrets}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	if got := resp.Trailer.Get("X-Error"); got != "invalid key "+Redacted {
		t.Fatalf("trailer after the body: %q", got)
	}

	cw := &countingWriter{ResponseWriter: httptest.NewRecorder(), secrets: secrets}
	cw.Header().Set("Link", "</k?key=s3cr3t-value-123>; rel=preload")
	cw.WriteHeader(http.StatusEarlyHints)
	if got := cw.Header().Get("Link"); strings.Contains(got, "s3cr3t") {
		t.Fatalf("103 header sent as %q", got)
	}
}
