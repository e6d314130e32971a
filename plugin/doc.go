// Package plugin implements the paddock CNI plugin (CNI 0.4.0 to 1.1.0):
// ADD/CHECK/DEL/STATUS/GC, config parsing, the veth pair with delegated IPAM,
// and registration of each sandbox with paddockd.
package plugin
