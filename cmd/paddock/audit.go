package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/paddock-sandbox/paddock/proxy"
)

func init() {
	register("audit", "show the proxy's audit log (one line per request)", cmdAudit)
}

func cmdAudit(args []string) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	logDir := fs.String("log-dir", "/var/log/paddock", "`dir` holding audit.jsonl")
	follow := fs.Bool("follow", false, "keep printing new lines as they are written")
	asJSON := fs.Bool("json", false, "print the raw JSON lines")
	sandbox := fs.String("sandbox", "", "only lines of this sandbox `id` (prefix of the container id)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := filepath.Join(*logDir, "audit.jsonl")
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open audit log: %w (is --log-dir right?)", err)
	}
	defer f.Close()
	return printAudit(f, os.Stdout, *follow, *asJSON, *sandbox)
}

func printAudit(f io.Reader, out io.Writer, follow, asJSON bool, sandbox string) error {
	r := bufio.NewReaderSize(f, 64<<10)
	var partial string
	for {
		line, err := r.ReadString('\n')
		if errors.Is(err, io.EOF) {
			partial += line
			if !follow {
				return nil
			}
			time.Sleep(250 * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("read audit log: %w", err)
		}
		line, partial = partial+line, ""
		var rec proxy.AuditRecord
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if sandbox != "" && !strings.HasPrefix(rec.Sandbox, sandbox) && !strings.HasPrefix(sandbox, rec.Sandbox) {
			continue
		}
		if asJSON {
			fmt.Fprint(out, line)
			continue
		}
		fmt.Fprintln(out, formatAudit(&rec))
	}
}

func formatAudit(r *proxy.AuditRecord) string {
	target := r.Host
	if target == "" {
		target = r.SNI
	}
	if target == "" {
		target = r.Dst
	}
	what := r.Kind
	if r.Method != "" {
		what = r.Method
	}
	s := fmt.Sprintf("%s %-12s %-5s %-7s %s%s", r.Time.Local().Format("2006-01-02 15:04:05"), r.Sandbox,
		r.Decision, what, target, r.Path)
	if r.Status != 0 {
		s += fmt.Sprintf(" %d", r.Status)
	}
	s += fmt.Sprintf(" up=%d down=%d %dms", r.BytesUp, r.BytesDown, r.DurationMs)
	if r.Rule != "" || r.Policy != "" {
		s += fmt.Sprintf(" policy=%s rule=%s", r.Policy, r.Rule)
	}
	if len(r.Injected) > 0 {
		s += " injected=" + strings.Join(r.Injected, ",")
	}
	if r.Error != "" {
		s += fmt.Sprintf(" (%s)", r.Error)
	}
	return s
}
