// Package test holds paddock's end-to-end and security tests. They need root
// and build their own world of network namespaces (see test/world); they never
// touch the root namespace's routes, addresses, firewall or sysctls. They run
// the binaries `make build` puts in $PADDOCK_BIN (paddockd, the paddock CLI,
// cni/paddock, cni/host-local, cnitool) and skip without them. The foundation
// tests (TestFoundation*) drive the CNI plugin against the real paddockd
// through libcni, the bare binary and cnitool; every test that attaches a
// sandbox first waits for paddockd to report Ready and fails naming the
// component that is not, because the plugin refuses ADD until then.
package test
