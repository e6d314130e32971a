#!/usr/bin/env bash
# make demo: everything happens in network namespaces the demo creates.
set -euo pipefail
cd "$(dirname "$0")/.."
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
exec go run ./tools/demo
