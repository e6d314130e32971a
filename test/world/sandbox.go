package world

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
)

// SandboxOptions shape one CNI attachment.
type SandboxOptions struct {
	Policy      string // paddock policy name; default "default"
	CNIVersion  string // conflist cniVersion; default "1.0.0"
	IfName      string // default "eth0"
	ContainerID string // default "<prefix>-<name>"
	// Args become CNI_ARGS (e.g. K8S_POD_NAME); CapabilityArgs the
	// runtimeConfig a runtime would pass.
	Args           [][2]string
	CapabilityArgs map[string]any
	// Plugin adds or overrides keys of the paddock plugin's configuration.
	Plugin map[string]any
}

// Sandbox is a namespace attached by the real paddock plugin through libcni.
type Sandbox struct {
	Name     string
	NSName   string // namespace name under /run/netns
	NetNS    string // its path, CNI_NETNS
	IP       netip.Addr
	HostVeth string
	Result   *current.Result

	w    *World
	rt   *libcni.RuntimeConf
	list *libcni.NetworkConfigList
	opts SandboxOptions

	mu      sync.Mutex
	deleted bool
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)

// NetworkName is the CNI network name, unique per world.
func (w *World) NetworkName() string { return w.Prefix + "-net" }

// CNIPath is the CNI bin dir: $PADDOCK_BIN/cni.
func (w *World) CNIPath() string { return filepath.Join(w.BinDir, "cni") }

// CNICacheDir is where libcni caches results for this world.
func (w *World) CNICacheDir() string { return filepath.Join(w.Dir, "cni-cache") }

// IPAMDir is host-local's dataDir for this world.
func (w *World) IPAMDir() string { return filepath.Join(w.Dir, "ipam") }

// DaemonSocket is the paddockd API socket the conflist names.
func (w *World) DaemonSocket() string { return filepath.Join(w.Dir, "paddockd.sock") }

// CNIConfig is a libcni runtime for this world; call it inside InNode so
// that plugins run in the node namespace.
func (w *World) CNIConfig() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{w.CNIPath()}, w.CNICacheDir(), nil)
}

// ConfList is the default conflist (policy "default", cniVersion 1.0.0).
func (w *World) ConfList() *libcni.NetworkConfigList {
	l, err := w.ConfListFor(SandboxOptions{})
	if err != nil {
		panic(err) // the defaults always encode
	}
	return l
}

// ConfListBytes is the conflist for opts as a runtime would read it from
// /etc/cni/net.d.
func (w *World) ConfListBytes(opts SandboxOptions) ([]byte, error) {
	opts = opts.withDefaults(w, "")
	plugin := map[string]any{
		"type":         "paddock",
		"daemonSocket": w.DaemonSocket(),
		"policy":       opts.Policy,
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": w.IPAMDir(),
			"ranges":  [][]map[string]string{{{"subnet": w.Subnet.String()}}},
		},
	}
	for k, v := range opts.Plugin {
		plugin[k] = v
	}
	return json.MarshalIndent(map[string]any{
		"cniVersion": opts.CNIVersion,
		"name":       w.NetworkName(),
		"plugins":    []any{plugin},
	}, "", "  ")
}

// ConfListFor parses ConfListBytes(opts).
func (w *World) ConfListFor(opts SandboxOptions) (*libcni.NetworkConfigList, error) {
	b, err := w.ConfListBytes(opts)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(b)
}

func (o SandboxOptions) withDefaults(w *World, name string) SandboxOptions {
	if o.Policy == "" {
		o.Policy = "default"
	}
	if o.CNIVersion == "" {
		o.CNIVersion = "1.0.0"
	}
	if o.IfName == "" {
		o.IfName = "eth0"
	}
	if o.ContainerID == "" && name != "" {
		o.ContainerID = w.Prefix + "-" + name
	}
	return o
}

// AddSandbox creates namespace <prefix>-<name> and attaches it with CNI ADD
// as a runtime would. The world DELs it at teardown; t is used for logging.
// On error nothing is left behind.
func (w *World) AddSandbox(t testing.TB, name string, opts SandboxOptions) (*Sandbox, error) {
	t.Helper()
	sb, err := w.CreateSandbox(name, opts)
	if err != nil {
		return nil, err
	}
	t.Logf("sandbox %s: ip=%s hostVeth=%s netns=%s", name, sb.IP, sb.HostVeth, sb.NSName)
	return sb, nil
}

// CreateSandbox is AddSandbox without a test.
func (w *World) CreateSandbox(name string, opts SandboxOptions) (sb *Sandbox, err error) {
	if !nameRE.MatchString(name) || name == "node" || name == "inet" {
		return nil, fmt.Errorf("sandbox name %q: want 1-20 characters of [a-z0-9-], not node or inet", name)
	}
	opts = opts.withDefaults(w, name)
	list, err := w.ConfListFor(opts)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: conflist: %w", name, err)
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil, fmt.Errorf("world %s is torn down", w.Prefix)
	}
	_, dup := w.sandboxes[name]
	_, dupPlain := w.plain[name]
	if dup || dupPlain {
		w.mu.Unlock()
		return nil, fmt.Errorf("sandbox %q exists in world %s", name, w.Prefix)
	}
	sb = &Sandbox{Name: name, NSName: w.Prefix + "-" + name, w: w, list: list, opts: opts}
	w.sandboxes[name] = sb
	w.mu.Unlock()
	defer func() {
		if err != nil {
			w.mu.Lock()
			delete(w.sandboxes, name)
			w.mu.Unlock()
		}
	}()

	h, err := createNetns(sb.NSName)
	if err != nil {
		return nil, err
	}
	h.Close()
	if err := writeSandboxEtc(sb.NSName); err != nil {
		_ = deleteNetns(sb.NSName)
		return nil, err
	}
	sb.NetNS = netnsPath(sb.NSName)
	sb.rt = &libcni.RuntimeConf{
		ContainerID:    opts.ContainerID,
		NetNS:          sb.NetNS,
		IfName:         opts.IfName,
		Args:           opts.Args,
		CapabilityArgs: opts.CapabilityArgs,
	}
	var res types.Result
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = w.InNode(func() error {
		var err error
		res, err = w.CNIConfig().AddNetworkList(ctx, list, sb.rt)
		return err
	})
	if err != nil {
		// A failed ADD is followed by a DEL, as runtimes do, then the
		// namespace goes.
		_ = w.InNode(func() error { return w.CNIConfig().DelNetworkList(ctx, list, sb.rt) })
		_ = deleteNetns(sb.NSName)
		return nil, fmt.Errorf("sandbox %s: CNI ADD: %w", name, err)
	}
	if sb.Result, err = current.NewResultFromResult(res); err != nil {
		_ = sb.Del()
		return nil, fmt.Errorf("sandbox %s: result: %w", name, err)
	}
	for _, ipc := range sb.Result.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			sb.IP = a.Unmap()
			break
		}
	}
	for _, ifc := range sb.Result.Interfaces {
		if ifc.Sandbox == "" {
			sb.HostVeth = ifc.Name
			break
		}
	}
	return sb, nil
}

// Del detaches the sandbox (CNI DEL) and deletes its namespace. Idempotent.
func (sb *Sandbox) Del() error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.deleted {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errDel := sb.w.InNode(func() error { return sb.w.CNIConfig().DelNetworkList(ctx, sb.list, sb.rt) })
	if errDel != nil {
		errDel = fmt.Errorf("sandbox %s: CNI DEL: %w", sb.Name, errDel)
	}
	errNS := deleteNetns(sb.NSName)
	sb.deleted = true
	sb.w.mu.Lock()
	delete(sb.w.sandboxes, sb.Name)
	sb.w.mu.Unlock()
	return errors.Join(errDel, errNS)
}

// Check runs CNI CHECK against the cached result.
func (sb *Sandbox) Check() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return sb.w.InNode(func() error { return sb.w.CNIConfig().CheckNetworkList(ctx, sb.list, sb.rt) })
}

// RuntimeConf is what the world passed to libcni for this sandbox.
func (sb *Sandbox) RuntimeConf() *libcni.RuntimeConf { return sb.rt }

// Exec runs argv inside the sandbox namespace (`ip netns exec`, so that its
// resolv.conf names the world's DNS server, 192.0.2.53) and returns its
// combined output.
func (sb *Sandbox) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return sandboxExec(ctx, sb.NSName, argv...)
}

// HTTPClient returns a client whose sockets and DNS lookups start inside the
// sandbox, trusting roots (the proxy's CA, for a transparently intercepted
// connection).
func (sb *Sandbox) HTTPClient(roots *x509.CertPool) *http.Client {
	return HTTPClient(sb.NetNS, roots)
}

// PlainSandbox is a namespace wired to node by hand, without paddock: node
// simply forwards its traffic. It exists to prove the leak detector works
// and to give enforcer tests a sandbox-shaped namespace of their own.
type PlainSandbox struct {
	Name     string
	NSName   string
	NetNS    string
	IP       netip.Addr
	Gateway  netip.Addr
	IP6      netip.Addr // fd00:0:<n>::2; node forwards IPv6 to internet too
	Gateway6 netip.Addr
	HostVeth string

	w       *World
	mu      sync.Mutex
	deleted bool
}

// AddPlainSandbox creates <prefix>-<name> with a veth to node, addresses
// 10.X.(200+n).2/24 (inside the sandbox range, outside the CNI subnet) and
// fd00:0:<n>::2/64, and default routes via node.
func (w *World) AddPlainSandbox(name string) (p *PlainSandbox, err error) {
	if !nameRE.MatchString(name) || name == "node" || name == "inet" {
		return nil, fmt.Errorf("sandbox name %q: want 1-20 characters of [a-z0-9-], not node or inet", name)
	}
	w.mu.Lock()
	_, dup := w.sandboxes[name]
	_, dupPlain := w.plain[name]
	n := len(w.plain)
	if dup || dupPlain || w.closed || n >= 50 {
		w.mu.Unlock()
		return nil, fmt.Errorf("sandbox %q: exists, too many plain sandboxes, or world %s torn down", name, w.Prefix)
	}
	b := w.Subnet.Addr().As4()
	b[2] = byte(200 + n)
	p = &PlainSandbox{Name: name, NSName: w.Prefix + "-" + name, HostVeth: fmt.Sprintf("%s-p%d", w.Prefix, n), w: w}
	b[3] = 1
	p.Gateway = netip.AddrFrom4(b)
	b[3] = 2
	p.IP = netip.AddrFrom4(b)
	p.Gateway6 = netip.MustParseAddr(fmt.Sprintf("fd00:0:%x::1", n))
	p.IP6 = netip.MustParseAddr(fmt.Sprintf("fd00:0:%x::2", n))
	w.plain[name] = p
	w.mu.Unlock()
	defer func() {
		if err != nil {
			_ = p.Del()
		}
	}()
	h, err := createNetns(p.NSName)
	if err != nil {
		return p, err
	}
	defer h.Close()
	p.NetNS = netnsPath(p.NSName)
	if err := writeSandboxEtc(p.NSName); err != nil {
		return p, err
	}
	err = w.InNode(func() error {
		if err := vethInto(p.HostVeth, "eth0", h); err != nil {
			return err
		}
		if err := addAddr(p.HostVeth, netip.PrefixFrom(p.Gateway, 24)); err != nil {
			return err
		}
		if err := addAddr(p.HostVeth, netip.PrefixFrom(p.Gateway6, 64)); err != nil {
			return err
		}
		return setLinkUp(p.HostVeth)
	})
	if err != nil {
		return p, err
	}
	err = h.Do(func(ns.NetNS) error {
		if err := addAddr("eth0", netip.PrefixFrom(p.IP, 24)); err != nil {
			return err
		}
		if err := setLinkUp("eth0"); err != nil {
			return err
		}
		if err := addAddr("eth0", netip.PrefixFrom(p.IP6, 64)); err != nil {
			return err
		}
		if err := addRoute(netip.Prefix{}, p.Gateway); err != nil {
			return err
		}
		return addRoute(netip.PrefixFrom(netip.IPv6Unspecified(), 0), p.Gateway6)
	})
	return p, err
}

// Exec runs argv inside the plain sandbox, as Sandbox.Exec does.
func (p *PlainSandbox) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	return sandboxExec(ctx, p.NSName, argv...)
}

// Del deletes the namespace and with it the veth pair. Idempotent.
func (p *PlainSandbox) Del() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deleted {
		return nil
	}
	p.deleted = true
	p.w.mu.Lock()
	delete(p.w.plain, p.Name)
	p.w.mu.Unlock()
	return deleteNetns(p.NSName)
}
