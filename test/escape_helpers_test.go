package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/paddock-sandbox/paddock/proxy"
	"github.com/paddock-sandbox/paddock/test/world"
)

// escPolicy is the policy every escape attack runs against: a few allowed
// names (one a wildcard), a passthrough rule, a rule injecting a secret and a
// deny rule. %s is the secret file.
const escPolicy = `dns: allowlist
egress:
  - domains: [allowed.test, other.test]
  - domains: ["*.wild.test"]
  - domains: [passthrough.test]
    tls: passthrough
  - domains: [cred.test]
    inject: [{header: X-Api-Key, secretFile: %s}]
  - deny: [blocked.test]
`

// escSecret is what the proxy injects for cred.test; no byte of the sandbox's
// view may ever hold it.
const escSecret = "paddock-escape-secret-7f3a9c"

// escCredAddr is the address of the attack suite's own upstream (cred.test),
// added to the internet namespace's loopback.
const escCredAddr = "203.0.113.20"

// escEnv is one world with paddockd, two sandboxes under the same policy
// (attacker a, bystander b), canaries on the node and in b, and the upstream
// that echoes the injected secret.
type escEnv struct {
	w      *world.World
	d      *world.Daemon
	a, b   *world.Sandbox
	gw     netip.Addr
	gwMAC  string // the host veth's MAC, what a's frames go to
	ca     string // paddock's node CA file
	caPool *x509.CertPool
	policy string // the policy as written, for restoring after a reload test

	canaries []*escCanary
}

func newEscEnv(t *testing.T, redirect string) *escEnv {
	t.Helper()
	w := world.New(t, world.Options{})
	for _, n := range []string{"a.wild.test", "evilwild.test", "wild.test"} {
		if err := w.SetDNS(n, world.WebAddr.String()); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.SetDNS("cred.test", escCredAddr); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(w.Dir, "esc-secret")
	if err := os.WriteFile(secretFile, []byte(escSecret), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &escEnv{w: w, policy: fmt.Sprintf(escPolicy, secretFile)}
	if err := w.WritePolicy("default", e.policy); err != nil {
		t.Fatal(err)
	}
	startEscUpstream(t, w)
	e.d = w.StartDaemon(t, "--redirect", redirect)
	if st, err := e.d.WaitReady(15 * time.Second); err != nil {
		t.Fatalf("paddockd not ready: %v (components %v)", err, st.Components)
	}
	var err error
	if e.a, err = w.AddSandbox(t, "esca", world.SandboxOptions{}); err != nil {
		t.Fatal(err)
	}
	if e.b, err = w.AddSandbox(t, "escb", world.SandboxOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ipc := range e.a.Result.IPs {
		if g, ok := netip.AddrFromSlice(ipc.Gateway); ok && g.Unmap().Is4() {
			e.gw = g.Unmap()
		}
	}
	if !e.gw.IsValid() {
		t.Fatalf("sandbox result has no IPv4 gateway: %+v", e.a.Result)
	}
	out, err := w.ExecNode("ip", "-j", "link", "show", "dev", e.a.HostVeth)
	var links []struct {
		Address string `json:"address"`
	}
	if err != nil || json.Unmarshal(out, &links) != nil || len(links) != 1 {
		t.Fatalf("host veth mac: %v %s", err, out)
	}
	e.gwMAC = links[0].Address
	e.ca = filepath.Join(e.d.CADir, "ca.pem")
	pem, err := os.ReadFile(e.ca)
	if err != nil {
		t.Fatal(err)
	}
	e.caPool = x509.NewCertPool()
	e.caPool.AppendCertsFromPEM(pem)

	// Services a hostile sandbox must never reach: a node "sshd" on every
	// node address, node UDP services, and b's own listeners.
	e.canaries = []*escCanary{
		startEscCanary(t, "node tcp :2222", w.InNode, "tcp4", "0.0.0.0:2222"),
		startEscCanary(t, "node tcp :22", w.InNode, "tcp4", "0.0.0.0:22"),
		startEscCanary(t, "node udp :5353", w.InNode, "udp4", "0.0.0.0:5353"),
		startEscCanary(t, "node udp :9999", w.InNode, "udp4", "0.0.0.0:9999"),
		startEscCanary(t, "node udp :443", w.InNode, "udp4", "0.0.0.0:443"),
		startEscCanary(t, "b tcp :8080", inNetNS(e.b.NetNS), "tcp4", "0.0.0.0:8080"),
		startEscCanary(t, "b udp :9999", inNetNS(e.b.NetNS), "udp4", "0.0.0.0:9999"),
	}
	for _, p := range []int{1, 2, 47, 132} {
		e.canaries = append(e.canaries, startEscRawCanary(t, w, p, w.Subnet))
	}
	return e
}

func inNetNS(path string) func(func() error) error {
	return func(fn func() error) error {
		return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
	}
}

// assertContained fails t when anything from a sandbox reached the internet
// namespace, a node service or the other sandbox.
func (e *escEnv) assertContained(t *testing.T) {
	t.Helper()
	e.w.AssertNoLeaks(t)
	for _, c := range e.canaries {
		if n, what := c.hits(); n > 0 {
			t.Errorf("canary %s was reached %d time(s): %s", c.name, n, what)
		}
	}
}

// py runs a python3 program in sb (stdlib only), bounded by 8 s, and returns
// its combined output; the program's own failures are part of the output.
func (e *escEnv) py(t *testing.T, sb *world.Sandbox, prog string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	argv := append([]string{"python3", "-c", e.prelude(sb) + prog}, args...)
	out, err := sb.Exec(ctx, argv...)
	if err != nil {
		return fmt.Sprintf("%s\n(exit: %v)", out, err)
	}
	return string(out)
}

// prelude gives attack programs the addresses and packet builders they share.
func (e *escEnv) prelude(sb *world.Sandbox) string {
	other := e.b
	if sb == e.b {
		other = e.a
	}
	return fmt.Sprintf(`import socket, struct, sys, os, time, ssl, select
SRC=%q; GW=%q; GWMAC=bytes.fromhex(%q); WEB=%q; ECHO=%q; OTHERSB=%q; NODE=%q; CA=%q
socket.setdefaulttimeout(3)
MYMAC=bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':',''))
def csum(b):
    if len(b)%%2: b+=b'\0'
    s=sum(struct.unpack('!%%dH'%%(len(b)//2),b)); s=(s>>16)+(s&0xffff); s+=s>>16
    return (~s)&0xffff
def ip4(src,dst,proto,payload,opts=b'',frag=0,ident=0x4242,ttl=64):
    h=struct.pack('!BBHHHBBH4s4s',0x40|(5+len(opts)//4),0,20+len(opts)+len(payload),ident,frag,ttl,proto,0,socket.inet_aton(src),socket.inet_aton(dst))+opts
    return h[:10]+struct.pack('!H',csum(h))+h[12:]+payload
def l4sum(src,dst,proto,seg):
    return csum(struct.pack('!4s4sBBH',socket.inet_aton(src),socket.inet_aton(dst),0,proto,len(seg))+seg)
def tcp(src,dst,sport,dport,flags,seq=1000,ack=0,data=b''):
    h=struct.pack('!HHIIBBHHH',sport,dport,seq,ack,5<<4,flags,65535,0,0)+data
    return h[:16]+struct.pack('!H',l4sum(src,dst,6,h))+h[18:]
def udp(src,dst,sport,dport,data):
    h=struct.pack('!HHHH',sport,dport,8+len(data),0)+data
    return h[:6]+struct.pack('!H',l4sum(src,dst,17,h) or 0xffff)+h[8:]
def frame(payload,etype=0x0800,dst=None,src=None):
    return (dst or GWMAC)+(src or MYMAC)+struct.pack('!H',etype)+payload
def send(*frames):
    s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(('eth0',0))
    for f in frames: s.send(f)
    s.close()
def tryrecv(s,n=65535):
    try: return s.recv(n)
    except Exception as ex: return ('ERR %%s'%%ex).encode()
`, sb.IP.String(), e.gw.String(), strings.ReplaceAll(e.gwMAC, ":", ""), world.WebAddr.String(),
		world.EchoAddr.String(), other.IP.String(), world.NodeAddr.String(), e.ca)
}

// curl runs curl in sb trusting paddock's CA, bounded by 5 s.
func (e *escEnv) curl(t *testing.T, sb *world.Sandbox, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	argv := append([]string{"curl", "-sS", "-m", "5", "--cacert", e.ca}, args...)
	out, err := sb.Exec(ctx, argv...)
	if err != nil {
		return fmt.Sprintf("%s\n(exit: %v)", out, err)
	}
	return string(out)
}

// audit returns paddockd's audit records so far.
func (e *escEnv) audit(t *testing.T) []proxy.AuditRecord {
	t.Helper()
	return readJSONLFile[proxy.AuditRecord](t, filepath.Join(e.d.LogDir, "audit.jsonl"))
}

func readJSONLFile[T any](t *testing.T, path string) []T {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("read %s: %v", path, err)
	}
	var out []T
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(line, &v); err != nil {
			t.Fatalf("%s: line %q: %v", path, line, err)
		}
		out = append(out, v)
	}
	return out
}

// waitEscAudit waits up to 5 s for a record match accepts and returns it.
func (e *escEnv) waitAudit(t *testing.T, what string, match func(proxy.AuditRecord) bool) (proxy.AuditRecord, bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range e.audit(t) {
			if match(r) {
				return r, true
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no audit record for %s", what)
			return proxy.AuditRecord{}, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// escCanary is a listener nothing from a sandbox may reach.
type escCanary struct {
	name string
	mu   sync.Mutex
	n    int
	what []string
}

func (c *escCanary) hit(what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if len(c.what) < 5 {
		c.what = append(c.what, what)
	}
}

func (c *escCanary) hits() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, strings.Join(c.what, "; ")
}

// startEscCanary listens on addr (tcp4 or udp4) in the namespace in enters
// and counts every connection or datagram.
func startEscCanary(t *testing.T, name string, in func(func() error) error, network, addr string) *escCanary {
	t.Helper()
	c := &escCanary{name: name}
	var l net.Listener
	var pc net.PacketConn
	err := in(func() error {
		var err error
		if network == "tcp4" {
			l, err = net.Listen(network, addr)
		} else {
			pc, err = net.ListenPacket(network, addr)
		}
		return err
	})
	if err != nil {
		t.Fatalf("canary %s: %v", name, err)
	}
	if l != nil {
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				c.hit("connection from " + conn.RemoteAddr().String())
				_, _ = conn.Write([]byte("canary reached\n"))
				conn.Close()
			}
		}()
		return c
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			c.hit(fmt.Sprintf("%d bytes from %s", n, from))
			_, _ = pc.WriteTo([]byte("canary reached"), from)
		}
	}()
	return c
}

// startEscRawCanary counts packets of IP protocol proto from src that the
// node's own stack delivers locally (a raw socket sees them after the input
// hook): proof that a protocol the data path drops never reached the node.
func startEscRawCanary(t *testing.T, w *world.World, proto int, src netip.Prefix) *escCanary {
	t.Helper()
	c := &escCanary{name: fmt.Sprintf("node raw ip proto %d", proto)}
	var fd int
	err := w.InNode(func() error {
		var err error
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		t.Fatalf("raw canary %d: %v", proto, err)
	}
	tv := syscall.Timeval{Usec: 200000}
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped; syscall.Close(fd) })
	go func() {
		defer close(stopped)
		buf := make([]byte, 65535)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, _, err := syscall.Recvfrom(fd, buf, 0)
			if err != nil || n < 20 {
				continue
			}
			a := netip.AddrFrom4([4]byte(buf[12:16]))
			if src.Contains(a) {
				c.hit(fmt.Sprintf("%d bytes from %s to %s", n, a, netip.AddrFrom4([4]byte(buf[16:20]))))
			}
		}
	}()
	return c
}

// escUpstream is cred.test: it echoes the headers it received verbatim, as
// base64, and answers /redirect with a 302 to another allowed host.
func startEscUpstream(t *testing.T, w *world.World) {
	t.Helper()
	if out, err := w.ExecInternet("ip", "addr", "add", escCredAddr+"/32", "dev", "lo"); err != nil {
		t.Fatalf("add %s: %v %s", escCredAddr, err, out)
	}
	var l net.Listener
	if err := w.InInternet(func() error {
		var err error
		l, err = net.Listen("tcp4", escCredAddr+":443")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(rw http.ResponseWriter, r *http.Request) {
		_ = r.Header.Write(rw)
	})
	mux.HandleFunc("/b64", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(rw, base64.StdEncoding.EncodeToString([]byte(r.Header.Get("X-Api-Key"))))
	})
	mux.HandleFunc("/split", func(rw http.ResponseWriter, r *http.Request) {
		k := r.Header.Get("X-Api-Key")
		rw.Header().Set("X-Half", k[:len(k)/2])
		fmt.Fprintln(rw, k[len(k)/2:])
	})
	// An API error often quotes the key it rejected: in a trailer (gRPC
	// status messages travel there) and in an informational response.
	mux.HandleFunc("/trailer", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Trailer", "X-Error")
		fmt.Fprintln(rw, "body")
		rw.Header().Set("X-Error", "invalid key "+r.Header.Get("X-Api-Key"))
	})
	mux.HandleFunc("/early", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("X-Hint", "key="+r.Header.Get("X-Api-Key"))
		rw.WriteHeader(http.StatusEarlyHints)
		rw.Header().Del("X-Hint")
		fmt.Fprintln(rw, "done")
	})
	// A WebSocket server greeting its client with the key it was sent.
	mux.HandleFunc("/ws", func(rw http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(rw).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello %s\n", r.Header.Get("X-Api-Key"))
		_ = brw.Flush()
	})
	mux.HandleFunc("/redirect", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, "https://other.test/echo-secret", http.StatusFound)
	})
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{GetCertificate: w.CA().GetCertificate},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { srv.Close() })
}

// escClientHello builds a TLS 1.2/1.3 ClientHello record by hand so that
// attacks control every extension (IP-literal SNI, no SNI, ECH).
const escHelloPy = `
def ext(t,body): return struct.pack('!HH',t,len(body))+body
def hello(sni=None, extra=b''):
    exts=b''
    if sni is not None:
        n=sni.encode(); sl=struct.pack('!BH',0,len(n))+n
        exts+=ext(0,struct.pack('!H',len(sl))+sl)
    exts+=ext(10,bytes.fromhex('0004001d0017'))          # groups x25519, p256
    exts+=ext(13,bytes.fromhex('00080403080404010201'))  # signature algorithms
    exts+=ext(43,bytes.fromhex('0403040303'))            # versions 1.3, 1.2
    exts+=ext(51,struct.pack('!HHH',36,29,32)+os.urandom(32))  # key share x25519
    exts+=extra
    body=struct.pack('!H',0x0303)+os.urandom(32)+b'\x20'+os.urandom(32)+bytes.fromhex('0004130113020100')+struct.pack('!H',len(exts))+exts
    hs=b'\x01'+struct.pack('!I',len(body))[1:]+body
    return b'\x16\x03\x01'+struct.pack('!H',len(hs))+hs
def sendhello(dst,port,h):
    s=socket.create_connection((dst,port),timeout=3); s.sendall(h); s.settimeout(1)
    out=b''
    try:
        while len(out)<65536:
            d=s.recv(65536)
            if not d: break
            out+=d
    except Exception as ex: print('recv:',type(ex).__name__, ex)
    s.close()
    print('bytes back:',len(out),'first:',out[:6].hex())
`

// proxyFDs counts the open file descriptors of the proxy process below
// this world's paddockd.
func (e *escEnv) proxyFDs(t *testing.T) int {
	t.Helper()
	ppid := func(pid string) string {
		b, _ := os.ReadFile("/proc/" + pid + "/stat")
		// pid (comm) state ppid ...: comm may hold spaces, so split after ")".
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 1 {
				return f[1]
			}
		}
		return ""
	}
	root := fmt.Sprint(e.d.Pid())
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range procs {
		argv, _ := os.ReadFile(c)
		if !strings.HasPrefix(string(argv), "paddock-proxy\x00") {
			continue
		}
		pid := filepath.Base(filepath.Dir(c))
		for p, i := ppid(pid), 0; p != "" && p != "0" && i < 5; p, i = ppid(p), i+1 {
			if p == root {
				fds, err := os.ReadDir("/proc/" + pid + "/fd")
				if err != nil {
					t.Fatalf("proxy fds: %v", err)
				}
				return len(fds)
			}
		}
	}
	t.Fatalf("no paddock-proxy process below paddockd %s", root)
	return 0
}
