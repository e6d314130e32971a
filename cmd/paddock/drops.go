package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/paddock-sandbox/paddock/enforcer"
)

func init() {
	register("drops", "show packets paddock dropped", cmdDrops)
}

func cmdDrops(args []string) error {
	fs := flag.NewFlagSet("drops", flag.ContinueOnError)
	logDir := fs.String("log-dir", enforcer.DefaultLogDir, "`dir` holding "+enforcer.DropsFile)
	follow := fs.Bool("follow", false, "keep printing drops as they happen (until Ctrl-C)")
	asJSON := fs.Bool("json", false, "print the raw JSON lines")
	sandbox := fs.String("sandbox", "", "only drops of this sandbox `id` (short or full container id, or a prefix)")
	last := fs.Int("n", 0, "print only the last `N` drops (0: all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: use --sandbox ID to filter", fs.Arg(0))
	}
	if *last < 0 {
		return fmt.Errorf("-n %d: want 0 (all) or a positive count", *last)
	}
	path := enforcer.DropsPath(*logDir)
	f, err := os.Open(path)
	switch {
	case os.IsNotExist(err) && *follow:
	case os.IsNotExist(err):
		fmt.Fprintf(os.Stderr, "no drops logged yet (%s does not exist; is --log-dir right?)\n", path)
		return nil
	case err != nil:
		return fmt.Errorf("open drop log: %w (is --log-dir right? reading it needs root or the paddock group)", err)
	}
	p := dropPrinter{out: os.Stdout, json: *asJSON, sandbox: *sandbox}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var read int64
	if f != nil {
		read, err = p.printExisting(f, *last)
		f.Close()
		if err != nil {
			return err
		}
	}
	if !*follow {
		return nil
	}
	return enforcer.FollowDropsFrom(ctx, path, read, p.print)
}

type dropPrinter struct {
	out     io.Writer
	json    bool
	sandbox string
}

// printExisting prints the matching drops already in r, or the last n,
// and returns how many bytes it consumed.
func (p dropPrinter) printExisting(r io.Reader, n int) (int64, error) {
	type line struct {
		d   enforcer.Drop
		raw []byte
	}
	var ring []line
	read, err := enforcer.ScanDrops(r, func(d enforcer.Drop, raw []byte) {
		if !p.match(d) {
			return
		}
		if n == 0 {
			p.print(d, raw)
			return
		}
		ring = append(ring, line{d, append([]byte(nil), raw...)})
		if len(ring) > n {
			ring = ring[1:]
		}
	})
	for _, l := range ring {
		p.print(l.d, l.raw)
	}
	return read, err
}

func (p dropPrinter) match(d enforcer.Drop) bool {
	if p.sandbox == "" {
		return true
	}
	if d.ContainerID != "" && strings.HasPrefix(d.ContainerID, p.sandbox) {
		return true
	}
	return strings.HasPrefix(d.Sandbox, p.sandbox)
}

func (p dropPrinter) print(d enforcer.Drop, raw []byte) {
	if !p.match(d) {
		return
	}
	if p.json {
		fmt.Fprintf(p.out, "%s\n", raw)
		return
	}
	fmt.Fprintln(p.out, formatDrop(d))
}

// formatDrop renders one drop for a terminal:
// 2026-11-26T14:03:01Z  sandbox 3f2a9c1b7d20  udp   10.1.0.2:5353 → 192.0.2.20:7  (reason udp)
func formatDrop(d enforcer.Drop) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  sandbox %-12s  %-5s %s → %s", d.Time.UTC().Format(time.RFC3339), d.Sandbox, d.Proto,
		endpoint(d.Src, d.SrcPort), endpoint(d.Dst, d.DstPort))
	if d.ICMPType != nil && d.ICMPCode != nil {
		fmt.Fprintf(&b, " type %d code %d", *d.ICMPType, *d.ICMPCode)
	}
	fmt.Fprintf(&b, "  (reason %s)", d.Reason)
	if d.Sandbox == "unknown" && d.HostVeth != "" {
		fmt.Fprintf(&b, " on %s", d.HostVeth)
	}
	return b.String()
}

func endpoint(addr string, port uint16) string {
	if addr == "" {
		return "?"
	}
	if port == 0 {
		return addr
	}
	if a, err := netip.ParseAddr(addr); err == nil {
		return netip.AddrPortFrom(a, port).String()
	}
	return fmt.Sprintf("%s:%d", addr, port)
}
