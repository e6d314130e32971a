package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/plugin/conflist"
)

func init() {
	register("cni", "add paddock to / remove it from the node's CNI config (cni install|uninstall)", cmdCNI)
}

// policyNameRE is the plugin's rule for policy names (plugin/config.go),
// checked here so a bad name fails at install, not at the first sandbox.
var policyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

const cniUsage = `usage:
  paddock cni install   [--conf-dir DIR] [--chain NETWORK] [--bin-dir DIR] [--copy-binary FILE]
                        [--policy NAME] [--socket PATH] [--subnet CIDR]
  paddock cni uninstall [--conf-dir DIR] [--chain NETWORK] [--bin-dir DIR] [--remove-binary]

With --chain, paddock is appended to the plugins of the conflist whose name is
NETWORK (the original is kept as FILE.paddock-backup until uninstall); without
it, a standalone conflist DIR/10-paddock.conflist (network "paddock",
host-local IPAM over --subnet) is written.`

func cmdCNI(args []string) error {
	if len(args) == 0 {
		return errors.New(cniUsage)
	}
	switch args[0] {
	case "install":
		return cniInstall(args[1:], os.Stdout)
	case "uninstall":
		return cniUninstall(args[1:], os.Stdout)
	}
	return fmt.Errorf("unknown subcommand %q\n%s", args[0], cniUsage)
}

// cniFlags are the flags install and uninstall share.
type cniFlags struct {
	confDir, chain, binDir string
}

func (c *cniFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&c.confDir, "conf-dir", "/etc/cni/net.d", "the runtime's CNI configuration `dir`")
	fs.StringVar(&c.chain, "chain", "", "`network` (conflist \"name\") to chain paddock onto; empty: standalone conflist")
	fs.StringVar(&c.binDir, "bin-dir", "/opt/cni/bin", "the runtime's CNI plugin `dir`")
}

func parseCNIFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%v\n%s", err, cniUsage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: cni %s takes only flags\n%s", fs.Arg(0), fs.Name(), cniUsage)
	}
	return nil
}

func cniInstall(args []string, out io.Writer) error {
	var (
		c                   cniFlags
		copyFrom, pol, sock string
		subnet              string
	)
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	c.bind(fs)
	fs.StringVar(&copyFrom, "copy-binary", "", "plugin `file` to copy into --bin-dir as \"paddock\" first (e.g. from a DaemonSet's image)")
	fs.StringVar(&pol, "policy", "default", "policy `name` sandboxes of this network get")
	fs.StringVar(&sock, "socket", api.DefaultSocket, "paddockd's API socket `path`")
	fs.StringVar(&subnet, "subnet", conflist.DefaultSubnet.String(), "standalone conflist's IPv4 `cidr` for host-local")
	if err := parseCNIFlags(fs, args); err != nil {
		return err
	}
	if !policyNameRE.MatchString(pol) {
		return fmt.Errorf("--policy %q is not a valid policy name: use 1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit", pol)
	}
	if !filepath.IsAbs(sock) {
		return fmt.Errorf("--socket %q is not an absolute path: give paddockd's API socket, e.g. %s", sock, api.DefaultSocket)
	}
	prefix, err := netip.ParsePrefix(subnet)
	if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 30 {
		return fmt.Errorf("--subnet %q: want an IPv4 CIDR of /30 or larger, e.g. %s", subnet, conflist.DefaultSubnet)
	}

	opts := conflist.Options{
		ConfDir: c.confDir, Chain: c.chain,
		Entry:  conflist.NewEntry(pol, sock),
		Subnet: prefix,
	}
	// Refuse a bad target before copying anything.
	if err := conflist.Check(opts); err != nil {
		return err
	}
	// The binary goes first: a runtime must never load a conflist whose
	// plugin it cannot find.
	plugin := filepath.Join(c.binDir, conflist.PluginType)
	if copyFrom != "" {
		if err := conflist.CopyBinary(copyFrom, plugin); err != nil {
			return err
		}
		fmt.Fprintf(out, "copied %s to %s\n", copyFrom, plugin)
	} else if _, err := os.Stat(plugin); err != nil {
		return fmt.Errorf("the paddock plugin is not at %s (%v): run `make install`, pass the runtime's plugin dir with --bin-dir, or copy it there with --copy-binary FILE", plugin, err)
	}
	if c.chain == "" && !haveHostLocal(c.binDir) {
		fmt.Fprintf(os.Stderr, "paddock cni install: warning: the standalone conflist uses the host-local IPAM plugin, which is in neither %s nor %v: install your distribution's containernetworking-plugins\n", c.binDir, distroCNIDirs)
	}

	ch, err := conflist.Install(opts)
	if err != nil {
		return err
	}
	switch ch.Action {
	case conflist.Unchanged:
		fmt.Fprintf(out, "%s already has paddock (policy %q): unchanged\n", ch.File, pol)
	case conflist.Chained:
		fmt.Fprintf(out, "chained paddock (policy %q) onto network %q in %s", pol, c.chain, ch.File)
		if ch.Backup != "" {
			fmt.Fprintf(out, "; original kept as %s", ch.Backup)
		}
		fmt.Fprintln(out)
	case conflist.Written:
		fmt.Fprintf(out, "wrote standalone conflist %s (network %q, policy %q, subnet %s)\n", ch.File, conflist.StandaloneNetwork, pol, prefix)
	}
	return nil
}

// distroCNIDirs are where distribution packages put the CNI plugins; podman
// searches them besides /opt/cni/bin.
var distroCNIDirs = []string{"/usr/lib/cni", "/usr/libexec/cni"}

func haveHostLocal(binDir string) bool {
	for _, d := range append([]string{binDir}, distroCNIDirs...) {
		if _, err := os.Stat(filepath.Join(d, "host-local")); err == nil {
			return true
		}
	}
	return false
}

func cniUninstall(args []string, out io.Writer) error {
	var (
		c         cniFlags
		removeBin bool
	)
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	c.bind(fs)
	fs.BoolVar(&removeBin, "remove-binary", false, "also delete the plugin from --bin-dir (after the conflist no longer names it)")
	if err := parseCNIFlags(fs, args); err != nil {
		return err
	}
	ch, err := conflist.Uninstall(c.confDir, c.chain)
	if err != nil {
		return err
	}
	switch ch.Action {
	case conflist.Unchanged:
		fmt.Fprintf(out, "%s has no paddock: unchanged\n", ch.File)
	case conflist.Restored:
		fmt.Fprintf(out, "removed paddock from %s (restored the original bytes)\n", ch.File)
	case conflist.Unchained:
		fmt.Fprintf(out, "removed paddock from %s; it was edited since the install, so %s is kept for you to compare and delete\n", ch.File, ch.Backup)
	case conflist.Removed:
		fmt.Fprintf(out, "removed %s\n", ch.File)
	}
	if removeBin {
		plugin := filepath.Join(c.binDir, conflist.PluginType)
		switch err := os.Remove(plugin); {
		case err == nil:
			fmt.Fprintf(out, "removed %s\n", plugin)
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("remove plugin: %w", err)
		}
	}
	return nil
}
