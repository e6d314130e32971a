package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// hostVethGone reports whether sb's host veth no longer exists in paddockd's
// network namespace, where the plugin creates it. Only a missing name counts:
// a lookup error is not proof that the sandbox is gone.
func hostVethGone(sb api.Sandbox) (bool, error) {
	_, err := netlink.LinkByName(sb.HostVeth)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil:
		return false, nil
	case errors.As(err, &nf):
		return true, nil
	default:
		return false, fmt.Errorf("look up host veth %s: %w", sb.HostVeth, err)
	}
}

// pruneGone forgets the registrations whose host veth is gone. Their DEL
// came while paddockd was down: with the veth the sandbox lost its network,
// so nothing is left to enforce, and keeping them would fail the reconcile
// (no device to attach to) and hold paddockd not ready until a GC that
// podman and containerd never send. The caller holds mu or is not serving yet.
func (b *backend) pruneGone(ctx context.Context) {
	if b.vethGone == nil {
		return
	}
	for _, sb := range b.reg.List() {
		gone, err := b.vethGone(sb)
		if err != nil {
			b.log.Warn("prune skipped", "sandbox", sb.ShortID(), "network", sb.Network, "host_veth", sb.HostVeth, "reason", err.Error())
			continue
		}
		if !gone {
			continue
		}
		if err := b.remove(ctx, sb, "host veth gone"); err != nil {
			b.log.Error("prune failed", "sandbox", sb.ShortID(), "network", sb.Network, "host_veth", sb.HostVeth, "reason", err.Error())
		}
	}
}
