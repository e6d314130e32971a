#!/usr/bin/env bash
# Installs paddock onto this node, or into a staging root: tools/install.sh
# install|uninstall, run by `make install` / `make uninstall` after
# `make build`. Settings come from the environment:
#
#   DESTDIR           staging root; when set, nothing on this host is changed
#                     beyond files under it, and the commands that finish the
#                     install on the target are printed instead of run
#   PREFIX            /usr/local: $PREFIX/bin/paddock, $PREFIX/sbin/paddockd,
#                     systemd, sysusers.d and tmpfiles.d files under $PREFIX/lib
#   BIN               the build output (make build): paddock, paddockd, cni/paddock
#   CNI_BIN_DIR       /opt/cni/bin: the plugin is installed as $CNI_BIN_DIR/paddock.
#                     IPAM plugins (host-local) come from the distribution's
#                     containernetworking-plugins package, not from paddock.
#   CNI_CONF_DIR      /etc/cni/net.d: only checked by uninstall
#   SYSCONFDIR        /etc
#   LOCALSTATEDIR     /var
#   FORCE=1           uninstall even though a conflist still names paddock
#
# Uninstall removes what install put in place but keeps the configuration,
# policies, secrets, state, logs and the paddock-proxy user.
set -euo pipefail

action=${1:-}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
SYSCONFDIR=${SYSCONFDIR:-/etc}
LOCALSTATEDIR=${LOCALSTATEDIR:-/var}
PROXY_USER=paddock-proxy
src=$(cd "$(dirname "$0")" && pwd)/deploy/systemd

bindir=$PREFIX/bin
sbindir=$PREFIX/sbin
unitdir=$PREFIX/lib/systemd/system
sysusersdir=$PREFIX/lib/sysusers.d
tmpfilesdir=$PREFIX/lib/tmpfiles.d
confdir=$SYSCONFDIR/paddock

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# The directories install creates, with their modes; the secrets dir is
# handed to the proxy user once that user exists (tmpfiles does it too).
dirs=(
	"0755 $confdir"
	"0755 $confdir/policies"
	"0700 $confdir/secrets"
	"0711 $LOCALSTATEDIR/lib/paddock"
	"0750 $LOCALSTATEDIR/log/paddock"
)

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

do_install() {
	for f in paddock paddockd cni/paddock; do
		[ -f "$BIN/$f" ] || die "$BIN/$f is missing: run 'make build' first (or set BIN to the build output)"
	done
	[ "$(id -u)" = 0 ] || [ -n "$DESTDIR" ] || die "installing onto this host needs root; use sudo, or DESTDIR=dir to stage"

	install -D -m 0755 "$BIN/paddock" "$DESTDIR$bindir/paddock"
	install -D -m 0755 "$BIN/paddockd" "$DESTDIR$sbindir/paddockd"
	install -D -m 0755 "$BIN/cni/paddock" "$DESTDIR$CNI_BIN_DIR/paddock"
	install -d -m 0755 "$DESTDIR$unitdir"
	sed "s|@SBINDIR@|$sbindir|g" "$src/paddockd.service" >"$DESTDIR$unitdir/paddockd.service"
	chmod 0644 "$DESTDIR$unitdir/paddockd.service"
	install -D -m 0644 "$src/paddock.sysusers" "$DESTDIR$sysusersdir/paddock.conf"
	install -D -m 0644 "$src/paddock.tmpfiles" "$DESTDIR$tmpfilesdir/paddock.conf"
	for d in "${dirs[@]}"; do
		install -d -m "${d%% *}" "$DESTDIR${d#* }"
	done
	# Configuration is the operator's: installed once, never overwritten.
	if [ ! -e "$DESTDIR$confdir/paddockd.yaml" ]; then
		install -m 0644 "$src/paddockd.yaml" "$DESTDIR$confdir/paddockd.yaml"
	fi
	if [ ! -e "$DESTDIR$confdir/policies/default.yaml" ]; then
		install -m 0644 "$src/../../examples/policies/default.yaml" "$DESTDIR$confdir/policies/default.yaml"
	fi

	local finish=(
		"systemd-sysusers $sysusersdir/paddock.conf   # or: useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $PROXY_USER"
		"systemd-tmpfiles --create $tmpfilesdir/paddock.conf   # or: chown $PROXY_USER: $confdir/secrets"
		"systemctl daemon-reload && systemctl enable --now paddockd"
	)
	if [ -n "$DESTDIR" ]; then
		say "staged into $DESTDIR; on the target, as root:"
		for c in "${finish[@]}"; do say "  $c"; done
		return
	fi
	if ! id -u "$PROXY_USER" >/dev/null 2>&1; then
		if command -v systemd-sysusers >/dev/null; then
			systemd-sysusers "$sysusersdir/paddock.conf"
		else
			useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PROXY_USER"
		fi
	fi
	chown "$PROXY_USER:" "$confdir/secrets"
	if systemd_running; then
		systemctl daemon-reload
	fi
	say "installed. Next:"
	say "  systemctl enable --now paddockd"
	say "  paddock cni install --chain NETWORK   # or without --chain for a standalone network"
	say "see README.md, "Install on a node""
}

do_uninstall() {
	[ "$(id -u)" = 0 ] || [ -n "$DESTDIR" ] || die "uninstalling from this host needs root; use sudo"
	# Removing the plugin under a conflist that still names it breaks every
	# sandbox's ADD and DEL on this node.
	local users=()
	if [ -z "${FORCE:-}" ] && [ -d "$DESTDIR$CNI_CONF_DIR" ]; then
		shopt -s nullglob
		for f in "$DESTDIR$CNI_CONF_DIR"/*.conf "$DESTDIR$CNI_CONF_DIR"/*.conflist "$DESTDIR$CNI_CONF_DIR"/*.json; do
			if grep -qE '"type"[[:space:]]*:[[:space:]]*"paddock"' "$f"; then
				users+=("$f")
			fi
		done
		shopt -u nullglob
	fi
	if [ ${#users[@]} -gt 0 ]; then
		die "CNI config still uses paddock: ${users[*]}; run 'paddock cni uninstall [--chain NETWORK]' first (or FORCE=1 to remove anyway)"
	fi
	if systemd_running; then
		systemctl disable --now paddockd.service 2>/dev/null || true
	fi
	rm -f "$DESTDIR$bindir/paddock" "$DESTDIR$sbindir/paddockd" "$DESTDIR$CNI_BIN_DIR/paddock" \
		"$DESTDIR$unitdir/paddockd.service" "$DESTDIR$sysusersdir/paddock.conf" "$DESTDIR$tmpfilesdir/paddock.conf"
	if systemd_running; then
		systemctl daemon-reload
	fi
	say "removed the binaries, the plugin and the systemd files."
	say "kept: $confdir (config, policies, secrets), $LOCALSTATEDIR/lib/paddock, $LOCALSTATEDIR/log/paddock, the $PROXY_USER user;"
	say "pinned BPF objects stay under /sys/fs/bpf/paddock and the nftables table 'inet paddock' until reboot"
	say "or: rm -r /sys/fs/bpf/paddock && nft delete table inet paddock"
}

case "$action" in
install) do_install ;;
uninstall) do_uninstall ;;
*) die "usage: $0 install|uninstall" ;;
esac
