// Package test holds paddock's end-to-end and security tests. They need root
// and build their own world of network namespaces (see test/world); they never
// touch the root namespace's routes, addresses, firewall or sysctls.
package test
