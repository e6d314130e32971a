package main

import (
	"bytes"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/paddock-sandbox/paddock/proxy"
)

func init() {
	register("ca", "print the node CA (ca export) or the sandbox trust bundle (ca bundle)", cmdCA)
}

// systemBundles are where Debian/Alpine, Fedora/RHEL and SUSE keep the roots.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
}

func cmdCA(args []string) error {
	if len(args) == 0 || (args[0] != "export" && args[0] != "bundle") {
		return errors.New("usage: paddock ca export|bundle [--ca-dir DIR]")
	}
	fs := flag.NewFlagSet("ca "+args[0], flag.ContinueOnError)
	caDir := fs.String("ca-dir", "/var/lib/paddock/ca", "`dir` of the node CA (paddockd --ca-dir)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(*caDir, proxy.CACertFile))
	if err != nil {
		return fmt.Errorf("read node CA: %w (has paddockd started its proxy once? is --ca-dir right?)", err)
	}
	if b, _ := pem.Decode(caPEM); b == nil || b.Type != "CERTIFICATE" {
		return fmt.Errorf("%s holds no PEM certificate", filepath.Join(*caDir, proxy.CACertFile))
	}
	if args[0] == "export" {
		_, err := os.Stdout.Write(caPEM)
		return err
	}
	for _, f := range systemBundles {
		sys, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if !bytes.HasSuffix(sys, []byte("\n")) {
			sys = append(sys, '\n')
		}
		_, err = os.Stdout.Write(append(sys, caPEM...))
		return err
	}
	return fmt.Errorf("no system CA bundle found (looked at %v): install ca-certificates", systemBundles)
}
