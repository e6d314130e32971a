package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type sandbox -type counter_key -type counter_val -type paddock_mark -type paddock_reason -type paddock_listener Redirect redirect.c -- -I/usr/include/x86_64-linux-gnu -O2 -g
