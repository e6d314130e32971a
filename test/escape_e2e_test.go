package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/proxy"
	"github.com/paddock-sandbox/paddock/test/testutil"
	"github.com/paddock-sandbox/paddock/test/world"
)

// TestEscape is the adversarial suite: sandbox "esca" plays a prompt-injected
// agent with root (CAP_NET_ADMIN, CAP_NET_RAW) in its own namespace and tries
// to reach what policy does not name, the node's own services, the other
// sandbox, to exfiltrate over DNS/UDP/ICMP/IPv6 and odd frames, and to learn
// the injected credential. Every attack must fail with the leak detector and
// every canary silent. One world serves all attacks to keep the suite short.
func TestEscape(t *testing.T) {
	runEscapes(t, newEscEnv(t, "bpf"), []escape{
		{"NodeServices", escNodeServices},
		{"ExplicitProxyInternal", escExplicitInternal},
		{"TLSPolicyBypass", escTLSBypass},
		{"HTTPPolicyBypass", escHTTPBypass},
		{"Passthrough", escPassthrough},
		{"DNSExfil", escDNS},
		{"NonTCP", escNonTCP},
		{"RawFrames", escRawFrames},
		{"IPv6", escIPv6},
		{"Lateral", escLateral},
		{"Credentials", escCredentials},
		{"Resources", escResources},
		{"ReloadKeepAlive", escReloadKeepAlive},
		{"Identity", escIdentity},
		// Last: the half-open connections it leaves behind live for a while.
		{"SynFlood", escSynFlood},
	})
}

// TestEscapeNftables repeats the data-path attacks (everything below the
// proxy, which is the same code in both modes) with the nftables TPROXY
// redirect instead of BPF.
func TestEscapeNftables(t *testing.T) {
	runEscapes(t, newEscEnv(t, "nftables"), []escape{
		{"NodeServices", escNodeServices},
		{"NonTCP", escNonTCP},
		{"RawFrames", escRawFrames},
		{"IPv6", escIPv6},
		{"Lateral", escLateral},
		{"Identity", escIdentity},
		{"SynFlood", escSynFlood},
	})
}

// escape is one attack, run as a subtest in a shared world.
type escape struct {
	name string
	run  func(*testing.T, *escEnv)
}

// runEscapes runs the attacks in order, then checks that nothing got out.
func runEscapes(t *testing.T, e *escEnv, attacks []escape) {
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) { a.run(t, e) })
	}
	e.assertContained(t)
}

var escMetricsText = regexp.MustCompile(`# (HELP|TYPE) |canary reached|go_goroutines|paddock_`)

// escNodeServices: TCP to the gateway and to the node's uplink on the ports
// of paddockd's metrics, the proxy's metrics, ssh, 15001 and DNS-as-HTTP all
// ends at the proxy, which refuses them.
func escNodeServices(t *testing.T, e *escEnv) {
	out := e.py(t, e.a, `
for dst in (GW, NODE):
    for port in (9464, 9465, 22, 2222, 15001, 53, 3128, 80):
        try:
            s=socket.create_connection((dst,port),timeout=2)
            s.sendall(b'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nConnection: close\r\n\r\n')
            d=b''
            while len(d)<8192:
                x=s.recv(8192)
                if not x: break
                d+=x
            print(dst,port,'->',d[:200])
        except Exception as ex: print(dst,port,'->',type(ex).__name__,ex)
`)
	t.Log(out)
	if escMetricsText.MatchString(out) {
		t.Errorf("a node service answered the sandbox:\n%s", out)
	}
	// A route to loopback through the gateway: the kernel refuses it as a
	// martian, or the packets die at the node.
	rt := e.py(t, e.a, `
import subprocess
print(subprocess.run(['ip','route','add','127.0.0.0/8','via',GW],capture_output=True,text=True))
try:
    s=socket.create_connection(('127.0.0.1',9464),timeout=2); s.sendall(b'GET /metrics HTTP/1.0\r\n\r\n'); print(s.recv(4096))
except Exception as ex: print('connect:',ex)
subprocess.run(['ip','route','del','127.0.0.0/8','via',GW],capture_output=True)
`)
	t.Log(rt)
	if escMetricsText.MatchString(rt) {
		t.Errorf("loopback reached through a route trick:\n%s", rt)
	}
	// The same with hand-made frames to 127.0.0.1 and the node's uplink.
	e.py(t, e.a, `
send(frame(ip4(SRC,'127.0.0.1',6,tcp(SRC,'127.0.0.1',40001,9464,0x02))),
     frame(ip4(SRC,'127.0.0.1',6,tcp(SRC,'127.0.0.1',40001,9464,0x10,ack=1))),
     frame(ip4(SRC,NODE,6,tcp(SRC,NODE,40002,2222,0x10,ack=1))),
     frame(ip4(SRC,GW,6,tcp(SRC,GW,40003,22,0x10,ack=1))))
`)
	e.assertContained(t)
}

// escExplicitInternal: the explicit proxy (gateway:3128) is asked for the
// node's services by absolute-form URL, Host header and CONNECT.
func escExplicitInternal(t *testing.T, e *escEnv) {
	reqs := []string{
		"GET http://127.0.0.1:9464/metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n",
		"GET http://localhost:9465/metrics HTTP/1.1\r\nHost: localhost:9465\r\n\r\n",
		"GET http://" + e.gw.String() + ":9464/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://2130706433:9464/metrics HTTP/1.1\r\nHost: 2130706433:9464\r\n\r\n",
		"GET http://allowed.test/ HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n",
		"GET http://allowed.test:2222/ HTTP/1.1\r\nHost: allowed.test:2222\r\n\r\n",
		"GET http://allowed.test@127.0.0.1:9464/metrics HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"CONNECT 127.0.0.1:9464 HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\nGET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n",
		"CONNECT " + e.gw.String() + ":9464 HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT [::1]:9464 HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n",
		"CONNECT node.test:2222 HTTP/1.1\r\n\r\n",
		"CONNECT allowed.test:22 HTTP/1.1\r\n\r\n",
		"CONNECT allowed.test:443@blocked.test HTTP/1.1\r\n\r\n",
		"CONNECT allowed.test:80 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"CONNECT allowed.test:80 HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n",
	}
	for _, req := range reqs {
		out := e.py(t, e.a, `
s=socket.create_connection((GW,3128),timeout=3); s.sendall(sys.argv[1].encode()); s.settimeout(1)
d=b''
try:
    while len(d)<8192:
        x=s.recv(8192)
        if not x: break
        d+=x
except Exception as ex: d+=('\n[%s]'%ex).encode()
print(d.decode(errors='replace')[:600])
`, req)
		line := strings.SplitN(req, "\r\n", 2)[0]
		t.Logf("%s\n  -> %s", line, strings.ReplaceAll(strings.TrimSpace(out), "\n", "\n     "))
		if escMetricsText.MatchString(out) || strings.Contains(out, "hello from blocked.test") {
			t.Errorf("%s: the explicit proxy reached something it must not:\n%s", line, out)
		}
		// Absolute-form: the URL names the target, whatever Host says.
		if !strings.Contains(out, " 403 ") && !strings.Contains(out, " 400 ") && !strings.Contains(out, "hello from allowed.test") {
			t.Errorf("%s: want a 403 or 400 refusal\n%s", line, out)
		}
	}
	e.assertContained(t)
}

// escTLSBypass: terminated TLS where SNI and Host disagree or are missing,
// odd SNI spellings, and the wildcard's edges.
func escTLSBypass(t *testing.T, e *escEnv) {
	web := world.WebAddr.String()
	// SNI allowed, Host something else, over HTTP/1.1 and HTTP/2.
	for _, host := range []string{"blocked.test", "allowed.test@blocked.test", "blocked.test#allowed.test",
		"allowed.test:443@blocked.test", "127.0.0.1:9464", "other.test", "BLOCKED.TEST"} {
		for _, h2 := range []string{"--http1.1", "--http2"} {
			out := e.curl(t, e.a, h2, "-i", "--resolve", "allowed.test:443:"+web, "-H", "Host: "+host, "https://allowed.test/")
			// Go's HTTP/2 server resets a stream whose :authority is not a
			// valid host: a refusal too.
			refused := regexp.MustCompile(`HTTP/\S+ (403|400)|PROTOCOL_ERROR`).MatchString(out)
			if !refused || strings.Contains(out, "hello from") {
				t.Errorf("SNI allowed.test, Host %q (%s): want 403/400\n%s", host, h2, out)
			}
		}
	}
	// Raw request lines curl will not send: the same host twice, obs-fold,
	// absolute-form inside TLS.
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: blocked.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: allowed.test\r\n blocked.test\r\n\r\n",
		"GET https://blocked.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		out := e.py(t, e.a, `
ctx=ssl.create_default_context(cafile=CA)
s=ctx.wrap_socket(socket.create_connection((WEB,443),timeout=3),server_hostname='allowed.test')
s.sendall(sys.argv[1].encode()); s.settimeout(1); d=b''
try:
    while len(d)<8192:
        x=s.recv(8192)
        if not x: break
        d+=x
except Exception as ex: d+=('\n[%s]'%ex).encode()
print(d.decode(errors='replace')[:400])
`, req)
		if strings.Contains(out, "hello from blocked.test") || strings.Contains(out, "hello from allowed.test") && strings.Contains(req, "blocked") {
			t.Errorf("TLS raw %q:\n%s", req, out)
		}
		if !regexp.MustCompile(`HTTP/\S+ (403|400)`).MatchString(out) {
			t.Errorf("TLS raw %q: want 403/400\n%s", req, out)
		}
	}
	// SNI spellings: uppercase of a blocked name, a trailing dot, an IP
	// literal, no SNI at all, the wildcard's suffix itself and a look-alike.
	for _, sni := range []string{"BLOCKED.TEST", "blocked.test.", web, "", "wild.test", "evilwild.test", "allowed.test.evil"} {
		out := e.py(t, e.a, escHelloPy+`
sni=sys.argv[1] or None
sendhello(WEB,443,hello(sni))
`, sni)
		t.Logf("ClientHello SNI %q: %s", sni, strings.TrimSpace(out))
	}
	recs := e.audit(t)
	for _, r := range recs {
		if r.Decision == "allow" && (strings.Contains(r.SNI, "blocked") || r.SNI == web || r.SNI == "wild.test" || r.SNI == "evilwild.test" || strings.Contains(r.SNI, "evil")) {
			t.Errorf("audit shows an allowed connection for SNI %q: %+v", r.SNI, r)
		}
	}
	// The wildcard itself works below the suffix, and only there.
	if out := e.curl(t, e.a, "https://a.wild.test/"); !strings.Contains(out, "hello from a.wild.test") {
		t.Errorf("a.wild.test (allowed by *.wild.test): %s", out)
	}
	for _, n := range []string{"wild.test", "evilwild.test"} {
		if out := e.curl(t, e.a, "-i", "--resolve", n+":443:"+web, "https://"+n+"/"); !regexp.MustCompile(`HTTP/\S+ 403`).MatchString(out) {
			t.Errorf("%s must not match *.wild.test: %s", n, out)
		}
	}
	// TLS to port 80 and plain HTTP to port 443 are decided the same way.
	if out := e.curl(t, e.a, "-i", "--resolve", "blocked.test:80:"+web, "https://blocked.test:80/"); !regexp.MustCompile(`HTTP/\S+ 403`).MatchString(out) {
		t.Errorf("TLS to :80 for blocked.test: %s", out)
	}
	if out := e.curl(t, e.a, "-i", "--resolve", "blocked.test:443:"+web, "http://blocked.test:443/"); !regexp.MustCompile(`HTTP/\S+ 403`).MatchString(out) {
		t.Errorf("plain HTTP to :443 for blocked.test: %s", out)
	}
	// WebSocket upgrade to a blocked host.
	out := e.curl(t, e.a, "-i", "--resolve", "blocked.test:443:"+web, "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
		"-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "https://blocked.test/")
	if !regexp.MustCompile(`HTTP/\S+ 403`).MatchString(out) {
		t.Errorf("WebSocket upgrade to blocked.test: %s", out)
	}
	e.assertContained(t)
}

// escHTTPBypass: plain HTTP on a transparent connection, where the request
// line, Host and keep-alive pipelining disagree.
func escHTTPBypass(t *testing.T, e *escEnv) {
	cases := []string{
		// Absolute-form in a transparent request: the URL's host is the target.
		"GET http://blocked.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		// HTTP/1.0 without Host.
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: allowed.test@blocked.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: blocked.test#allowed.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: allowed.test:80@blocked.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n",
		// Pipelined: an allowed request, then one to a blocked host.
		"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		// Smuggling shapes: CL and TE together, the body hiding a request.
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: x, chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 38\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		// obs-fold continuing Host.
		"GET / HTTP/1.1\r\nHost: allowed.test\r\n blocked.test\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		// An Upgrade to h2c, then a blocked request.
		"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		// CONNECT on a transparent connection.
		"CONNECT blocked.test:443 HTTP/1.1\r\nHost: blocked.test:443\r\n\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		// WebSocket to a blocked host.
		"GET / HTTP/1.1\r\nHost: blocked.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
	}
	for _, req := range cases {
		out := e.py(t, e.a, `
s=socket.create_connection((WEB,80),timeout=3); s.sendall(sys.argv[1].encode()); s.settimeout(1); d=b''
try:
    while len(d)<16384:
        x=s.recv(8192)
        if not x: break
        d+=x
except Exception as ex: d+=('\n[%s]'%ex).encode()
print(d.decode(errors='replace')[:1200])
`, req)
		if strings.Contains(out, "hello from blocked.test") || escMetricsText.MatchString(out) {
			t.Errorf("plain HTTP %q reached a blocked host:\n%s", req, out)
		}
		t.Logf("%q\n  -> %s", req, strings.Join(regexp.MustCompile(`HTTP/1\.\d \d+[^\r\n]*|hello from \S+|\[.*\]`).FindAllString(out, -1), " | "))
	}
	e.assertContained(t)
}

// escPassthrough: a passthrough rule decides by SNI only.
func escPassthrough(t *testing.T, e *escEnv) {
	web := world.WebAddr.String()
	// A passthrough ClientHello announcing Encrypted Client Hello: the SNI
	// the proxy reads is then only the outer, public name and the upstream
	// may route on the encrypted inner one, a host policy never saw. Refused.
	dial := world.DialerIn(e.a.NetNS)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := dial(ctx, "tcp4", web+":443")
	if err != nil {
		t.Fatal(err)
	}
	ech := tls.Client(raw, &tls.Config{ServerName: "blocked.test", MinVersion: tls.VersionTLS13, RootCAs: e.w.CA().Pool(),
		EncryptedClientHelloConfigList: testutil.ECHConfigList(t, "passthrough.test")})
	_ = ech.SetDeadline(time.Now().Add(3 * time.Second))
	t.Logf("ECH handshake (inner blocked.test, outer passthrough.test): %v", ech.HandshakeContext(ctx))
	ech.Close()
	if r, ok := e.waitAudit(t, "ECH ClientHello to passthrough.test", func(r proxy.AuditRecord) bool {
		return r.SNI == "passthrough.test" && r.Kind != "http" && r.Time.After(time.Now().Add(-10*time.Second))
	}); ok && (r.Decision != "deny" || !strings.Contains(r.Error, "Encrypted Client Hello")) {
		t.Errorf("passthrough with ECH: want a deny naming Encrypted Client Hello, got %+v", r)
	}
	// A plain passthrough connection is spliced to the SNI's name; what the
	// client then asks inside the encrypted stream (Host: blocked.test) is
	// between it and that upstream: the proxy cannot see it. The world's
	// server serves every name, so this only shows where the bytes went.
	out := e.py(t, e.a, `
ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
s=ctx.wrap_socket(socket.create_connection((WEB,443),timeout=3),server_hostname='passthrough.test')
s.sendall(b'GET / HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n'); print(s.recv(4096).decode(errors='replace'))
`)
	t.Logf("passthrough.test with inner Host blocked.test (upstream's choice, not checkable): %s", strings.TrimSpace(out))
	if out := e.curl(t, e.a, "-i", "--resolve", "blocked.test:443:"+web, "--connect-to", "blocked.test:443:passthrough.test:443", "https://blocked.test/"); strings.Contains(out, "hello from blocked.test") {
		t.Errorf("blocked.test reached: %s", out)
	}
	e.assertContained(t)
}

// escDNS: tunnel-shaped questions, oversized names, odd transports and flags.
func escDNS(t *testing.T, e *escEnv) {
	before := len(e.w.DNSQueries())
	dig := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		defer cancel()
		out, err := e.a.Exec(ctx, append([]string{"dig", "+time=2", "+tries=1"}, args...)...)
		if err != nil {
			return fmt.Sprintf("%s\n(exit %v)", out, err)
		}
		return string(out)
	}
	for _, q := range [][]string{
		{"allowed.test", "TXT"}, {"allowed.test", "NULL"}, {"allowed.test", "ANY"}, {"allowed.test", "MX"},
		{"allowed.test", "SRV"}, {"allowed.test", "CAA"}, {"+tcp", "allowed.test", "AXFR"}, {"allowed.test", "IXFR=1"},
		{"-x", world.WebAddr.String()}, {"data.a.wild.test", "TXT"}, {"allowed.test", "A", "CH"},
		{"@" + world.OtherWebAddr.String(), "+tcp", "blocked.test", "A"},
	} {
		out := dig(q...)
		if !strings.Contains(out, "status: REFUSED") && !strings.Contains(out, "status: NXDOMAIN") && !strings.Contains(out, "Transfer failed") &&
			!strings.Contains(out, "communications error") && !strings.Contains(out, "timed out") {
			t.Errorf("dig %v: want a refusal\n%s", q, out)
		}
	}
	// Oversized labels and names, a TC-flagged query, an EDNS client
	// subnet, and UDP DNS to a port other than 53 (dropped as UDP).
	out := e.py(t, e.a, `
def q(name, qtype=1, flags=0x0100, extra=b'', arcount=0):
    b=b''.join(bytes([len(l)])+l.encode() for l in name.split('.'))+b'\0'
    return struct.pack('!HHHHHH',0x1234,flags,1,0,0,arcount)+b+struct.pack('!HH',qtype,1)+extra
ecs=b'\0'+struct.pack('!HHIH',41,1232,0,11)+struct.pack('!HHHBB',8,7,1,24,0)+bytes([10,0,0])
tests={'label64': q('a'*64+'.a.wild.test'), 'name300': q('.'.join(['b'*60]*5)+'.a.wild.test'),
       'tc': q('tc.a.wild.test', flags=0x0300), 'ecs': q('ecs.a.wild.test', extra=ecs, arcount=1),
       'two-questions': struct.pack('!HHHHHH',1,0x100,2,0,0,0)+q('x.a.wild.test')[12:]*2,
       'notify': q('n.a.wild.test', flags=0x2000|0x0100), 'response': q('r.a.wild.test', flags=0x8100)}
for k,v in tests.items():
    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2); s.sendto(v,(GW,53))
    r=tryrecv(s); print(k, 'rcode', (r[3]&15) if len(r)>3 and not r.startswith(b'ERR') else r[:40])
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q('allowed.test'),('192.0.2.53',5353)); print('dns-to-5353', tryrecv(s)[:40])
`)
	t.Log(out)
	for _, want := range []string{"label64 rcode 5", "name300 rcode 5", "two-questions rcode 5", "notify rcode 5"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q (REFUSED) in\n%s", want, out)
		}
	}
	if strings.Contains(out, "response rcode") && !strings.Contains(out, "response rcode 5") {
		t.Errorf("a DNS response sent as a query was answered:\n%s", out)
	}
	if !strings.Contains(out, "dns-to-5353 b'ERR") {
		t.Errorf("DNS to port 5353 was answered:\n%s", out)
	}
	qs := e.w.DNSQueries()[before:]
	for _, q := range qs {
		f := strings.Fields(q)
		if len(f) > 0 && f[0] != "A" && f[0] != "HTTPS" && f[0] != "SVCB" && f[0] != "CNAME" {
			t.Errorf("a %s question reached the authoritative server: %q", f[0], q)
		}
		if strings.Contains(q, "blocked") || strings.Contains(q, strings.Repeat("a", 64)) {
			t.Errorf("question reached the authoritative server: %q", q)
		}
	}
	// Inherent: with "*.wild.test" allowed, names below it are the
	// authoritative server's to see, so data can ride in query names (63
	// octets a label, 253 a name). Measure how much gets through in 2 s.
	before = len(e.w.DNSQueries())
	out = e.py(t, e.a, `
import binascii
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setblocking(False)
sent=0; t0=time.time()
while time.time()-t0<2 and sent<2000:
    n='x%04d.%s.a.wild.test'%(sent, binascii.hexlify(os.urandom(30)).decode())
    b=b''.join(bytes([len(l)])+l.encode() for l in n.split('.'))+b'\0'
    try: s.sendto(struct.pack('!HHHHHH',sent,0x100,1,0,0,0)+b+struct.pack('!HH',1,1),(GW,53)); sent+=1
    except BlockingIOError: time.sleep(0.001)
time.sleep(1); print('sent',sent)
`)
	time.Sleep(500 * time.Millisecond)
	got := len(e.w.DNSQueries()) - before
	t.Logf("DNS exfil through an allowed wildcard: %s, %d distinct names reached the authoritative server (inherent to *.suffix rules, bounded by the guard's per-sandbox rate)", strings.TrimSpace(out), got)
	// 2 s of sending plus 1 s of draining at DefaultDNSRate after a
	// DefaultDNSBurst, with slack for timing.
	if limit := proxy.DefaultDNSBurst + 4*proxy.DefaultDNSRate; got > limit {
		t.Errorf("%d questions reached the upstream in about 3 s: the guard's rate limit (%d/s, burst %d) is not applied", got, proxy.DefaultDNSRate, proxy.DefaultDNSBurst)
	}
	e.assertContained(t)
}

// escNonTCP: every non-TCP, non-DNS IP protocol is dropped at the node.
func escNonTCP(t *testing.T, e *escEnv) {
	out := e.py(t, e.a, `
import subprocess
def udpsend(dst,port,data=b'x'*64,bcast=False):
    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
    if bcast: s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)
    s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton(SRC))
    try: s.sendto(data,(dst,port))
    except Exception as ex: print('udp',dst,port,ex)
    return s
socks=[udpsend(WEB,443,b'\xc0\x00\x00\x00\x01'+b'q'*1200), udpsend(ECHO,7), udpsend(GW,9999), udpsend(GW,5353),
       udpsend('224.0.0.251',5353), udpsend('255.255.255.255',9999,bcast=True), udpsend(NODE,443), udpsend(OTHERSB,9999)]
for s in socks:
    s.settimeout(0.3); r=tryrecv(s)
    if not r.startswith(b'ERR'): print('UDP ANSWERED', r[:40])
# a UDP socket bound to source port 53
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((SRC,53)); s.sendto(b'y'*40,(ECHO,7)); s.settimeout(0.5); r=tryrecv(s)
if not r.startswith(b'ERR'): print('UDP53 ANSWERED', r[:40])
print(subprocess.run(['ping','-c1','-W1','-p','deadbeefcafe',ECHO],capture_output=True,text=True).stdout.splitlines()[-2:])
print(subprocess.run(['ping','-c1','-W1','-s','1400',GW],capture_output=True,text=True).stdout.splitlines()[-2:])
print(subprocess.run(['ping','-c1','-W1','-b','255.255.255.255'],capture_output=True,text=True).stdout.splitlines()[-2:])
def raw(proto,dst,payload):
    s=socket.socket(socket.AF_INET,socket.SOCK_RAW,proto)
    try: s.sendto(payload,(dst,0))
    except Exception as ex: print('raw',proto,dst,ex)
ts=struct.pack('!BBHHHIII',13,0,0,1,1,0,0,0); ts=ts[:2]+struct.pack('!H',csum(ts))+ts[4:]
igmp=struct.pack('!BBH4s',0x16,0,0,socket.inet_aton('239.1.2.3')); igmp=igmp[:2]+struct.pack('!H',csum(igmp))+igmp[4:]
for dst in (ECHO,GW,NODE):
    raw(1,dst,ts); raw(2,dst,igmp); raw(132,dst,b'\x13\x88\x13\x88'+b'\0'*8+b'\x01\x00\x00\x14'+b'\0'*16)
    raw(47,dst,b'\x00\x00\x08\x00'+ip4(SRC,ECHO,17,udp(SRC,ECHO,1234,7,b'gre'))); raw(4,dst,ip4(SRC,ECHO,17,udp(SRC,ECHO,1234,7,b'ipip')))
raw(2,'224.0.0.22',igmp)
`)
	t.Log(out)
	if strings.Contains(out, "ANSWERED") || strings.Contains(out, " 0% packet loss") {
		t.Errorf("a non-TCP packet got an answer:\n%s", out)
	}
	e.assertContained(t)
}

// escRawFrames: hand-made frames: IP options, fragments, VLAN tags, ARP
// lies, a second address, another MAC, jumbo frames.
func escRawFrames(t *testing.T, e *escEnv) {
	out := e.py(t, e.a, `
# IP options: loose source route via the gateway to the echo server, on a
# SYN, a bare ACK and a UDP datagram; record-route on a SYN.
lsrr=bytes([0x83,7,4])+socket.inet_aton(ECHO)+b'\x01'
rr=bytes([7,7,4])+b'\0'*4+b'\x01'
send(frame(ip4(SRC,GW,6,tcp(SRC,GW,41000,7,0x02),opts=lsrr)),
     frame(ip4(SRC,GW,6,tcp(SRC,GW,41001,7,0x10,ack=5),opts=lsrr)),
     frame(ip4(SRC,GW,17,udp(SRC,GW,41002,7,b'lsrr'),opts=lsrr)),
     frame(ip4(SRC,ECHO,6,tcp(SRC,ECHO,41003,7,0x02),opts=rr)))
# Fragments: a TCP SYN and a UDP DNS query split in two, offsets 0 and 8.
for proto,seg in ((6,tcp(SRC,ECHO,41004,7,0x02)),(17,udp(SRC,ECHO,41005,53,b'\x12\x34'+b'\0'*30))):
    send(frame(ip4(SRC,ECHO,proto,seg[:8],frag=0x2000,ident=0x77)), frame(ip4(SRC,ECHO,proto,seg[8:],frag=1,ident=0x77)))
    send(frame(ip4(SRC,ECHO,proto,seg[8:],frag=1,ident=0x78)), frame(ip4(SRC,ECHO,proto,seg[:8],frag=0x2000,ident=0x78)))
# VLAN 802.1Q (id 5 and priority tag 0) and QinQ around UDP to echo.
u=ip4(SRC,ECHO,17,udp(SRC,ECHO,41006,7,b'vlan'))
for tag in (b'\x81\x00\x00\x05', b'\x81\x00\x00\x00', b'\x88\xa8\x00\x05\x81\x00\x00\x06'):
    send(GWMAC+MYMAC+tag+b'\x08\x00'+u)
# Other ethertypes: MPLS, PPPoE, LLDP, raw IPX-ish garbage.
for et in (0x8847,0x8864,0x88cc,0x8137,0x0801):
    send(frame(u,etype=et))
# Spoofed sources: another sandbox's IP, the gateway's, the echo server's.
for src in (OTHERSB,GW,ECHO,'10.250.0.2'):
    send(frame(ip4(src,ECHO,17,udp(src,ECHO,41007,7,b'spoof'))), frame(ip4(src,ECHO,6,tcp(src,ECHO,41008,7,0x02))))
# Another source MAC, also broadcast and multicast ones.
for mac in (bytes.fromhex('020000000099'), b'\xff'*6, bytes.fromhex('01005e000001')):
    send(frame(u,src=mac), frame(ip4(SRC,ECHO,6,tcp(SRC,ECHO,41009,7,0x02)),src=mac))
# Frames to broadcast and multicast destination MACs.
send(frame(u,dst=b'\xff'*6), frame(u,dst=bytes.fromhex('01005e0000fb')))
print('sent')
`)
	t.Log(out)
	// ARP: claim the gateway's address, another sandbox's, and answer for
	// the node; then see whether node believed any of it.
	out = e.py(t, e.a, `
def arp(op,sha,spa,tha,tpa,dst=b'\xff'*6,src=None):
    return frame(struct.pack('!HHBBH',1,0x0800,6,4,op)+sha+socket.inet_aton(spa)+tha+socket.inet_aton(tpa),etype=0x0806,dst=dst,src=src)
z=b'\0'*6
send(arp(2,MYMAC,GW,GWMAC,SRC,dst=GWMAC), arp(1,MYMAC,GW,z,GW), arp(1,MYMAC,OTHERSB,z,OTHERSB),
     arp(2,MYMAC,OTHERSB,GWMAC,GW,dst=GWMAC), arp(1,MYMAC,SRC,z,OTHERSB), arp(2,MYMAC,ECHO,GWMAC,GW,dst=GWMAC),
     arp(1,bytes.fromhex('020000000077'),SRC,z,GW,src=bytes.fromhex('020000000077')))
# Who has the other sandbox? Nobody may answer.
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x0806)); s.bind(('eth0',0)); s.settimeout(0.2)
send(arp(1,MYMAC,SRC,z,OTHERSB)); t0=time.time()
while time.time()-t0<1.5:
    try: p=s.recv(100)
    except socket.timeout: continue
    if len(p)>=42 and p[20:22]==b'\x00\x02' and p[28:32]==socket.inet_aton(OTHERSB): print('ARP REPLY for other sandbox from', p[22:28].hex())
print('arp done')
`)
	t.Log(out)
	if strings.Contains(out, "ARP REPLY") {
		t.Errorf("the other sandbox's address was answered by ARP:\n%s", out)
	}
	time.Sleep(300 * time.Millisecond)
	mac, err := e.a.Exec(context.Background(), "cat", "/sys/class/net/eth0/address")
	if err != nil {
		t.Fatal(err)
	}
	neigh, _ := e.w.ExecNode("ip", "neigh", "show")
	for _, l := range strings.Split(string(neigh), "\n") {
		if strings.Contains(l, strings.TrimSpace(string(mac))) && !strings.HasPrefix(l, e.a.IP.String()+" ") {
			t.Errorf("node believes an ARP lie: %s", l)
		}
	}
	// A second address in another subnet, and a changed MAC, with the
	// kernel's own sockets (restored afterwards).
	out = e.py(t, e.a, `
import subprocess
def sh(*a): return subprocess.run(list(a),capture_output=True,text=True)
sh('ip','addr','add','10.250.0.2/24','dev','eth0')
for src in ('10.250.0.2',):
    u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind((src,0)); u.sendto(b'second-addr',(ECHO,7)); u.settimeout(0.5); print('udp from second addr:',tryrecv(u)[:30])
    try:
        c=socket.socket(); c.bind((src,0)); c.settimeout(1.5); c.connect((WEB,80)); print('TCP FROM SECOND ADDR CONNECTED')
    except Exception as ex: print('tcp from second addr:',ex)
sh('ip','addr','del','10.250.0.2/24','dev','eth0')
old=open('/sys/class/net/eth0/address').read().strip()
print(sh('ip','link','set','eth0','address','02:00:00:00:00:99'))
try:
    c=socket.create_connection((WEB,80),timeout=1.5); print('TCP WITH NEW MAC CONNECTED')
except Exception as ex: print('tcp with new mac:',ex)
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.sendto(b'newmac',(ECHO,7))
print(sh('ip','link','set','eth0','address',old))
print(sh('ip','link','set','eth0','mtu','9000'))
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
try: u.sendto(b'M'*8500,(ECHO,7))
except Exception as ex: print('jumbo',ex)
print(sh('ip','link','set','eth0','mtu','1500'))
`)
	t.Log(out)
	if strings.Contains(out, "CONNECTED") {
		t.Errorf("a spoofed source got a TCP connection:\n%s", out)
	}
	if out := e.curl(t, e.a, "https://allowed.test/"); !strings.Contains(out, "hello from allowed.test") {
		t.Errorf("sandbox lost its own connectivity after the MAC was restored: %s", out)
	}
	e.assertContained(t)
}

// escIPv6: IPv6 of any kind, link-local to the node included, is dropped;
// router advertisements from the sandbox change nothing on the node.
func escIPv6(t *testing.T, e *escEnv) {
	ll, _ := e.w.ExecNode("sh", "-c", "ip -6 -br addr show dev "+e.a.HostVeth+" | awk '{print $3}'")
	nodeLL := strings.SplitN(strings.TrimSpace(string(ll)), "/", 2)[0]
	routesBefore, _ := e.w.ExecNode("ip", "-6", "route", "show")
	out := e.py(t, e.a, `
import subprocess
def sh(*a): return subprocess.run(list(a),capture_output=True,text=True)
sh('sysctl','-qw','net.ipv6.conf.eth0.disable_ipv6=0')
sh('ip','-6','addr','add','fd00:dead::2/64','dev','eth0','nodad')
sh('ip','-6','route','add','default','dev','eth0')
print(sh('ip','-6','addr','show','dev','eth0').stdout)
nodell=sys.argv[1]
for dst,port in ((nodell+'%eth0',9464),(nodell+'%eth0',22),('fe80::1%eth0',80),('ff02::1%eth0',5353),('2001:db8::1',80),('fd00:0:0::1',22)):
    a=socket.getaddrinfo(dst,port,socket.AF_INET6,socket.SOCK_STREAM)[0][4]
    try:
        s=socket.socket(socket.AF_INET6,socket.SOCK_STREAM); s.settimeout(1); s.connect(a); print('V6 CONNECTED',dst,port)
    except Exception as ex: print('tcp6',dst,port,ex)
    u=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)
    try: u.sendto(b'v6',a)
    except Exception as ex: print('udp6',dst,ex)
print(sh('ping','-6','-c1','-W1',nodell+'%eth0').stdout.splitlines()[-2:])
# Router solicitation and a router advertisement announcing a prefix and
# this sandbox as default router, to all nodes.
ic=socket.socket(socket.AF_INET6,socket.SOCK_RAW,socket.IPPROTO_ICMPV6)
ic.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_MULTICAST_HOPS,255)
ic.sendto(struct.pack('!BBHI',133,0,0,0),('ff02::2%eth0',0))
pi=struct.pack('!BBBBIII16s',3,4,64,0xc0,86400,14400,0,socket.inet_pton(socket.AF_INET6,'2001:db8:bad::'))
ic.sendto(struct.pack('!BBHBBHII',134,0,0,64,0,1800,0,0)+pi,('ff02::1%eth0',0))
print('v6 done')
`, nodeLL)
	t.Log(out)
	if strings.Contains(out, "V6 CONNECTED") || strings.Contains(out, " 0% packet loss") {
		t.Errorf("IPv6 from the sandbox got through:\n%s", out)
	}
	time.Sleep(300 * time.Millisecond)
	routesAfter, _ := e.w.ExecNode("ip", "-6", "route", "show")
	if strings.Contains(string(routesAfter), "2001:db8:bad") || strings.Count(string(routesAfter), "default") > strings.Count(string(routesBefore), "default") {
		t.Errorf("a router advertisement from the sandbox changed node's IPv6 routes:\nbefore:\n%s\nafter:\n%s", routesBefore, routesAfter)
	}
	e.py(t, e.a, `
import subprocess
subprocess.run(['ip','-6','route','del','default','dev','eth0'],capture_output=True)
subprocess.run(['ip','-6','addr','del','fd00:dead::2/64','dev','eth0'],capture_output=True)
`)
	e.assertContained(t)
}

// escLateral: sandbox a toward sandbox b.
func escLateral(t *testing.T, e *escEnv) {
	out := e.py(t, e.a, `
for port in (8080, 80, 443):
    try:
        s=socket.create_connection((OTHERSB,port),timeout=2); s.sendall(b'GET / HTTP/1.1\r\nHost: '+OTHERSB.encode()+b':8080\r\n\r\n'); print(port,s.recv(600))
    except Exception as ex: print(port,ex)
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.sendto(b'lateral',(OTHERSB,9999)); u.settimeout(0.5); print('udp',tryrecv(u)[:30])
send(frame(ip4(SRC,OTHERSB,6,tcp(SRC,OTHERSB,42000,8080,0x02))), frame(ip4(SRC,OTHERSB,6,tcp(SRC,OTHERSB,42001,8080,0x10,ack=1))))
`)
	t.Log(out)
	if strings.Contains(out, "canary reached") {
		t.Errorf("sandbox a reached sandbox b:\n%s", out)
	}
	if out := e.curl(t, e.a, "-i", "http://"+e.b.IP.String()+":8080/"); !regexp.MustCompile(`HTTP/\S+ 403`).MatchString(out) {
		t.Errorf("HTTP to the other sandbox: want 403\n%s", out)
	}
	e.assertContained(t)
}

// escCredentials: the injected secret reaches cred.test only, and nothing
// the sandbox sees holds it: responses, redirects, errors, audit lines.
func escCredentials(t *testing.T, e *escEnv) {
	out := e.curl(t, e.a, "-i", "https://cred.test/echo")
	if !strings.Contains(out, "X-Api-Key") {
		t.Fatalf("cred.test/echo: the upstream did not see the injected header:\n%s", out)
	}
	if strings.Contains(out, escSecret) {
		t.Errorf("the secret came back verbatim:\n%s", out)
	}
	// A redirect to another allowed host: the proxy must not follow it, and
	// the client's follow-up request carries no credential.
	out = e.curl(t, e.a, "-i", "-L", "https://cred.test/redirect")
	if strings.Contains(out, escSecret) || !strings.Contains(out, "302") {
		t.Errorf("redirect: want a 302 passed to the client and no secret at other.test:\n%s", out)
	}
	// The sandbox sends its own X-Api-Key to other hosts and tries to make
	// the proxy inject into them by Host tricks.
	for _, args := range [][]string{
		{"-H", "Host: cred.test", "--resolve", "other.test:443:" + escCredAddr, "https://other.test/echo"},
		{"--resolve", "cred.test:443:" + world.WebAddr.String(), "-H", "Host: other.test", "https://cred.test/echo-secret"},
		{"-x", "http://" + e.gw.String() + ":3128", "http://cred.test/echo"},
		{"-x", "http://" + e.gw.String() + ":3128", "https://cred.test:443/echo"},
	} {
		if out := e.curl(t, e.a, append([]string{"-i"}, args...)...); strings.Contains(out, escSecret) {
			t.Errorf("curl %v: secret visible\n%s", args, out)
		}
	}
	// A literal echo in a trailer or in a 103 Early Hints response.
	for _, path := range []string{"/trailer", "/early"} {
		var early []string
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			early = append(early, fmt.Sprint(code, h))
			return nil
		}}
		ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(context.Background(), trace), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://cred.test"+path, nil)
		resp, err := e.a.HTTPClient(e.caPool).Do(req)
		if err != nil {
			cancel()
			t.Errorf("cred.test%s: %v", path, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		seen := fmt.Sprint(resp.Header, resp.Trailer, string(body), early)
		t.Logf("cred.test%s: %s", path, seen)
		if strings.Contains(seen, escSecret) {
			t.Errorf("cred.test%s: the secret came back: %s", path, seen)
		}
	}
	// Out of scope, documented: an upstream that transforms the secret
	// (base64, split across header and body) defeats a literal redactor.
	b64 := base64.StdEncoding.EncodeToString([]byte(escSecret))
	if out := e.curl(t, e.a, "-i", "https://cred.test/b64"); strings.Contains(out, b64) {
		t.Logf("known limit: an upstream echoing the secret base64-encoded is not redacted (the redactor matches literal bytes)")
	}
	if out := e.curl(t, e.a, "-i", "https://cred.test/split"); strings.Contains(out, escSecret[:len(escSecret)/2]) {
		t.Logf("known limit: an upstream splitting the secret across a header and the body is not redacted")
	}
	ws := e.py(t, e.a, `
ctx=ssl.create_default_context(cafile=CA)
s=ctx.wrap_socket(socket.create_connection((WEB,443),timeout=3),server_hostname='cred.test')
s.sendall(b'GET /ws HTTP/1.1\r\nHost: cred.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
s.settimeout(1); d=b''
try:
    while len(d)<4096:
        x=s.recv(4096)
        if not x: break
        d+=x
except Exception: pass
print(d.decode(errors='replace'))
`)
	t.Run("WebSocketEcho", func(t *testing.T) {
		// After the 101 the proxy splices the stream but masks the key with
		// as many '*' bytes, since WebSocket frames carry their lengths.
		if strings.Contains(ws, escSecret) {
			t.Fatalf("the secret came back over the upgraded stream: %q", ws)
		}
		if want := "hello " + strings.Repeat("*", len(escSecret)) + "\n"; !strings.Contains(ws, " 101 ") || !strings.Contains(ws, want) {
			t.Fatalf("want a 101 and the greeting masked to %q, got %q", want, ws)
		}
	})
	time.Sleep(300 * time.Millisecond)
	for _, f := range []string{filepath.Join(e.d.LogDir, "audit.jsonl"), e.d.StderrFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Errorf("read %s: %v", f, err)
			continue
		}
		if strings.Contains(string(b), escSecret) || strings.Contains(string(b), b64) {
			t.Errorf("%s holds the secret", f)
		}
	}
	e.assertContained(t)
}

// escResources: one sandbox holding 2000 connections and trickling a
// ClientHello does not stop another sandbox's requests.
func escResources(t *testing.T, e *escEnv) {
	type result struct{ out string }
	done := make(chan result, 1)
	go func() {
		out := e.py(t, e.a, `
import resource
resource.setrlimit(resource.RLIMIT_NOFILE,(8192,8192))
slow=socket.create_connection((WEB,443),timeout=3); h=b'\x16\x03\x01\x00\x80'
conns=[]
for i in range(2000):
    s=socket.socket(); s.setblocking(False)
    try: s.connect((WEB,443))
    except BlockingIOError: pass
    conns.append(s)
print('opened',len(conns),flush=True)
t0=time.time(); i=0
while time.time()-t0<5:
    try: slow.send(h[i:i+1]); i+=1
    except Exception as ex: print('slow closed after',round(time.time()-t0,1),'s:',ex); break
    time.sleep(1)
print('held',round(time.time()-t0,1),'s')
`)
		done <- result{out}
	}()
	time.Sleep(1500 * time.Millisecond)
	start := time.Now()
	out := e.curl(t, e.b, "https://allowed.test/")
	took := time.Since(start)
	if !strings.Contains(out, "hello from allowed.test") || took > 5*time.Second {
		t.Errorf("sandbox b while a floods the proxy: %s after %v", out, took)
	}
	t.Logf("b's request while a holds 2000 connections and a slow ClientHello: %v", took.Round(time.Millisecond))
	r := <-done
	t.Log(r.out)
	// A flood of DNS questions for distinct allowed names (each one goes
	// upstream) does not starve b's lookups and connections.
	go func() {
		done <- result{e.py(t, e.a, `
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.setblocking(False)
sent=0; t0=time.time()
while time.time()-t0<4:
    n='f%d.a.wild.test'%sent
    b=b''.join(bytes([len(l)])+l.encode() for l in n.split('.'))+b'\0'
    try: s.sendto(struct.pack('!HHHHHH',sent&0xffff,0x100,1,0,0,0)+b+struct.pack('!HH',1,1),(GW,53)); sent+=1
    except BlockingIOError: pass
print('dns flood: sent',sent,'in 4 s')
`)}
	}()
	time.Sleep(1500 * time.Millisecond)
	start = time.Now()
	out = e.curl(t, e.b, "https://allowed.test/")
	took = time.Since(start)
	if !strings.Contains(out, "hello from allowed.test") || took > 5*time.Second {
		t.Errorf("sandbox b while a floods the DNS guard: %s after %v", out, took)
	}
	t.Logf("b's lookup and request while a floods the DNS guard: %v; %s", took.Round(time.Millisecond), strings.TrimSpace((<-done).out))
	// Thousands of connections held open with a request that never ends its
	// headers (the proxy waits up to ReadHeaderTimeout for each): without a
	// per-sandbox cap each pins one of the proxy's file descriptors, which
	// every sandbox shares; enough of them and nobody is accepted.
	fdsBefore := e.proxyFDs(t)
	go func() {
		done <- result{e.py(t, e.a, `
import resource
soft,hard=resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE,(hard,hard))
want=min(hard-100, 4000); p=select.poll(); pending={}; held=[]; t0=time.time(); opened=0
while time.time()-t0<3 and (opened<want or pending):
    while opened<want and len(pending)<2000:
        s=socket.socket(); s.setblocking(False)
        try: s.connect((WEB,80))
        except BlockingIOError: pass
        except OSError as ex: print('connect:',ex); opened=want; break
        pending[s.fileno()]=s; p.register(s,select.POLLOUT); opened+=1
    for fd,ev in p.poll(50):
        s=pending.pop(fd); p.unregister(fd)
        try: s.send(b'GET / HTTP/1.1\r\nHost: allowed.test\r\n'); held.append(s)
        except OSError: s.close()
print('held',len(held),'connections of',opened,'opened in',round(time.time()-t0,1),'s',flush=True)
time.sleep(max(0,5.5-(time.time()-t0)))
`)}
	}()
	time.Sleep(3500 * time.Millisecond)
	fdsHeld := e.proxyFDs(t)
	if limit := fdsBefore + proxy.DefaultMaxConnsPerSandbox + 200; fdsHeld > limit {
		t.Errorf("one sandbox pins %d of the proxy's file descriptors (%d before): want at most about %d (the per-sandbox cap)", fdsHeld-fdsBefore, fdsBefore, proxy.DefaultMaxConnsPerSandbox)
	}
	start = time.Now()
	out = e.curl(t, e.b, "https://allowed.test/")
	took = time.Since(start)
	if !strings.Contains(out, "hello from allowed.test") || took > 5*time.Second {
		t.Errorf("sandbox b while a holds connections by the thousand: %s after %v", out, took)
	}
	t.Logf("b's request while a holds connections by the thousand: %v; %s; proxy fds %d -> %d", took.Round(time.Millisecond), strings.TrimSpace((<-done).out), fdsBefore, fdsHeld)
	// The same with DNS over TCP: one question per connection, then idle.
	fdsBefore = e.proxyFDs(t)
	go func() {
		done <- result{e.py(t, e.a, `
import resource
soft,hard=resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE,(hard,hard))
q=b'\x00\x1e'+struct.pack('!HHHHHH',7,0x100,1,0,0,0)+b'\x07allowed\x04test\x00'+struct.pack('!HH',1,1)
want=3000; p=select.poll(); pending={}; held=[]; t0=time.time(); opened=0
while time.time()-t0<3 and (opened<want or pending):
    while opened<want and len(pending)<1000:
        s=socket.socket(); s.setblocking(False)
        try: s.connect((WEB,53))
        except BlockingIOError: pass
        pending[s.fileno()]=s; p.register(s,select.POLLOUT); opened+=1
    for fd,ev in p.poll(50):
        s=pending.pop(fd); p.unregister(fd)
        try: s.send(q); held.append(s)
        except OSError: s.close()
print('dns tcp: sent a question on',len(held),'of',opened,'connections in',round(time.time()-t0,1),'s',flush=True)
time.sleep(max(0,5.5-(time.time()-t0)))
`)}
	}()
	time.Sleep(3500 * time.Millisecond)
	fdsHeld = e.proxyFDs(t)
	if limit := fdsBefore + proxy.DefaultMaxConnsPerSandbox + 200; fdsHeld > limit {
		t.Errorf("DNS over TCP: one sandbox pins %d of the proxy's file descriptors (%d before)", fdsHeld-fdsBefore, fdsBefore)
	}
	out = e.curl(t, e.b, "https://allowed.test/")
	if !strings.Contains(out, "hello from allowed.test") {
		t.Errorf("sandbox b while a holds DNS-over-TCP connections: %s", out)
	}
	t.Logf("%s; proxy fds %d -> %d", strings.TrimSpace((<-done).out), fdsBefore, fdsHeld)
	// HTTP/2 multiplexes: a few connections carry thousands of requests,
	// each of which the proxy forwards on an upstream connection of its
	// own (HTTP/1.1 upstreams): the per-connection cap alone does not bound
	// the descriptors one sandbox costs the proxy.
	fdsBefore = e.proxyFDs(t)
	dial := world.DialerIn(e.a.NetNS)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx, "tcp4", world.WebAddr.String()+":443")
		},
		TLSClientConfig:   &tls.Config{RootCAs: e.caPool},
		ForceAttemptHTTP2: true,
	}
	defer tr.CloseIdleConnections()
	h2 := &http.Client{Transport: tr, Timeout: 8 * time.Second}
	codes := make(chan string, 2000)
	for range 2000 {
		go func() {
			resp, err := h2.Get("https://allowed.test/slow?seconds=4&n=10")
			if err != nil {
				codes <- "error"
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- fmt.Sprint(resp.Proto, " ", resp.StatusCode)
		}()
	}
	time.Sleep(2500 * time.Millisecond)
	fdsHeld = e.proxyFDs(t)
	out = e.curl(t, e.b, "https://allowed.test/")
	tally := map[string]int{}
	for range 2000 {
		tally[<-codes]++
	}
	t.Logf("2000 HTTP/2 requests in flight from a: %v; proxy fds %d -> %d", tally, fdsBefore, fdsHeld)
	// Go's client (like the proxy's own upstream transport) dials one
	// connection per waiting request until the first HTTP/2 handshake
	// completes, so a burst can fill both caps at once: up to the
	// connection cap downstream plus one upstream connection per request in
	// flight. That sum is the bound a sandbox may cost, not more.
	if limit := fdsBefore + proxy.DefaultMaxConnsPerSandbox + proxy.DefaultMaxRequestsPerSandbox + 200; fdsHeld > limit {
		t.Errorf("HTTP/2 requests in flight: one sandbox pins %d of the proxy's file descriptors (%d before): want at most its connection cap plus its requests-in-flight cap (%d + %d)", fdsHeld-fdsBefore, fdsBefore, proxy.DefaultMaxConnsPerSandbox, proxy.DefaultMaxRequestsPerSandbox)
	}
	if !strings.Contains(out, "hello from allowed.test") {
		t.Errorf("sandbox b while a has 2000 requests in flight: %s", out)
	}
	// A connection that says nothing is decided after PeekTimeout (2 s).
	out = e.py(t, e.a, `
s=socket.create_connection((WEB,443),timeout=6); t0=time.time()
print('silent conn:',tryrecv(s)[:20],'after',round(time.time()-t0,1),'s')
`)
	t.Log(out)
	if !strings.Contains(out, "ERR") && !strings.Contains(out, "b''") {
		t.Errorf("a silent connection was not closed: %s", out)
	}
	e.assertContained(t)
}

// escReloadKeepAlive: a kept-alive TLS connection's next request after a
// policy edit removing its domain is denied.
func escReloadKeepAlive(t *testing.T, e *escEnv) {
	dial := world.DialerIn(e.a.NetNS)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := dial(ctx, "tcp4", world.WebAddr.String()+":443")
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, &tls.Config{ServerName: "other.test", RootCAs: e.caPool, NextProtos: []string{"http/1.1"}})
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	get := func() (int, string) {
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n"); err != nil {
			t.Fatalf("write: %v", err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 {
		t.Fatalf("other.test before the edit: %d %s", code, body)
	}
	t.Cleanup(func() { _ = e.w.WritePolicy("default", e.policy) })
	if err := e.w.WritePolicy("default", strings.Replace(e.policy, "[allowed.test, other.test]", "[allowed.test]", 1)); err != nil {
		t.Fatal(err)
	}
	if !escWaitFor(5*time.Second, func() bool {
		// The DNS guard stops resolving other.test at once: name the address.
		return regexp.MustCompile(`HTTP/\S+ 403`).MatchString(e.curl(t, e.b, "-i", "--resolve", "other.test:443:"+world.WebAddr.String(), "https://other.test/"))
	}) {
		t.Fatal("the policy edit never took effect for new connections")
	}
	if code, body := get(); code != 403 {
		t.Errorf("kept-alive request after other.test was removed: want 403, got %d %s", code, body)
	}
	if err := e.w.WritePolicy("default", e.policy); err != nil {
		t.Fatal(err)
	}
	if !escWaitFor(5*time.Second, func() bool {
		return strings.Contains(e.curl(t, e.b, "--resolve", "other.test:443:"+world.WebAddr.String(), "https://other.test/"), "hello from other.test")
	}) {
		t.Fatal("the restored policy never took effect")
	}
	e.assertContained(t)
}

// escIdentity: the proxy knows a sandbox by its source address; a sandbox
// that takes another's address is dropped before the proxy sees it.
func escIdentity(t *testing.T, e *escEnv) {
	out := e.py(t, e.a, `
import subprocess
def sh(*a): return subprocess.run(list(a),capture_output=True,text=True)
sh('ip','addr','add',OTHERSB+'/32','dev','eth0')
try:
    c=socket.socket(); c.bind((OTHERSB,0)); c.settimeout(1.5); c.connect((WEB,80)); print('CONNECTED AS OTHER SANDBOX')
except Exception as ex: print('as other sandbox:',ex)
sh('ip','addr','del',OTHERSB+'/32','dev','eth0')
`)
	t.Log(out)
	if strings.Contains(out, "CONNECTED") {
		t.Errorf("sandbox a connected with b's address:\n%s", out)
	}
	e.assertContained(t)
}

// escWaitFor polls cond every 100 ms until it holds or timeout passes.
func escWaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// escSynFlood: a sandbox that fills the proxy listener's SYN queue (raw
// SYNs, its own SYN-ACKs firewalled so its kernel sends no RST) pushes the
// node into SYN cookies; the other sandbox's connections, whose handshakes
// then end in a cookie, must still be accepted.
func escSynFlood(t *testing.T, e *escEnv) {
	out := e.py(t, e.a, `
import subprocess
subprocess.run(['nft','add table ip escflood'],capture_output=True)
subprocess.run(['nft','add chain ip escflood in { type filter hook input priority 0 ; }'],capture_output=True)
print(subprocess.run(['nft','add rule ip escflood in tcp flags & (syn|ack) == syn|ack drop'],capture_output=True,text=True))
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(('eth0',0))
n=0; t0=time.time()
for i in range(20000):
    try: s.send(frame(ip4(SRC,WEB,6,tcp(SRC,WEB,10000+i,443,0x02,seq=i*7919))),); n+=1
    except OSError: time.sleep(0.001)
print('syns sent',n,'in',round(time.time()-t0,2),'s')
`)
	t.Log(out)
	t.Cleanup(func() { _, _ = e.a.Exec(context.Background(), "nft", "delete", "table", "ip", "escflood") })
	st, _ := e.w.ExecNode("nstat", "-az", "TcpExtSyncookiesSent", "TcpExtSyncookiesRecv", "TcpExtSyncookiesFailed", "TcpExtListenDrops")
	start := time.Now()
	res := e.curl(t, e.b, "https://allowed.test/")
	took := time.Since(start)
	st2, _ := e.w.ExecNode("nstat", "-az", "TcpExtSyncookiesSent", "TcpExtSyncookiesRecv", "TcpExtSyncookiesFailed", "TcpExtListenDrops")
	t.Logf("node counters before b's request:\n%s\nafter:\n%s", st, st2)
	if !strings.Contains(res, "hello from allowed.test") || took > 5*time.Second {
		t.Errorf("sandbox b during a's SYN flood: %s after %v", res, took.Round(time.Millisecond))
	}
	e.assertContained(t)
}
