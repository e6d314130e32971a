// Command bench measures paddock's data path and proxy next to a sandbox
// without enforcement, in one run over the test world's topology (package
// test/world), and prints one table:
//
//	sudo go run ./tools/bench [-duration 2s] [-rounds 4] [-workers 4] [-bulk 64] [-max-conns 10000]
//
// Columns: "direct" is a plain sandbox the node simply forwards (no
// paddock), "eBPF" a CNI sandbox under `paddockd --redirect bpf`, "nftables"
// one under `paddockd --redirect nftables` in a second, identical world
// (one paddockd per node). Each measurement runs for every column, the
// columns taking turns (-rounds), so that load from elsewhere on the machine hits them
// alike; latencies are pooled over the rounds, bulk is the median download.
//
// The enforcer rows dial the TCP echo server (192.0.2.20:7) from inside the
// sandbox's namespace on OS threads locked there, and close with a reset.
// Under paddock the handshake completes at the proxy's transparent listener,
// so "TCP connect" and "connect+close" measure the redirect itself;
// "connect+echo" adds the proxy's opaque-TCP decision (a `tcp:` policy
// rule), its upstream dial and the splice. The proxy rows
// fetch https://allowed.test/ at 192.0.2.10:443 over HTTP/1.1: direct
// trusting the world's CA, under paddock trusting paddock's CA (the proxy
// terminates TLS and dials upstream by name).
//
// Ratios in parentheses are relative to direct. Every measurement is bound
// by -duration and -max-conns; the worlds are torn down on exit, on error and
// on SIGINT/SIGTERM.
package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
	"golang.org/x/sys/unix"
)

// policy allows the HTTPS host (terminated) and the echo server as opaque TCP.
const policy = `dns: allowlist
egress:
  - domains: [allowed.test]
  - tcp: ["192.0.2.20:7"]
`

const (
	rowConnect50   = "TCP connect p50 (µs)"
	rowConnect99   = "TCP connect p99 (µs)"
	rowEcho50      = "connect+echo p50 (µs)"
	rowEcho99      = "connect+echo p99 (µs)"
	rowConnRate    = "TCP connect+close (conn/s)"
	rowEchoRate    = "connect+echo+close (conn/s)"
	rowKeepAlive   = "HTTPS keep-alive (req/s)"
	rowNewConn     = "HTTPS new conn+TLS (conn/s)"
	rowNewConn50   = "HTTPS new conn p50 (ms)"
	rowBulk        = "HTTPS bulk GET (MB/s)"
	echoAddr       = "192.0.2.20:7"
	httpsURL       = "https://allowed.test/"
	defaultWorkers = 4
)

type stderrLog struct{}

func (stderrLog) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func main() {
	lim := limits{samples: 1000, bulkReps: 1}
	flag.DurationVar(&lim.duration, "duration", 2*time.Second, "time bound of each measurement, per column")
	flag.IntVar(&lim.rounds, "rounds", 4, "rounds each measurement is split into, the columns taking turns")
	flag.IntVar(&lim.workers, "workers", defaultWorkers, "concurrent clients in the rate measurements")
	flag.IntVar(&lim.maxConns, "max-conns", 10000, "connections one rate measurement may open at most")
	bulkMiB := flag.Int("bulk", 64, "MiB per bulk download (one per round, median)")
	flag.Parse()
	lim.bulk = *bulkMiB << 20
	if err := lim.check(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root: builds network namespaces and runs paddockd (run with sudo, or `make bench` as root)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, lim); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		stop()
		os.Exit(1)
	}
}

func (l limits) check() error {
	switch {
	case l.duration < 100*time.Millisecond || l.duration > time.Minute:
		return fmt.Errorf("-duration %s: want 100ms to 1m", l.duration)
	case l.workers < 1 || l.workers > 64:
		return fmt.Errorf("-workers %d: want 1 to 64", l.workers)
	case l.maxConns < l.workers || l.maxConns > 20000:
		// The proxy closes its upstream connections first: each leaves a
		// TIME_WAIT socket in the node namespace for a minute, and 20000
		// stays clear of the ephemeral port range.
		return fmt.Errorf("-max-conns %d: want -workers to 20000", l.maxConns)
	case l.bulk < 1<<20 || l.bulk > 1<<30:
		return fmt.Errorf("-bulk %d MiB: want 1 to 1024", l.bulk>>20)
	case l.rounds < 1 || l.rounds > 20 || l.duration/time.Duration(max(l.rounds, 1)) < 50*time.Millisecond ||
		l.maxConns/max(l.rounds, 1) < l.workers:
		return fmt.Errorf("-rounds %d: want 1 to 20, with at least 50ms and -workers connections per round", l.rounds)
	}
	return nil
}

// run builds the worlds, measures every row for every target and prints the
// table; the worlds go whatever happens.
func run(ctx context.Context, lim limits) error {
	bpfWorld, err := world.Build(stderrLog{}, world.Options{NoCapture: true})
	if err != nil {
		return fmt.Errorf("build world: %w", err)
	}
	defer closeWorld(bpfWorld)
	plain, err := bpfWorld.AddPlainSandbox("direct")
	if err != nil {
		return fmt.Errorf("plain sandbox: %w", err)
	}
	bpfSB, bpfRoots, err := enforced(bpfWorld, "bpf")
	if err != nil {
		return err
	}
	nftWorld, err := world.Build(stderrLog{}, world.Options{NoCapture: true})
	if err != nil {
		return fmt.Errorf("build world: %w", err)
	}
	defer closeWorld(nftWorld)
	nftSB, nftRoots, err := enforced(nftWorld, "nftables")
	if err != nil {
		return err
	}
	targets := []target{
		{name: "direct", netns: plain.NetNS, roots: bpfWorld.CAPool()},
		{name: "eBPF", netns: bpfSB.NetNS, roots: bpfRoots, proxy: bpfWorld},
		{name: "nftables", netns: nftSB.NetNS, roots: nftRoots, proxy: nftWorld},
	}
	names := make([]string, len(targets))
	for i, t := range targets {
		names[i] = t.name
	}
	tab := newTable(names, rowConnect50, rowConnect99, rowEcho50, rowEcho99, rowConnRate, rowEchoRate,
		rowKeepAlive, rowNewConn, rowNewConn50, rowBulk)

	bulkURL := fmt.Sprintf("https://allowed.test/bytes?n=%d", lim.bulk)
	echo := func() error { _, _, err := echoOnce(echoAddr); return err }
	steps := []struct {
		rows    []string
		measure func(t target, lim limits) (sample, error)
		figures func(s sample) []float64
	}{
		{
			[]string{rowConnect50, rowConnect99, rowEcho50, rowEcho99},
			func(t target, lim limits) (sample, error) { return measureEchoLatency(t, echoAddr, lim) },
			func(s sample) []float64 {
				return []float64{
					percentile(s.connect, 50, time.Microsecond), percentile(s.connect, 99, time.Microsecond),
					percentile(s.latency, 50, time.Microsecond), percentile(s.latency, 99, time.Microsecond),
				}
			},
		},
		{
			[]string{rowConnRate},
			func(t target, lim limits) (sample, error) {
				return measureConnRate(t, func() error { return connectOnce(echoAddr) }, lim)
			},
			func(s sample) []float64 { return []float64{s.rate()} },
		},
		{
			[]string{rowEchoRate},
			func(t target, lim limits) (sample, error) { return measureConnRate(t, echo, lim) },
			func(s sample) []float64 { return []float64{s.rate()} },
		},
		{
			[]string{rowKeepAlive},
			func(t target, lim limits) (sample, error) { return measureHTTPS(t, httpsURL, true, lim) },
			func(s sample) []float64 { return []float64{s.rate()} },
		},
		{
			[]string{rowNewConn, rowNewConn50},
			func(t target, lim limits) (sample, error) { return measureHTTPS(t, httpsURL, false, lim) },
			func(s sample) []float64 { return []float64{s.rate(), percentile(s.latency, 50, time.Millisecond)} },
		},
		{
			[]string{rowBulk},
			func(t target, lim limits) (sample, error) { return measureBulk(t, bulkURL, lim) },
			func(s sample) []float64 { return []float64{s.medianMBs()} },
		},
	}
	failed := false
	for _, st := range steps {
		acc := make([]sample, len(targets))
		errs := make([]error, len(targets))
		for round := range lim.rounds {
			for i, t := range targets {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("interrupted: %w", err)
				}
				if errs[i] != nil {
					continue
				}
				stderrLog{}.Logf("%s: %s, round %d/%d", t.name, st.rows[0], round+1, lim.rounds)
				s, err := st.measure(t, lim.round())
				if err != nil {
					errs[i] = err
					failed = true
					stderrLog{}.Logf("%s: %s: %v", t.name, st.rows[0], err)
					continue
				}
				acc[i].add(s)
			}
		}
		for i := range targets {
			for j, r := range st.rows {
				if errs[i] != nil {
					tab.fail(r, i, errs[i])
				} else {
					tab.set(r, i, st.figures(acc[i])[j])
				}
			}
		}
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Printf("paddock data path and proxy, %s, kernel %s, %d CPUs; %s per measurement in %d rounds, %d workers, bulk %d MiB\n",
		time.Now().UTC().Format(time.DateTime), unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU(),
		lim.duration, lim.rounds, lim.workers, lim.bulk>>20)
	fmt.Printf("enforcer rows: client in the sandbox netns -> %s (TCP echo); proxy rows: -> %s (HTTP/1.1)\n", echoAddr, httpsURL)
	if err := tab.write(os.Stdout); err != nil {
		return err
	}
	// The paddock columns count only if their traffic went through the
	// proxy: a leaking redirect would measure the direct path.
	for _, t := range targets {
		if t.proxy == nil {
			continue
		}
		allow, deny, err := proxied(ctx, t.proxy)
		switch {
		case err != nil:
			fmt.Printf("%s: proxy counters unavailable: %v\n", t.name, err)
			failed = true
		case allow == 0:
			fmt.Printf("%s: the proxy allowed nothing: these figures did not measure the paddock path\n", t.name)
			failed = true
		default:
			fmt.Printf("%s: the proxy allowed %.0f requests and connections and denied %.0f (paddock_proxy_requests_total)\n", t.name, allow, deny)
		}
	}
	if failed {
		return fmt.Errorf("some measurements failed or were not proxied (causes above)")
	}
	return nil
}

// enforced starts paddockd in w with the given redirect mode and attaches a
// sandbox with the CNI plugin; it returns the sandbox and the roots that
// trust paddock's CA.
func enforced(w *world.World, mode string) (*world.Sandbox, *x509.CertPool, error) {
	if err := w.WritePolicy("default", policy); err != nil {
		return nil, nil, fmt.Errorf("write policy: %w", err)
	}
	d, err := w.LaunchDaemon(world.DaemonOptions{Extra: []string{"--redirect", mode}})
	if err != nil {
		return nil, nil, fmt.Errorf("start paddockd --redirect %s: %w", mode, err)
	}
	sb, err := w.CreateSandbox("bench", world.SandboxOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox under paddockd --redirect %s: %w", mode, err)
	}
	pem, err := os.ReadFile(filepath.Join(d.CADir, "ca.pem"))
	if err != nil {
		return nil, nil, fmt.Errorf("paddock CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("paddock CA %s: no certificate in it", filepath.Join(d.CADir, "ca.pem"))
	}
	return sb, roots, nil
}

func closeWorld(w *world.World) {
	if err := w.Close(); err != nil {
		stderrLog{}.Logf("tear down world %s: %v", w.Prefix, err)
	}
}
