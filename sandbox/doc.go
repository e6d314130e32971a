// Package sandbox is the launcher behind `paddock run`: the parent (root)
// validates everything, compiles the seccomp profile (Docker's default from
// github.com/moby/profiles plus paddock's denials) to classic BPF, creates
// the run's cgroup (v2 when it has the controllers, else v1) and re-executes
// itself as PID 1 of new mount, PID, IPC, UTS, network, cgroup and (where
// the kernel allows) user namespaces; that init pivots into a fresh root of read-only binds with a
// new /proc, a minimal /dev, tmpfs /tmp and $HOME, the workspace (ro, rw or
// an overlay reviewed with `paddock diff/apply/discard`) and every secret
// found in a bound directory masked, attaches the paddock CNI network (the
// parent runs CNI ADD/DEL from the node's namespace, like a runtime) or,
// with --network none, only loopback plus 127.0.0.1:3128 (HTTP(S)_PROXY)
// bridged to a per-run socket the parent relays to paddockd's root-only
// explicit socket behind a header naming the run and its policy, which
// the sandbox can neither reach nor forge; then confines one
// locked thread (bounding and ambient capabilities dropped, ids switched,
// all sets emptied, no_new_privs, Landlock, seccomp) and forks the command
// from it, forwarding signals and reaping orphans until it exits.
package sandbox
