package enforcer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/paddock-sandbox/paddock/bpf"
	"github.com/paddock-sandbox/paddock/plugin/api"
)

// Listener slots of the paddock_lsn SOCKMAP (bpf/redirect.c).
const (
	slotTCP    = uint32(bpf.RedirectPaddockListenerPADDOCK_LSN_TCP)
	slotDNSUDP = uint32(bpf.RedirectPaddockListenerPADDOCK_LSN_DNS_UDP)
	slotDNSTCP = uint32(bpf.RedirectPaddockListenerPADDOCK_LSN_DNS_TCP)
)

// bpfRedirect owns the loaded tcx program, its pinned maps and one pinned
// tcx link per sandbox host veth under dir/links.
type bpfRedirect struct {
	dir   string
	objs  bpf.RedirectObjects
	links map[string]link.Link // by host veth name
}

// loadBPF loads paddock_ingress with its maps pinned under dir (reusing the
// pinned ones, so enforcement state survives restarts) and swaps the program
// of every already pinned link to the new one.
func loadBPF(dir string) (*bpfRedirect, error) {
	if err := ensureBPFFS(dir); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create bpf pin dir: %w", err)
	}
	spec, err := bpf.LoadRedirect()
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	b := &bpfRedirect{dir: dir, links: map[string]link.Link{}}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
	err = spec.LoadAndAssign(&b.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// A previous paddock version pinned maps of another layout. Their
		// contents are rebuilt by Reconcile, so replace them.
		for _, name := range []string{bpf.RedirectMapPaddockSbx, bpf.RedirectMapPaddockLsn, bpf.RedirectMapPaddockCnt} {
			if rerr := os.Remove(filepath.Join(dir, name)); rerr != nil && !os.IsNotExist(rerr) {
				return nil, fmt.Errorf("replace incompatible pinned map %s: %w", name, rerr)
			}
		}
		err = spec.LoadAndAssign(&b.objs, opts)
	}
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load bpf objects: %+v", verr)
		}
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	if err := b.adoptPinnedLinks(); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// adoptPinnedLinks atomically moves every pinned link to the new program, so
// enforcement never lapses across a paddockd restart.
func (b *bpfRedirect) adoptPinnedLinks() error {
	ents, err := os.ReadDir(filepath.Join(b.dir, "links"))
	if err != nil {
		return fmt.Errorf("read pinned links: %w", err)
	}
	for _, e := range ents {
		path := filepath.Join(b.dir, "links", e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("load pinned link %s: %w", path, err)
		}
		if err := l.Update(b.objs.PaddockIngress); err != nil {
			// The veth is gone (defunct link): Reconcile decides about it.
			_ = l.Close()
			if errors.Is(err, unix.ENOLINK) || errors.Is(err, os.ErrNotExist) {
				_ = os.Remove(path)
				continue
			}
			return fmt.Errorf("swap program of pinned link %s: %w", path, err)
		}
		b.links[e.Name()] = l
	}
	return nil
}

// removeBPFLinks detaches every tcx link pinned under dir: switching to
// nftables mode must not leave the old redirect in front of TPROXY, where it
// would deny everything for want of listeners in its map.
func removeBPFLinks(dir string) error {
	links := filepath.Join(dir, "links")
	ents, err := os.ReadDir(links)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pinned links: %w", err)
	}
	for _, e := range ents {
		if err := os.Remove(filepath.Join(links, e.Name())); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove pinned link %s: %w", e.Name(), err)
		}
	}
	return nil
}

// setListener puts a listening socket into its paddock_lsn slot.
func (b *bpfRedirect) setListener(slot uint32, c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("listener fd: %w", err)
	}
	var perr error
	if err := rc.Control(func(fd uintptr) {
		perr = b.objs.PaddockLsn.Put(slot, uint64(fd))
	}); err != nil {
		return fmt.Errorf("listener fd: %w", err)
	}
	if perr != nil {
		return fmt.Errorf("insert listener into %s slot %d: %w", bpf.RedirectMapPaddockLsn, slot, perr)
	}
	return nil
}

func sandboxEntry(sb api.Sandbox) (bpf.RedirectSandbox, error) {
	var e bpf.RedirectSandbox
	ip, ok := sb.IPv4()
	if !ok {
		return e, fmt.Errorf("sandbox %s has no IPv4 address: paddock enforces IPv4 sandboxes only", sb.ShortID())
	}
	if !sb.Gateway.Is4() {
		return e, fmt.Errorf("sandbox %s gateway %q is not an IPv4 address", sb.ShortID(), sb.Gateway)
	}
	mac, err := net.ParseMAC(sb.SandboxMAC)
	if err != nil || len(mac) != 6 {
		return e, fmt.Errorf("sandbox %s MAC %q is not an Ethernet address", sb.ShortID(), sb.SandboxMAC)
	}
	e.Ipv4 = be32(ip)
	e.Gateway = be32(sb.Gateway)
	copy(e.Mac[:], mac)
	return e, nil
}

// be32 returns a in network byte order as the kernel stores it in a __u32
// on this little-endian host.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func validVeth(sb api.Sandbox) error {
	if sb.HostVeth == "" || strings.ContainsAny(sb.HostVeth, "/\x00") || sb.HostVeth == "." || sb.HostVeth == ".." {
		return fmt.Errorf("sandbox %s host veth name %q is not a valid interface name", sb.ShortID(), sb.HostVeth)
	}
	if sb.HostIfIndex <= 0 {
		return fmt.Errorf("sandbox %s host ifindex %d is invalid", sb.ShortID(), sb.HostIfIndex)
	}
	return nil
}

// attach puts sb into paddock_sbx, then attaches (or re-points) the tcx link
// on its host veth and pins it. The map entry comes first so the program never
// sees the interface without knowing the sandbox.
func (b *bpfRedirect) attach(sb api.Sandbox) error {
	if err := validVeth(sb); err != nil {
		return err
	}
	e, err := sandboxEntry(sb)
	if err != nil {
		return err
	}
	if err := b.objs.PaddockSbx.Put(uint32(sb.HostIfIndex), &e); err != nil {
		return fmt.Errorf("add sandbox to %s: %w", bpf.RedirectMapPaddockSbx, err)
	}
	if l, ok := b.links[sb.HostVeth]; ok {
		if linkIfIndex(l) == sb.HostIfIndex {
			if err := l.Update(b.objs.PaddockIngress); err == nil {
				return nil
			}
		}
		// The name now belongs to another interface, or the old one is gone.
		_ = l.Unpin()
		_ = l.Close()
		delete(b.links, sb.HostVeth)
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: sb.HostIfIndex,
		Program:   b.objs.PaddockIngress,
		Attach:    ebpf.AttachTCXIngress,
	})
	if err != nil {
		_ = b.objs.PaddockSbx.Delete(uint32(sb.HostIfIndex))
		return fmt.Errorf("attach tcx ingress to %s (ifindex %d): %w", sb.HostVeth, sb.HostIfIndex, err)
	}
	if err := l.Pin(b.linkPath(sb.HostVeth)); err != nil {
		_ = l.Close()
		_ = b.objs.PaddockSbx.Delete(uint32(sb.HostIfIndex))
		return fmt.Errorf("pin tcx link of %s: %w", sb.HostVeth, err)
	}
	b.links[sb.HostVeth] = l
	return nil
}

func (b *bpfRedirect) linkPath(veth string) string { return filepath.Join(b.dir, "links", veth) }

func linkIfIndex(l link.Link) int {
	info, err := l.Info()
	if err != nil || info.TCX() == nil {
		return 0
	}
	return int(info.TCX().Ifindex)
}

// detach removes the link, its pin, the map entry and the counters of sb.
// Whatever is already gone is fine.
func (b *bpfRedirect) detach(sb api.Sandbox) error {
	var errs []error
	if l, ok := b.links[sb.HostVeth]; ok {
		if err := l.Unpin(); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("unpin tcx link of %s: %w", sb.HostVeth, err))
		}
		_ = l.Close()
		delete(b.links, sb.HostVeth)
	} else if sb.HostVeth != "" && !strings.ContainsAny(sb.HostVeth, "/\x00") {
		if err := os.Remove(b.linkPath(sb.HostVeth)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("unpin tcx link of %s: %w", sb.HostVeth, err))
		}
	}
	if sb.HostIfIndex > 0 {
		if err := b.objs.PaddockSbx.Delete(uint32(sb.HostIfIndex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete sandbox from %s: %w", bpf.RedirectMapPaddockSbx, err))
		}
		if err := b.deleteCounters(func(ifindex uint32) bool { return ifindex == uint32(sb.HostIfIndex) }); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (b *bpfRedirect) deleteCounters(drop func(ifindex uint32) bool) error {
	var keys []bpf.RedirectCounterKey
	var k bpf.RedirectCounterKey
	it := b.objs.PaddockCnt.Iterate()
	var vals []bpf.RedirectCounterVal
	for it.Next(&k, &vals) {
		if drop(k.Ifindex) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", bpf.RedirectMapPaddockCnt, err)
	}
	for _, k := range keys {
		if err := b.objs.PaddockCnt.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete counter: %w", err)
		}
	}
	return nil
}

// check reports what is missing of sb's BPF enforcement.
func (b *bpfRedirect) check(sb api.Sandbox) error {
	want, err := sandboxEntry(sb)
	if err != nil {
		return err
	}
	var got bpf.RedirectSandbox
	if err := b.objs.PaddockSbx.Lookup(uint32(sb.HostIfIndex), &got); err != nil {
		return fmt.Errorf("sandbox missing from %s: %w", bpf.RedirectMapPaddockSbx, err)
	}
	if got != want {
		return fmt.Errorf("sandbox entry in %s is stale", bpf.RedirectMapPaddockSbx)
	}
	attached, err := b.attached(sb.HostIfIndex)
	if err != nil {
		return err
	}
	if !attached {
		return fmt.Errorf("paddock_ingress is not attached to %s (ifindex %d)", sb.HostVeth, sb.HostIfIndex)
	}
	if _, err := os.Stat(b.linkPath(sb.HostVeth)); err != nil {
		return fmt.Errorf("tcx link of %s is not pinned: %w", sb.HostVeth, err)
	}
	return nil
}

// attached asks the kernel whether our program is at tcx ingress of ifindex.
func (b *bpfRedirect) attached(ifindex int) (bool, error) {
	info, err := b.objs.PaddockIngress.Info()
	if err != nil {
		return false, fmt.Errorf("program info: %w", err)
	}
	id, _ := info.ID()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return false, fmt.Errorf("query tcx ingress of ifindex %d: %w", ifindex, err)
	}
	return slices.ContainsFunc(res.Programs, func(p link.AttachedProgram) bool { return p.ID == id }), nil
}

// reconcile attaches every sandbox of sbs and removes links, pins, map
// entries and counters of anything else.
func (b *bpfRedirect) reconcile(sbs []api.Sandbox) error {
	var errs []error
	veths := map[string]bool{}
	ifindexes := map[uint32]bool{}
	for _, sb := range sbs {
		veths[sb.HostVeth] = true
		ifindexes[uint32(sb.HostIfIndex)] = true
		if err := b.attach(sb); err != nil {
			errs = append(errs, err)
		}
	}
	ents, err := os.ReadDir(filepath.Join(b.dir, "links"))
	if err != nil {
		errs = append(errs, fmt.Errorf("read pinned links: %w", err))
	}
	for _, e := range ents {
		if veths[e.Name()] {
			continue
		}
		// Unpin before closing: the last reference then drops on close,
		// which detaches at once (a final put from unlink is deferred).
		if err := os.Remove(filepath.Join(b.dir, "links", e.Name())); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove stale link pin %s: %w", e.Name(), err))
		}
		if l, ok := b.links[e.Name()]; ok {
			_ = l.Close()
			delete(b.links, e.Name())
		}
	}
	var stale []uint32
	var k uint32
	var v bpf.RedirectSandbox
	it := b.objs.PaddockSbx.Iterate()
	for it.Next(&k, &v) {
		if !ifindexes[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("iterate %s: %w", bpf.RedirectMapPaddockSbx, err))
	}
	for _, k := range stale {
		if err := b.objs.PaddockSbx.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete stale sandbox ifindex %d: %w", k, err))
		}
	}
	if err := b.deleteCounters(func(ifindex uint32) bool { return !ifindexes[ifindex] }); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// health reports whether the program is loaded and the listeners are in
// their map slots.
func (b *bpfRedirect) health() string {
	for _, slot := range []uint32{slotTCP, slotDNSUDP, slotDNSTCP} {
		var cookie uint64
		if err := b.objs.PaddockLsn.Lookup(slot, &cookie); err != nil {
			return fmt.Sprintf("listener slot %d of %s is empty: redirected traffic is denied", slot, bpf.RedirectMapPaddockLsn)
		}
	}
	return "ok"
}

// Close releases our handles; pins keep enforcing while paddockd is down.
func (b *bpfRedirect) Close() error {
	for _, l := range b.links {
		_ = l.Close()
	}
	b.links = map[string]link.Link{}
	return b.objs.Close()
}
