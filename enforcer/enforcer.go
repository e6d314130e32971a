package enforcer

import (
	"context"
	"net"
	"net/netip"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// RedirectMode picks how sandbox traffic reaches the local listeners.
type RedirectMode string

const (
	RedirectBPF      RedirectMode = "bpf"      // tcx + bpf_sk_assign
	RedirectNftables RedirectMode = "nftables" // nft TPROXY only (fallback)
)

// Enforcer is what paddockd drives: attach on register, detach on
// unregister, check for CHECK, status for STATUS / `paddock status`.
type Enforcer interface {
	// Attach puts sb under enforcement (idempotent: attaching twice is fine).
	Attach(ctx context.Context, sb api.Sandbox) error
	// Detach removes every trace of sb; an unknown sandbox is not an error.
	Detach(ctx context.Context, sb api.Sandbox) error
	// Check returns nil when every layer for sb is in place, else what is missing.
	Check(ctx context.Context, sb api.Sandbox) error
	// Reconcile makes the data path match exactly the given sandboxes
	// (start-up after a restart, GC).
	Reconcile(ctx context.Context, sbs []api.Sandbox) error
	// Components reports each part's health ("ok" or what is wrong).
	Components() map[string]string
	Close() error
}

// ConnHandler receives each redirected TCP connection. orig is the
// destination the sandbox dialled (the accepted socket's local address).
type ConnHandler interface {
	ServeConn(conn net.Conn, sb api.Sandbox, orig netip.AddrPort)
}

// Lookup maps a sandbox source address to its registration.
type Lookup func(src netip.Addr) (api.Sandbox, bool)
