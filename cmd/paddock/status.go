package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

func init() {
	register("status", "show paddockd and its sandboxes", cmdStatus)
}

func cmdStatus(args []string) error {
	return status(args, os.Stdout, os.Stderr)
}

// statusReport is the --json form: one document a script can read whole.
type statusReport struct {
	Status    api.Status          `json:"status"`
	Sandboxes []api.SandboxStatus `json:"sandboxes"`
}

func status(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", api.DefaultSocket, "paddockd API socket `path`")
	asJSON := fs.Bool("json", false, "print one JSON document instead of a table")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return exitCode(2)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: usage: paddock status [--socket PATH] [--json]", fs.Arg(0))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := api.NewClient(*socket)
	st, err := c.Status(ctx)
	if err != nil {
		return unreachable(*socket, err)
	}
	sbs, err := c.List(ctx)
	if err != nil {
		return unreachable(*socket, err)
	}
	if sbs == nil {
		sbs = []api.SandboxStatus{}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(statusReport{Status: st, Sandboxes: sbs})
	}
	return printStatus(stdout, st, sbs)
}

func unreachable(socket string, err error) error {
	switch {
	case !errors.Is(err, api.ErrUnavailable):
		return err
	case strings.Contains(err.Error(), "permission denied"):
		// The client flattens the dial error to text; the socket is 0600 root.
		return fmt.Errorf("%w: the socket is root-only, run paddock status as root", err)
	default:
		return fmt.Errorf("%w: start paddockd, or pass --socket PATH if it listens elsewhere than %s", err, socket)
	}
}

func printStatus(w io.Writer, st api.Status, sbs []api.SandboxStatus) error {
	ready := "yes"
	if !st.Ready {
		ready = "no"
		if st.Message != "" {
			ready += " (" + st.Message + ")"
		}
	}
	fmt.Fprintf(w, "paddockd:   ready %s\n", ready)
	fmt.Fprintf(w, "version:    %s, started %s\n", st.Version, st.Started.Local().Format(time.RFC3339))
	fmt.Fprintf(w, "redirect:   %s\n", st.Redirect)
	for i, name := range slices.Sorted(maps.Keys(st.Components)) {
		label := ""
		if i == 0 {
			label = "components:"
		}
		fmt.Fprintf(w, "%-11s %s: %s\n", label, name, st.Components[name])
	}
	fmt.Fprintf(w, "sandboxes:  %d\n", st.Sandboxes)
	if len(sbs) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER\tIFNAME\tHOST VETH\tIPS\tPOLICY\tENFORCED")
	for _, sb := range sbs {
		ips := make([]string, len(sb.IPs))
		for i, p := range sb.IPs {
			ips[i] = p.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sb.ShortID(), sb.IfName, sb.HostVeth,
			strings.Join(ips, ","), orDash(sb.Policy), sb.Enforced)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
