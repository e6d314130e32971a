package main

import "golang.org/x/sys/unix"

func int80(trap, a1, a2, a3 uintptr) (r uintptr)

// archDenied are refused syscalls only this architecture has.
var archDenied = []sysc{{"iopl", unix.SYS_IOPL}, {"ioperm", unix.SYS_IOPERM}, {"kexec_load", unix.SYS_KEXEC_LOAD}}
