package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// Defaults for --network paddock.
const (
	DefaultCNIConfDir = "/etc/cni/net.d"
	DefaultCNIBinDir  = "/opt/cni/bin"
	cniNetworkName    = "paddock"
	cniPluginType     = "paddock"
	cniIfName         = "eth0"
	cniTimeout        = 30 * time.Second
)

// cniNet is the sandbox's attachment to the paddock CNI network.
type cniNet struct {
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	rt   *libcni.RuntimeConf
}

// loadCNI finds the network in confDir: the conflist named "paddock", else
// the first one that has a plugin of type "paddock". policy, when given,
// replaces the paddock plugin's "policy" key.
func loadCNI(confDir, binDir, policy, id string) (*cniNet, error) {
	list, err := libcni.LoadNetworkConf(confDir, cniNetworkName)
	if err != nil {
		files, _ := libcni.ConfFiles(confDir, []string{".conflist"})
		for _, f := range files {
			l, lerr := libcni.NetworkConfFromFile(f)
			if lerr == nil && pluginIndex(l) >= 0 {
				list, err = l, nil
				break
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("no CNI network %q in %s (%v): install the paddock conflist there, pass --cni-conf-dir, or use --network none", cniNetworkName, confDir, err)
	}
	if i := pluginIndex(list); i >= 0 && policy != "" {
		p, err := libcni.InjectConf(list.Plugins[i], map[string]any{"policy": policy})
		if err != nil {
			return nil, fmt.Errorf("set policy %q: %w", policy, err)
		}
		list.Plugins[i] = p
	}
	if _, err := os.Stat(filepath.Join(binDir, cniPluginType)); err != nil {
		return nil, fmt.Errorf("CNI plugin %q not found in %s: install bin/cni/* there or pass --cni-bin-dir", cniPluginType, binDir)
	}
	return &cniNet{
		cni:  libcni.NewCNIConfig([]string{binDir}, nil),
		list: list,
		rt:   &libcni.RuntimeConf{ContainerID: "paddock-run-" + id, IfName: cniIfName},
	}, nil
}

func pluginIndex(l *libcni.NetworkConfigList) int {
	for i, p := range l.Plugins {
		if p.Network != nil && p.Network.Type == cniPluginType {
			return i
		}
	}
	return -1
}

// add attaches the namespace at netns; it returns the sandbox's addresses
// for --verbose and the name servers it should use: the result's, else its
// gateways (the node's DNS guard answers whatever address port 53 is sent to).
func (n *cniNet) add(netns string) (desc string, dns []string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	rt := *n.rt
	rt.NetNS = netns
	res, err := n.cni.AddNetworkList(ctx, n.list, &rt)
	if err != nil {
		return "", nil, fmt.Errorf("CNI ADD on network %q: %w", n.list.Name, err)
	}
	desc = n.list.Name
	if r, err := current.NewResultFromResult(res); err == nil {
		dns = r.DNS.Nameservers
		for _, ip := range r.IPs {
			desc += " " + ip.Address.String()
			if len(r.DNS.Nameservers) == 0 && ip.Gateway != nil {
				dns = append(dns, ip.Gateway.String())
			}
		}
	}
	return desc, dns, nil
}

// resolvConf keeps the rootfs's search and options lines and its
// non-loopback servers (loopback ones cannot be reached from the sandbox's
// namespace), falling back to dns.
func resolvConf(rootfs string, dns []string) []byte {
	var keep, servers []string
	b, _ := os.ReadFile(filepath.Join(rootfs, "etc", "resolv.conf"))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if ip, err := netip.ParseAddr(f[1]); err == nil && !ip.IsLoopback() {
				servers = append(servers, f[1])
			}
		case "search", "domain", "options":
			keep = append(keep, line)
		}
	}
	if len(servers) == 0 {
		servers = dns
	}
	var out strings.Builder
	for _, l := range keep {
		out.WriteString(l + "\n")
	}
	for _, s := range servers {
		out.WriteString("nameserver " + s + "\n")
	}
	return []byte(out.String())
}

// del detaches; it works without the namespace (which may be gone).
func (n *cniNet) del() error {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	err := n.cni.DelNetworkList(ctx, n.list, n.rt)
	var terr *types.Error
	if errors.As(err, &terr) && terr.Code == types.ErrUnknownContainer {
		return nil
	}
	if err != nil {
		return fmt.Errorf("CNI DEL on network %q: %w", n.list.Name, err)
	}
	return nil
}

// DefaultPolicy is the policy --network none runs under without --policy.
const DefaultPolicy = "default"

// policyName is what the CNI plugin and paddockd's explicit socket accept.
var policyName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// validateNetwork checks the network options before any state exists.
func (o *Options) validateNetwork() error {
	switch o.Network {
	case "":
		o.Network = NetworkPaddock
	case NetworkPaddock, NetworkNone:
	default:
		return fmt.Errorf("network %q is not paddock or none", o.Network)
	}
	if o.Network == NetworkNone && o.Policy == "" {
		o.Policy = DefaultPolicy
	}
	if o.Policy != "" && !policyName.MatchString(o.Policy) {
		return fmt.Errorf("policy %q: want the NAME of NAME.yaml in paddockd's policy dir (lowercase letters, digits, '.', '_', '-')", o.Policy)
	}
	if o.Network == NetworkNone && o.ProxySocket == "" {
		o.ProxySocket = api.DefaultExplicitSocket
	}
	return nil
}

// listenExplicitRelay serves the Unix socket bound into a --network none
// sandbox. The parent (root, outside) relays each connection to paddockd's
// root-only explicit socket, first writing the header that names this run
// and its policy: the sandbox can reach neither that socket (/run/paddock
// is hidden) nor the header. The socket belongs to the sandbox's user, so
// the command may use it directly as well as through the loopback port.
// If paddockd is not there, each connection is closed: no network.
func listenExplicitRelay(sock string, o *Options, id string) (net.Listener, error) {
	hdr, err := api.ExplicitHeader(id, o.Policy)
	if err != nil {
		return nil, fmt.Errorf("proxy relay: %w", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("proxy relay: %w", err)
	}
	if err := os.Chown(sock, o.UID, o.GID); err != nil {
		ln.Close()
		return nil, fmt.Errorf("proxy relay: %w", err)
	}
	upstream := o.ProxySocket
	var warn sync.Once
	go serveBridge(ln, func() (net.Conn, error) {
		c, err := net.DialTimeout("unix", upstream, 10*time.Second)
		if err != nil {
			// The command only sees its proxy connection closed: say why
			// once, on the launcher's stderr.
			warn.Do(func() {
				fmt.Fprintf(os.Stderr, "paddock: --network none: cannot reach paddockd's explicit proxy at %s (%v): start paddockd, or pass --proxy-socket with its --explicit-socket path\n", upstream, err)
			})
			return nil, fmt.Errorf("paddockd's explicit socket %s: %w", upstream, err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, hdr); err != nil {
			c.Close()
			return nil, fmt.Errorf("paddockd's explicit socket %s: %w", upstream, err)
		}
		_ = c.SetWriteDeadline(time.Time{})
		return c, nil
	})
	return ln, nil
}
