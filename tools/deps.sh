#!/usr/bin/env bash
# Installs the Debian packages `make demo` and `make test` use, when any is
# missing (the one list: .ci/run calls this too). Needs root and apt-get;
# elsewhere it only says what is missing.
set -euo pipefail
# command → Debian package
declare -A need=(
  [ip]=iproute2 [nft]=nftables [tcpdump]=tcpdump [curl]=curl [ping]=iputils-ping
  [dig]=dnsutils [pgrep]=procps [killall]=psmisc [bwrap]=bubblewrap [tmux]=tmux
  [clang]=clang [llvm-strip]=llvm [git]=git [make]=make [podman]=podman
  [busybox]=busybox-static [containerd]=containerd [python3]=python3 [strace]=strace
  [systemd-analyze]=systemd [nsenter]=util-linux [node]=nodejs
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing packages: ${missing[*]} (install them as root)" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
