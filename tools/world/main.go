// Command world builds the paddock test world (see package test/world) for
// humans: the same node and internet namespaces, servers and leak detector
// the end-to-end tests use, kept up between commands so that one can poke at
// it by hand or run the demo in it.
//
//	go run ./tools/world up [-name dev] [-daemon]     build it (state in /run/paddock-world/<name>.json)
//	go run ./tools/world status [-name dev]           namespaces, processes, sandboxes, leaks
//	go run ./tools/world add [-name dev] [-policy P] SANDBOX   attach a sandbox with the paddock plugin
//	go run ./tools/world del [-name dev] SANDBOX
//	go run ./tools/world exec [-name dev] node|internet|SANDBOX -- cmd...
//	go run ./tools/world down [-name dev]             tear everything down
//
// `up` starts `world serve` in the background: a child process that holds
// the servers and the leak capture in the internet namespace until `down`.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/paddock-sandbox/paddock/test/world"
)

const stateRoot = "/run/paddock-world"

type stderrLog struct{}

func (stderrLog) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "world: "+format+"\n", args...)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func([]string) error{
		"up": up, "down": down, "status": status, "exec": execIn, "add": add, "del": del, "serve": serve,
	}
	fn, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := fn(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "world %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: world up [-name dev] [-daemon]
       world status [-name dev]
       world add [-name dev] [-policy default] SANDBOX
       world del [-name dev] SANDBOX
       world exec [-name dev] node|internet|SANDBOX -- cmd...
       world down [-name dev]`)
	os.Exit(2)
}

func flags(cmd string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	name := fs.String("name", "dev", "world name: 1 to 6 characters of [a-z0-9]")
	return fs, name
}

func statePath(name string) string { return filepath.Join(stateRoot, name+".json") }

func load(name string) (world.State, error) {
	var st world.State
	b, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("no world named %q is up (no %s): run `world up -name %s`", name, statePath(name), name)
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state %s: %w", statePath(name), err)
	}
	return st, nil
}

// attach reopens the world `up` saved under name; every command but down
// (which must also clear away a partly gone world) needs all of it.
func attach(name string) (*world.World, error) {
	st, err := load(name)
	if err != nil {
		return nil, err
	}
	return world.Attach(stderrLog{}, st)
}

func save(name string, st world.State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(name) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(name))
}

func up(args []string) (err error) {
	fs, name := flags("up")
	daemon := fs.Bool("daemon", false, "also start $PADDOCK_BIN/paddockd inside node")
	_ = fs.Parse(args)
	if os.Geteuid() != 0 {
		return errors.New("needs root: builds network namespaces")
	}
	if _, err := os.Stat(statePath(*name)); err == nil {
		return fmt.Errorf("world %q is already up (%s): run `world down -name %s` first", *name, statePath(*name), *name)
	}
	dir := filepath.Join(stateRoot, *name)
	w, err := world.Build(stderrLog{}, world.Options{ID: *name, Dir: dir, NoServers: true, NoCapture: true, Persistent: true})
	if err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	defer func() {
		if err != nil {
			_ = w.Close()
			_ = os.Remove(statePath(*name))
			_ = os.RemoveAll(dir)
		}
	}()
	if err = save(*name, w.State()); err != nil {
		return err
	}
	pid, err := startServe(*name, dir)
	if err != nil {
		return err
	}
	w.Own("serve", pid)
	if *daemon {
		if _, err = w.LaunchDaemon(world.DaemonOptions{Detach: true}); err != nil {
			return err
		}
	}
	if err = save(*name, w.State()); err != nil {
		return err
	}
	fmt.Printf("world %s is up\n  node:     %s (nsenter --net=%s)\n  internet: %s\n  subnet:   %s\n  CA:       %s\n  socket:   %s\n  state:    %s\n",
		*name, w.NodeNS, w.NodePath(), w.InternetNS, w.Subnet, w.CAFile, w.DaemonSocket(), statePath(*name))
	return nil
}

// startServe runs `world serve` in its own session and waits until its
// servers listen.
func startServe(name, dir string) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	ready := filepath.Join(dir, "serve.ready")
	_ = os.Remove(ready)
	cmd := exec.Command(self, "serve", "-name", name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start servers: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(10 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return cmd.Process.Pid, nil
		}
		select {
		case err := <-exited:
			return 0, fmt.Errorf("servers exited (%v): see %s", err, filepath.Join(dir, "serve.log"))
		case <-deadline:
			_ = cmd.Process.Kill()
			return 0, fmt.Errorf("servers not ready within 10s: see %s", filepath.Join(dir, "serve.log"))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serve holds the internet servers and the leak capture until SIGTERM,
// writing the leaks seen so far to <dir>/leaks.txt once a second.
func serve(args []string) error {
	fs, name := flags("serve")
	_ = fs.Parse(args)
	w, err := attach(*name)
	if err != nil {
		return err
	}
	if err := w.StartServices(true, true); err != nil {
		return err
	}
	defer w.StopServices()
	if err := os.WriteFile(filepath.Join(w.Dir, "serve.ready"), nil, 0o644); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	written := -1
	for {
		select {
		case <-sig:
			return nil
		case <-tick.C:
			if l := w.Leaks(); len(l) != written {
				written = len(l)
				_ = os.WriteFile(filepath.Join(w.Dir, "leaks.txt"), []byte(strings.Join(l, "\n")), 0o644)
			}
		}
	}
}

func down(args []string) error {
	fs, name := flags("down")
	_ = fs.Parse(args)
	st, err := load(*name)
	if err != nil {
		return err
	}
	w, err := world.Attach(stderrLog{}, st)
	if w == nil {
		return err
	}
	if err != nil {
		stderrLog{}.Logf("world %s is partly gone (%v): removing the rest", *name, err)
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := os.Remove(statePath(*name)); err != nil {
		return err
	}
	fmt.Printf("world %s is down\n", *name)
	return nil
}

func status(args []string) error {
	fs, name := flags("status")
	_ = fs.Parse(args)
	st, err := load(*name)
	if err != nil {
		return err
	}
	fmt.Printf("world %s (prefix %s), dir %s\n", *name, st.Prefix, st.Dir)
	for _, n := range []string{st.NodeNS, st.InternetNS} {
		fmt.Printf("  netns %-16s %s\n", n, present(filepath.Join("/run/netns", n)))
	}
	fmt.Printf("  subnet %s, CA %s\n", st.Subnet, st.CAFile)
	names := make([]string, 0, len(st.PIDs))
	for n := range st.PIDs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		state := "gone"
		if st.Alive(n) {
			state = "running"
		}
		fmt.Printf("  process %-12s pid %-7d %s\n", n, st.PIDs[n], state)
	}
	for _, s := range st.Sandboxes {
		fmt.Printf("  sandbox %-12s netns %s-%s policy %s %s\n", s.Name, st.Prefix, s.Name, s.Opts.Policy, present(filepath.Join("/run/netns", st.Prefix+"-"+s.Name)))
	}
	leaks, _ := os.ReadFile(filepath.Join(st.Dir, "leaks.txt"))
	if len(leaks) == 0 {
		fmt.Println("  leaks: none")
	} else {
		fmt.Printf("  leaks:\n    %s\n", strings.ReplaceAll(strings.TrimSpace(string(leaks)), "\n", "\n    "))
	}
	return nil
}

func present(path string) string {
	if _, err := os.Stat(path); err != nil {
		return "MISSING"
	}
	return "ok"
}

func execIn(args []string) error {
	fs, name := flags("exec")
	_ = fs.Parse(args)
	rest := fs.Args()
	if len(rest) < 2 {
		return errors.New("want: exec [-name dev] node|internet|SANDBOX -- cmd...")
	}
	target, cmd := rest[0], rest[1:]
	if cmd[0] == "--" {
		cmd = cmd[1:]
	}
	if len(cmd) == 0 {
		return errors.New("no command after --")
	}
	st, err := load(*name)
	if err != nil {
		return err
	}
	nsName := st.Prefix + "-" + target
	switch target {
	case "node":
		nsName = st.NodeNS
	case "internet", "inet":
		nsName = st.InternetNS
	}
	path := filepath.Join("/run/netns", nsName)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("no namespace %q in world %s: want node, internet or a sandbox name", target, *name)
	}
	// node and internet via nsenter (it leaves /sys/fs/bpf visible), a
	// sandbox via `ip netns exec` (it mounts the sandbox's resolv.conf).
	argv := append([]string{"nsenter", "--net=" + path, "--"}, cmd...)
	if nsName != st.NodeNS && nsName != st.InternetNS {
		argv = append([]string{"ip", "netns", "exec", nsName}, cmd...)
	}
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(prog, argv, os.Environ())
}

func add(args []string) error {
	fs, name := flags("add")
	policy := fs.String("policy", "default", "paddock policy for the sandbox")
	version := fs.String("cni-version", "1.0.0", "conflist cniVersion")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("want: add [-name dev] [-policy P] SANDBOX")
	}
	w, err := attach(*name)
	if err != nil {
		return err
	}
	sb, err := w.CreateSandbox(fs.Arg(0), world.SandboxOptions{Policy: *policy, CNIVersion: *version})
	if err != nil {
		return err
	}
	if err := save(*name, w.State()); err != nil {
		return err
	}
	fmt.Printf("sandbox %s: ip %s, host veth %s, netns %s\n", sb.Name, sb.IP, sb.HostVeth, sb.NetNS)
	return nil
}

func del(args []string) error {
	fs, name := flags("del")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("want: del [-name dev] SANDBOX")
	}
	w, err := attach(*name)
	if err != nil {
		return err
	}
	sb := w.Sandbox(fs.Arg(0))
	if sb == nil {
		return fmt.Errorf("no sandbox %q in world %s", fs.Arg(0), *name)
	}
	delErr := sb.Del()
	if err := save(*name, w.State()); err != nil {
		return err
	}
	return delErr
}
