// Package enforcer is paddockd's data path: it loads and pins the eBPF
// redirect program, attaches it to each sandbox's host-side veth, keeps the
// `inet paddock` nftables table (the default-deny second layer and the only
// source of drop logs), reads those drops from NFLOG, and owns the transparent
// listening sockets that redirected connections and DNS queries arrive on.
package enforcer
