package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// FuzzRequestTarget feeds arbitrary request heads through net/http's parser
// and the proxy's host/port extraction, on the transparent and the explicit
// path: whatever the sandbox sends, the decision only ever sees a valid
// host name or IP literal, and a transparent request cannot move its port.
func FuzzRequestTarget(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET http://blocked.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: allowed.test@blocked.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: ALLOWED.TEST.:8080\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"CONNECT blocked.test:443 HTTP/1.1\r\nHost: blocked.test:443\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: 127.0.0.1:0x50\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			return
		}
		for _, explicit := range []bool{false, true} {
			c := &httpConn{meta: &connMeta{port: 8443}, explicit: explicit}
			host, port, err := requestTarget(r, c)
			if err != nil {
				continue
			}
			if !validHost(host) || host != strings.ToLower(host) || strings.HasSuffix(host, ".") {
				t.Fatalf("requestTarget(%q) host %q", head, host)
			}
			if port < 1 || port > 65535 || !explicit && port != 8443 {
				t.Fatalf("requestTarget(%q) port %d (explicit %v)", head, port, explicit)
			}
		}
	})
}
