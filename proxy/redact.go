package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
)

// Redacted replaces an injected secret an upstream echoes back.
const Redacted = "[paddock:redacted]"

func redactHeaders(h http.Header, secrets []string) {
	for name, vals := range h {
		for i, v := range vals {
			for _, s := range secrets {
				v = strings.ReplaceAll(v, s, Redacted)
			}
			vals[i] = v
		}
		h[name] = vals
	}
}

// redactReader replaces secrets in a stream. It holds back only the tail of
// what it has read that begins a secret, since a secret split across two
// reads can only start there; everything else goes out at once, so a
// streamed response (server-sent events) is not delayed until more arrives.
type redactReader struct {
	src     io.ReadCloser
	secrets [][]byte
	keep    int
	mask    bool   // replace a secret by as many '*' bytes instead of Redacted
	pending []byte // read, not yet scanned to the end
	out     []byte // ready for the caller
	err     error
	buf     []byte
}

func newRedactReader(src io.ReadCloser, secrets []string) *redactReader {
	r := &redactReader{src: src, buf: make([]byte, 32<<10)}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		r.secrets = append(r.secrets, []byte(s))
		r.keep = max(r.keep, len(s)-1)
	}
	return r
}

func (r *redactReader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		n, err := r.src.Read(r.buf)
		r.pending = append(r.pending, r.buf[:n]...)
		if err != nil {
			r.err = err
		}
		r.scan(err != nil)
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// scan moves what is certainly secret-free (or redacted) from pending to out.
func (r *redactReader) scan(final bool) {
	for {
		at, which := -1, -1
		for i, s := range r.secrets {
			if j := bytes.Index(r.pending, s); j >= 0 && (at < 0 || j < at) {
				at, which = j, i
			}
		}
		if at < 0 {
			break
		}
		r.out = append(r.out, r.pending[:at]...)
		if r.mask {
			r.out = append(r.out, bytes.Repeat([]byte{'*'}, len(r.secrets[which]))...)
		} else {
			r.out = append(r.out, Redacted...)
		}
		r.pending = r.pending[at+len(r.secrets[which]):]
	}
	cut := len(r.pending)
	if !final {
		cut -= r.partial()
	}
	if cut > 0 {
		r.out = append(r.out, r.pending[:cut]...)
		r.pending = append(r.pending[:0:0], r.pending[cut:]...)
	}
}

func (r *redactReader) Close() error { return r.src.Close() }

// partial is the length of the longest tail of pending that is the start of
// a secret (at most keep bytes: pending holds no whole secret any more).
func (r *redactReader) partial() int {
	for n := min(r.keep, len(r.pending)); n > 0; n-- {
		tail := r.pending[len(r.pending)-n:]
		for _, s := range r.secrets {
			if bytes.HasPrefix(s, tail) {
				return n
			}
		}
	}
	return 0
}

// trailerRedactor redacts the response's trailers once its body is read to
// the end: the client fills them in only then, and ReverseProxy copies them
// to the sandbox after the body. gRPC carries its error messages (which
// may quote a rejected key) there.
type trailerRedactor struct {
	io.ReadCloser
	resp    *http.Response
	secrets []string
}

func (r *trailerRedactor) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err == io.EOF {
		redactHeaders(r.resp.Trailer, r.secrets)
	}
	return n, err
}
