// Package api is the contract between the paddock CNI plugin, paddockd, the
// paddock CLI, the enforcer and the proxy: the sandbox record that identifies an
// attachment, and the JSON-over-HTTP protocol spoken on paddockd's root-only Unix
// socket. It is deliberately small and dependency-free so that every other
// package can import it without importing each other.
package api
