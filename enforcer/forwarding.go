package enforcer

import (
	"fmt"
	"os"
	"path/filepath"
)

// noForwarding turns IPv4 forwarding off on a sandbox's host veth. Nothing a
// sandbox sends is ever forwarded (redirected packets are routed local), so
// this costs nothing, and it holds while the nftables table is missing: in
// nftables mode nothing else would stop unmarked traffic from being routed
// out in the moments before the watcher restores the table.
func noForwarding(veth string) error {
	p := filepath.Join("/proc/sys/net/ipv4/conf", veth, "forwarding")
	if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
		return fmt.Errorf("turn off ipv4 forwarding on %s: %w", veth, err)
	}
	return nil
}
