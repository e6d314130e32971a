package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/paddock-sandbox/paddock/proxy/policy"
)

// httpConn is one sandbox connection carrying HTTP (terminated TLS, plain
// HTTP, or the explicit proxy's absolute-form requests).
type httpConn struct {
	meta        *connMeta
	tls         bool
	sni         string
	connVerdict Verdict // the SNI decision of a terminated connection
	explicit    bool    // absolute-form requests: host and port come from the URL
}

func (s *Server) httpHandler(c *httpConn) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveRequest(w, r, c) })
}

// requestTarget returns the host and port a request goes to.
func requestTarget(r *http.Request, c *httpConn) (string, int, error) {
	hostport := r.Host
	if c.explicit {
		hostport = r.URL.Host
	}
	host, port, err := splitHostPort(hostport, 80)
	if err != nil {
		return "", 0, err
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if !validHost(host) {
		return "", 0, fmt.Errorf("%q is not a host name or IP address", host)
	}
	if !c.explicit {
		// The sandbox dialled this port; a Host header cannot move it.
		port = c.meta.port
	}
	return host, port, nil
}

func (s *Server) serveRequest(w http.ResponseWriter, r *http.Request, c *httpConn) {
	start := time.Now()
	rec := s.record(c.meta, "http")
	rec.SNI, rec.Method, rec.Path = c.sni, r.Method, r.URL.Path
	cw := &countingWriter{ResponseWriter: w}
	body := &countingBody{ReadCloser: r.Body}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	defer func() {
		rec.Status, rec.BytesDown, rec.BytesUp = cw.status, cw.n, body.n
		if rec.Decision == "" {
			rec.Decision = "allow"
		}
		s.finish(rec, start)
	}()
	host, port, err := requestTarget(r, c)
	rec.Host = host
	if c.explicit && err == nil {
		rec.Dst = net.JoinHostPort(host, strconv.Itoa(port))
	}
	deny := func(policyName, ruleID, reason string) {
		rec.Decision, rec.Policy, rec.Rule, rec.Error = "deny", policyName, ruleID, reason
		shown := host
		if shown == "" {
			shown = r.Host
		}
		denyText(cw, http.StatusForbidden, fmt.Sprintf("paddock: request to %s denied by policy %q (%s)\n", shown, policyName, reason))
	}
	pol := c.meta.sb.Policy
	switch {
	case err != nil:
		deny(pol, "", "unusable Host: "+err.Error())
		return
	case c.tls && !c.connVerdict.Allow:
		deny(c.connVerdict.Policy, c.connVerdict.RuleID(), c.connVerdict.Reason)
		return
	case c.tls && host != c.sni:
		deny(pol, "", fmt.Sprintf("Host %s does not match TLS SNI %s; domain fronting is refused", host, c.sni))
		return
	case !c.tls && c.meta.target != "" && host != c.meta.target:
		deny(pol, "", fmt.Sprintf("Host %s does not match the CONNECT host %s", host, c.meta.target))
		return
	case r.Method == http.MethodConnect:
		deny(pol, "", "CONNECT is only accepted by the explicit proxy")
		return
	}
	v := s.opt.Decider.Decide(c.meta.sb, policy.Query{Host: host, Port: port, Method: r.Method, Path: r.URL.Path})
	rec.Policy, rec.Rule = v.Policy, v.RuleID()
	if !v.Allow {
		deny(v.Policy, v.RuleID(), v.Reason)
		return
	}
	if len(v.Rule.Inject) > 0 && !c.tls {
		// The upstream leg would carry the credential in clear text.
		deny(v.Policy, v.RuleID(), "this rule injects credentials, which are only sent over TLS: use https://")
		return
	}
	key := c.meta.sb.HostVeth
	if ok, _ := s.reqs.acquire(key); !ok {
		// Over HTTP/2 a handful of connections carry any number of
		// requests, each forwarded on an upstream connection of its own:
		// the connection cap alone would not bound what one sandbox costs.
		rec.Decision, rec.Policy, rec.Rule = "deny", v.Policy, v.RuleID()
		rec.Error = fmt.Sprintf("over %d requests in flight from this sandbox", s.reqs.max)
		denyText(cw, http.StatusTooManyRequests, fmt.Sprintf("paddock: request to %s not sent: over %d requests in flight from this sandbox; retry when some finish\n", host, s.reqs.max))
		return
	}
	defer s.reqs.release(key)
	headers := map[string]string{}
	var secrets []string
	for _, inj := range v.Rule.Inject {
		secret, err := s.opt.Secrets.Secret(inj)
		if err != nil {
			rec.Error = err.Error()
			denyText(cw, http.StatusBadGateway, fmt.Sprintf("paddock: request to %s not sent: credential for header %s is unavailable (%v); ask the operator to provide it\n", host, inj.Header, err))
			return
		}
		headers[http.CanonicalHeaderKey(inj.Header)] = strings.ReplaceAll(inj.Value, "{secret}", secret)
		secrets = append(secrets, secret)
		rec.Injected = append(rec.Injected, http.CanonicalHeaderKey(inj.Header))
	}
	cw.secrets = secrets
	scheme := "http"
	if c.tls {
		scheme = "https"
	}
	hostport := host
	if !(scheme == "https" && port == 443 || scheme == "http" && port == 80) {
		hostport = net.JoinHostPort(host, strconv.Itoa(port))
	}
	var sent time.Time
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = &url.URL{Scheme: scheme, Host: hostport, Path: pr.In.URL.Path, RawPath: pr.In.URL.RawPath, RawQuery: pr.In.URL.RawQuery}
			pr.Out.Host = hostport
			for name, val := range headers {
				pr.Out.Header[name] = []string{val}
			}
			if len(secrets) > 0 {
				// The transport then asks for gzip itself and decompresses, so
				// the redactor sees plain bytes; for the same reason a
				// WebSocket upgrade may not offer permessage-deflate.
				pr.Out.Header.Del("Accept-Encoding")
				pr.Out.Header.Del(wsExtensions)
			}
			sent = time.Now()
		},
		Transport:     s.transports[v.Rule.AllowPrivate],
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
		ModifyResponse: func(resp *http.Response) error {
			s.opt.Metrics.UpstreamLatency.Observe(time.Since(sent).Seconds())
			if len(secrets) > 0 {
				redactHeaders(resp.Header, secrets)
				if resp.StatusCode == http.StatusSwitchingProtocols {
					return maskUpgrade(resp, secrets)
				}
				if resp.Body != nil {
					resp.Body = &trailerRedactor{ReadCloser: newRedactReader(resp.Body, secrets), resp: resp, secrets: secrets}
					resp.ContentLength = -1
					resp.Header.Del("Content-Length")
				}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			rec.Error = err.Error()
			if errors.Is(err, ErrForbiddenAddr) {
				rec.Decision = "deny"
				denyText(w, http.StatusForbidden, fmt.Sprintf("paddock: request to %s denied by policy %q (it resolves to an internal address: %v; a rule needs allowPrivate: true)\n", host, v.Policy, err))
				return
			}
			if errors.Is(err, context.Canceled) {
				return
			}
			denyText(w, http.StatusBadGateway, fmt.Sprintf("paddock: upstream %s failed: %v\n", host, err))
		},
	}
	rp.ServeHTTP(cw, r)
}

func denyText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg)
}

// countingWriter records the status and counts body bytes to the sandbox.
type countingWriter struct {
	http.ResponseWriter
	status  int
	n       int64
	secrets []string // injected into the request: redacted from 1xx headers
}

func (w *countingWriter) WriteHeader(code int) {
	if code < 200 && len(w.secrets) > 0 {
		// ReverseProxy copies informational responses (103 Early Hints)
		// from the upstream straight into our header map, past
		// ModifyResponse.
		redactHeaders(w.Header(), w.secrets)
	}
	if w.status == 0 || w.status < 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
