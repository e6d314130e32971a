// Package plugin implements the paddock CNI plugin (CNI 0.4.0 to 1.1.0):
// ADD/CHECK/DEL/STATUS/GC, config parsing, the veth pair with delegated IPAM,
// and registration of each sandbox with paddockd. In standalone mode the plugin
// owns the interface: a veth pair whose host end (named by HostVethName and
// tagged with an alias naming its attachment) is the sandbox's gateway in a
// point-to-point layout, so every packet of the sandbox crosses the host end
// where paddockd enforces. paddock is IPv4-only: an IPAM result with an IPv6
// address is refused at ADD (the enforcer denies IPv6), and ADD fails with
// nothing left behind unless paddockd is reachable, ready and accepts the
// registration. GC needs cni.dev/valid-attachments; without it GC succeeds
// and removes nothing, since the spec makes the list mandatory and reading its absence
// as "nothing is valid" would tear down every running sandbox.
package plugin
