// Package sandbox is the launcher behind `paddock run`: namespaces, a fresh
// read-only root, masked secrets, emptied capabilities, seccomp, Landlock and
// resource limits for a bare process, with paddock networking.
package sandbox
