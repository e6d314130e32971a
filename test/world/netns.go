package world

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const netnsDir = "/run/netns"

// uplinkGW6 is node's IPv6 next hop towards internet (a static neighbour).
const uplinkGW6 = "fe80::1"

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// createNetns makes a named namespace with `ip netns add`, which also sets up
// the shared /run/netns mount that nsenter and runtimes expect.
func createNetns(name string) (ns.NetNS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("create netns %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	h, err := ns.GetNS(netnsPath(name))
	if err != nil {
		_ = deleteNetns(name)
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	if err := h.Do(func(ns.NetNS) error { return setLinkUp("lo") }); err != nil {
		h.Close()
		_ = deleteNetns(name)
		return nil, fmt.Errorf("netns %s: loopback up: %w", name, err)
	}
	return h, nil
}

// etcNetns is where `ip netns exec` finds per-namespace files to bind-mount
// over /etc.
const etcNetns = "/etc/netns"

// writeSandboxEtc points the resolver of commands run by sandboxExec at the
// world's DNS server, as a runtime's resolv.conf would.
func writeSandboxEtc(name string) error {
	dir := filepath.Join(etcNetns, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("sandbox resolv.conf: %w", err)
	}
	conf := fmt.Sprintf("nameserver %s\noptions timeout:2 attempts:1\n", DNSAddr)
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		return fmt.Errorf("sandbox resolv.conf: %w", err)
	}
	return nil
}

// sandboxExec runs argv in the sandbox namespace with `ip netns exec`, which
// also mounts the sandbox's resolv.conf (and a fresh /sys).
func sandboxExec(ctx context.Context, name string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("exec in %s: empty command", name)
	}
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", name}, argv...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w", strings.Join(argv, " "), name, err)
	}
	return out, nil
}

// deleteNetns removes a named namespace and its /etc/netns files; one that
// does not exist is fine.
func deleteNetns(name string) error {
	if err := os.RemoveAll(filepath.Join(etcNetns, name)); err != nil {
		return fmt.Errorf("remove %s: %w", filepath.Join(etcNetns, name), err)
	}
	_ = os.Remove(etcNetns) // only when no other namespace uses it
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		return fmt.Errorf("delete netns %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nsExec(path string, argv ...string) ([]byte, error) {
	return nsExecContext(context.Background(), path, argv...)
}

// nsExecContext runs argv in the namespace at path. nsenter, unlike `ip netns
// exec`, leaves /sys alone, so /sys/fs/bpf stays visible.
func nsExecContext(ctx context.Context, path string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("exec in %s: empty command", path)
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + path, "--"}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w", strings.Join(argv, " "), filepath.Base(path), err)
	}
	return out, nil
}

func setLinkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	return netlink.LinkSetUp(l)
}

func addAddr(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once; nobody else holds it
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", p, name, err)
	}
	return nil
}

func addRoute(dst netip.Prefix, gw netip.Addr) error {
	r := &netlink.Route{Gw: gw.AsSlice()}
	if dst.Bits() > 0 {
		r.Dst = &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}
	}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, gw, err)
	}
	return nil
}

// writeSysctl sets a sysctl of the calling thread's network namespace.
func writeSysctl(name, value string) error {
	p := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// vethInto creates a veth pair in the calling thread's namespace: local stays
// here, peer moves into the namespace peerNS.
func vethInto(local, peer string, peerNS ns.NetNS) error {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: local}, PeerName: peer, PeerNamespace: netlink.NsFd(int(peerNS.Fd()))}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s: %w", local, peer, err)
	}
	return nil
}

func (w *World) buildNetwork() error {
	var err error
	if w.node, err = createNetns(w.NodeNS); err != nil {
		return err
	}
	if w.inet, err = createNetns(w.InternetNS); err != nil {
		return err
	}
	// internet speaks no IPv6 at all: every IPv6 packet the capture sees
	// arrived from node.
	err = w.InInternet(func() error {
		for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
			if err := writeSysctl(k, "1"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = w.InNode(func() error {
		// node forwards like a host with a container network does, so that a
		// sandbox packet the enforcer fails to stop really reaches internet.
		for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
			if err := writeSysctl(k, "1"); err != nil {
				return err
			}
		}
		if err := vethInto(w.NodeVeth, w.InetVeth, w.inet); err != nil {
			return err
		}
		if err := addAddr(w.NodeVeth, netip.PrefixFrom(NodeAddr, UplinkPrefix)); err != nil {
			return err
		}
		if err := setLinkUp(w.NodeVeth); err != nil {
			return err
		}
		return addRoute(netip.Prefix{}, InternetAddr)
	})
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	var inetMAC net.HardwareAddr
	err = w.InInternet(func() error {
		l, err := netlink.LinkByName(w.InetVeth)
		if err != nil {
			return err
		}
		inetMAC = l.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		return fmt.Errorf("internet: %w", err)
	}
	// internet speaks no IPv6, yet node routes IPv6 to it through a static
	// neighbour: an IPv6 packet the enforcer lets through reaches internet's
	// wire, where the capture sees it.
	err = w.InNode(func() error {
		l, err := netlink.LinkByName(w.NodeVeth)
		if err != nil {
			return err
		}
		gw := net.ParseIP(uplinkGW6)
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: inetMAC}); err != nil {
			return fmt.Errorf("ipv6 neighbour %s: %w", uplinkGW6, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}); err != nil {
			return fmt.Errorf("ipv6 default route: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	err = w.InInternet(func() error {
		if err := addAddr(w.InetVeth, netip.PrefixFrom(InternetAddr, UplinkPrefix)); err != nil {
			return err
		}
		if err := setLinkUp(w.InetVeth); err != nil {
			return err
		}
		for _, a := range []netip.Addr{WebAddr, DNSAddr, EchoAddr, OtherWebAddr} {
			if err := addAddr("lo", netip.PrefixFrom(a, 32)); err != nil {
				return err
			}
		}
		// A route back to the sandboxes: a leaked packet gets its answer,
		// exactly as it would on a real network.
		return addRoute(w.SandboxRange, NodeAddr)
	})
	if err != nil {
		return fmt.Errorf("internet: %w", err)
	}
	return nil
}

func randomByte() byte {
	b := []byte{0}
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b[0]
}

// DialerIn returns a DialContext that opens its sockets inside the namespace
// at path; a socket keeps the namespace it was created in.
func DialerIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.WithNetNSPath(path, func(ns.NetNS) error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// HTTPClient returns a client whose connections and DNS lookups (to the
// world's DNS server, 192.0.2.53) start inside the namespace at path,
// trusting roots. Inside a sandbox both are what the enforcer sees.
func HTTPClient(path string, roots *x509.CertPool) *http.Client {
	dial := DialerIn(path)
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dial(ctx, network, netip.AddrPortFrom(DNSAddr, 53).String())
	}}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if _, err := netip.ParseAddr(host); err != nil {
				ips, err := res.LookupNetIP(ctx, "ip4", host)
				if err != nil {
					return nil, err
				}
				host = ips[0].String()
			}
			return dial(ctx, network, net.JoinHostPort(host, port))
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
