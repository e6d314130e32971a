// Package proxy is the unprivileged, TLS-terminating egress proxy: it decides
// per sandbox by SNI/Host against the sandbox's policy (package policy), dials
// the upstream by name with its own resolver and refuses internal addresses
// on the resolved IP, injects credentials the sandbox never sees and redacts
// them from responses, audits every request as a JSON line, and runs the DNS
// guard. Server.ServeConn is the enforcer's ConnHandler for transparently
// redirected connections (TLS terminate or passthrough, plain HTTP, opaque
// TCP by explicit rule; the sandbox's gateway:3128 is an explicit HTTP
// proxy); the decision point (Decider), the credential source (Secrets) and
// the upstream dialer (Dialer) are small interfaces so later work (learn
// mode, an external decider, other credential sources, upstream proxy
// chaining) plugs in without touching the data path. In production the proxy
// is its own process: paddockd's Supervisor starts ChildMain as an
// unprivileged user with the listeners inherited and feeds it the sandbox
// list; Run is that process's body.
package proxy
