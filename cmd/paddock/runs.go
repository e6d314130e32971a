package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/paddock-sandbox/paddock/sandbox"
)

func init() {
	register("runs", "list sandbox runs (overlay runs keep their changes for review)", cmdRuns)
	register("diff", "show what an overlay run changed: paddock diff RUN", runCmd("diff", func(dir string, r *sandbox.Record) error {
		return sandbox.Diff(dir, r, os.Stdout)
	}))
	register("apply", "apply an overlay run's changes to its workspace: paddock apply RUN", runCmd("apply", func(dir string, r *sandbox.Record) error {
		if err := sandbox.Apply(dir, r); err != nil {
			return err
		}
		fmt.Printf("applied run %s to %s\n", r.ID, r.Workspace)
		return nil
	}))
	register("discard", "drop an overlay run's changes: paddock discard RUN", runCmd("discard", func(dir string, r *sandbox.Record) error {
		if err := sandbox.Discard(dir, r); err != nil {
			return err
		}
		fmt.Printf("discarded run %s\n", r.ID)
		return nil
	}))
}

func stateFlag(fs *flag.FlagSet) *string {
	return fs.String("state-dir", sandbox.DefaultStateDir(), "run state `DIR`")
}

func cmdRuns(args []string) error {
	fs := flag.NewFlagSet("runs", flag.ContinueOnError)
	dir := stateFlag(fs)
	if err := fs.Parse(args); err != nil {
		return exitCode(2)
	}
	runs, err := sandbox.ListRuns(*dir)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tCREATED\tSTATUS\tCHANGES\tWORKSPACE\tCOMMAND")
	for _, r := range runs {
		status, changes := "running", "-"
		if r.Exited {
			status = fmt.Sprintf("exited(%d)", r.ExitCode)
			if r.Overlay {
				if c, err := sandbox.Changes(*dir, r); err == nil {
					changes = fmt.Sprint(len(c))
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Created.Local().Format(time.DateTime), status, changes, r.Workspace, strings.Join(r.Command, " "))
	}
	return tw.Flush()
}

func runCmd(name string, do func(dir string, r *sandbox.Record) error) func([]string) error {
	return func(args []string) error {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		dir := stateFlag(fs)
		if err := fs.Parse(args); err != nil {
			return exitCode(2)
		}
		if fs.NArg() != 1 {
			return fmt.Errorf("want exactly one run id: paddock %s RUN (see paddock runs)", name)
		}
		r, err := sandbox.FindRun(*dir, fs.Arg(0))
		if err != nil {
			return err
		}
		return do(*dir, r)
	}
}
