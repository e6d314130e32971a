// Package proxy is the unprivileged, TLS-terminating egress proxy: it decides
// per sandbox by SNI/Host against the sandbox's policy, dials the upstream by
// name, injects credentials the sandbox never sees, audits every request, and
// runs the DNS guard.
package proxy
