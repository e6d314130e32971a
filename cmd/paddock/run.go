package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/paddock-sandbox/paddock/sandbox"
)

func init() {
	// The sandbox's init re-executes this binary; it takes over before
	// main so that nothing else runs in it.
	if len(os.Args) > 1 && os.Args[1] == sandbox.InitCommand {
		sandbox.InitMain()
	}
	register("run", "run a command in a sandbox: paddock run [flags] -- COMMAND [ARGS...]", cmdRun)
}

type listFlag []string

func (l *listFlag) String() string     { return fmt.Sprint(*l) }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type funcFlag func(string) error

func (f funcFlag) String() string     { return "" }
func (f funcFlag) Set(v string) error { return f(v) }

func cmdRun(args []string) error {
	o := sandbox.DefaultOptions()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: paddock run [flags] -- COMMAND [ARGS...]\n\n"+
			"Runs COMMAND with a read-only view of the host, the workspace bound in, secrets masked,\n"+
			"no capabilities, seccomp, Landlock, limits and paddock's network.\n\nflags:\n")
		fs.PrintDefaults()
	}
	var envs, envPass, masks listFlag
	fs.Var(funcFlag(func(v string) error {
		m, err := sandbox.ParseWorkspace(v)
		o.Workspace = m
		return err
	}), "workspace", "`DIR[:ro|:rw|:overlay]` bound at the same path and used as working directory (default .:ro)")
	fs.Var(funcFlag(func(v string) error {
		m, err := sandbox.ParseMount(v, false)
		o.Mounts = append(o.Mounts, m)
		return err
	}), "mount", "`SRC:DST[:ro|:rw]` extra bind mount (repeatable; default ro)")
	fs.StringVar(&o.RootFS, "rootfs", "/", "`DIR` to use as the read-only root")
	fs.Var(funcFlag(func(v string) error {
		t, err := sandbox.ParseTmpfs(v)
		o.Tmpfs = append(o.Tmpfs, t)
		return err
	}), "tmpfs", "`PATH[:SIZE]` extra writable tmpfs (repeatable)")
	fs.StringVar(&o.TmpSize, "tmp-size", o.TmpSize, "size of the /tmp tmpfs")
	fs.StringVar(&o.HomeSize, "home-size", o.HomeSize, "size of the $HOME tmpfs")
	fs.StringVar(&o.Network, "network", o.Network, "`MODE`: paddock (an interface from the paddock CNI network: transparent, policy-enforced egress) or none (loopback only; HTTP(S)_PROXY=127.0.0.1:3128 reaches paddockd's explicit proxy under --policy)")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "CNI configuration `DIR`")
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", o.CNIBinDir, "CNI plugin `DIR`")
	fs.StringVar(&o.Policy, "policy", "", "egress policy `NAME` (default: the CNI network's; \""+sandbox.DefaultPolicy+"\" with --network none)")
	fs.StringVar(&o.ProxySocket, "proxy-socket", o.ProxySocket, "paddockd's root-only explicit proxy socket `PATH` (its --explicit-socket), relayed to from --network none")
	fs.Var(funcFlag(func(v string) error {
		n, err := sandbox.ParseSize(v)
		o.Memory = n
		return err
	}), "memory", "memory limit, e.g. `512m`")
	fs.Var(funcFlag(func(v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			return fmt.Errorf("cpus %q is not a positive number like 1.5", v)
		}
		o.CPUs = f
		return nil
	}), "cpus", "CPU limit in cores, e.g. `1.5`")
	fs.Int64Var(&o.Pids, "pids", 0, "maximum number of processes")
	idFlag := func(dst *int, what string) funcFlag {
		return func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fmt.Errorf("%s %q is not a non-negative number", what, v)
			}
			*dst = n
			return nil
		}
	}
	fs.Var(idFlag(&o.UID, "uid"), "uid", "user `ID` inside (default: a writable workspace's owner if not root, else 65534)")
	fs.Var(idFlag(&o.GID, "gid"), "gid", "group `ID` inside (default: goes with the uid)")
	fs.Var(&envs, "env", "`K=V` set in the (otherwise clean) environment (repeatable)")
	fs.Var(&envPass, "env-pass", "`NAME` of a host variable to pass in (repeatable)")
	fs.StringVar(&o.Seccomp, "seccomp", "", "OCI/Docker JSON seccomp profile `FILE` (default: Docker's default plus paddock's denials)")
	fs.Var(&masks, "mask", "`GLOB` to mask in addition to the built-in secret list (repeatable; trailing / = directory)")
	fs.StringVar(&o.CABundle, "ca-bundle", "", "paddock CA bundle `FILE` to trust (default "+sandbox.DefaultCABundle+" if present)")
	fs.BoolVar(&o.Verbose, "verbose", false, "print what was applied")
	fs.StringVar(&o.StateDir, "state-dir", sandbox.DefaultStateDir(), "run state and overlay layers `DIR`")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return exitCode(2)
	}
	o.Command = fs.Args()
	o.Env, o.EnvPass, o.Masks = envs, envPass, masks
	code, err := sandbox.Run(o)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}
