// Package bpf holds paddock's eBPF C sources and their bpf2go output: the tcx
// ingress program that redirects a sandbox's TCP and DNS into the node's
// listeners and marks everything else for the nftables drop log.
package bpf
