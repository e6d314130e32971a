package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/paddock-sandbox/paddock/proxy/policy"
)

func init() {
	register("policy", "check policy files (policy check FILE...)", cmdPolicy)
}

func cmdPolicy(args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return errors.New("usage: paddock policy check FILE...")
	}
	fs := flag.NewFlagSet("policy check", flag.ContinueOnError)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: paddock policy check FILE... (name at least one policy file)")
	}
	failed := 0
	for _, f := range fs.Args() {
		p, err := policy.ParseFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			failed++
			continue
		}
		fmt.Printf("%s: ok (policy %q, %d rules, dns %s)\n", f, p.Name, len(p.Egress), p.DNS)
	}
	if failed > 0 {
		return exitCode(1)
	}
	return nil
}
