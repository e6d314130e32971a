// Package world builds the network-namespace topology every paddock
// end-to-end test, the demo and the benchmarks run in, so that no test ever
// touches the root namespace's routes, addresses, firewall or sysctls.
//
// A world is two namespaces joined by a veth pair plus one namespace per
// sandbox. `<prefix>-node` plays the host (paddockd, BPF, nftables and the
// proxy run there; it forwards IPv4 and IPv6 so that a missing enforcer
// really leaks)
// and its default route points into `<prefix>-inet`, which holds the upstream
// servers on TEST-NET addresses and has no default route, so nothing leaves
// the machine:
//
//	sandbox netns ──veth (made by the paddock CNI plugin)── node 198.51.100.1 ──veth── 198.51.100.254 internet
//	                                                                            lo: 192.0.2.10  HTTPS :443, HTTP :80
//	                                                                                192.0.2.53  DNS for test. (UDP+TCP)
//	                                                                                192.0.2.20  UDP+TCP echo :7, ping
//	                                                                                203.0.113.10 HTTPS :443
//
// The HTTPS servers present certificates from a CA generated per world
// (World.CAFile, World.CAPool); their paths are `/` (hello from <host>),
// `/echo` (the request as JSON), `/echo-secret` (reflects Authorization and
// X-Api-Key), `/bytes?n=N` and `/slow?seconds=S&n=N`. The DNS server answers
// the names in DefaultDNS (change them with World.SetDNS), TXT for any name
// under test., NXDOMAIN otherwise.
//
// A packet capture on internet's veth is the leak detector: every IPv4
// packet whose source is in Options.SandboxRange (10.0.0.0/8) and every IPv6
// packet that arrives there is recorded (World.Leaks, World.AssertNoLeaks);
// World.NodePackets counts what the node itself sent (the proxy's upstream
// traffic).
//
// In a test:
//
//	w := world.New(t, world.Options{})          // skips unless root; torn down by t.Cleanup
//	w.WritePolicy("default", policyYAML)         // files in w.PolicyDir()
//	d := w.StartDaemon(t)                        // $PADDOCK_BIN/paddockd inside node, API answering
//	sb, err := w.AddSandbox(t, "agent", world.SandboxOptions{Policy: "default"})
//	out, err := sb.Exec(ctx, "curl", "-s", "https://allowed.test/")
//	resp, err := sb.HTTPClient(proxyCA).Get("https://echo.test/echo")
//	w.AssertNoLeaks(t)
//
// Sandboxes are attached by the real plugin through libcni (World.CNIConfig,
// World.ConfList), executed inside the node namespace as a runtime would;
// Sandbox.Exec runs commands with `ip netns exec`, so their resolv.conf names
// 192.0.2.53. AddPlainSandbox wires a namespace to node by hand, without
// paddock: its traffic is simply forwarded, which is how the leak detector
// is proven to work. paddockd runs under `nsenter --net` (not `ip netns
// exec`, which would hide /sys/fs/bpf) with the flags of DefaultDaemonFlags;
// Daemon.Stop, Kill, Restart, WaitReady and Metrics drive it. Binaries come
// from $PADDOCK_BIN (the Makefile exports it), else from bin/ beside go.mod.
//
// Build is the constructor without *testing.T; State and Attach let another
// process find a world again. The `tools/world` command uses them to build
// the same world for humans (`go run ./tools/world up|status|add|del|exec|down`).
package world
