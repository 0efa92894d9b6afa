#!/usr/bin/env bash
# Installs the launcher where the hosts' own tools look for it:
#
#   PREFIX/bin/launcher
#   PREFIX/libexec/vu-vhost-user-KIND -> ../bin/launcher    one back-end program per kind: the
#                                                           launcher runs as `launcher start KIND`
#                                                           when called by that name
#   PREFIX/share/qemu/vhost-user/50-vu-KIND.json            description files (vhost-user spec,
#                                                           "Backend program conventions"): libvirt
#                                                           reads "type" and runs "binary"
#   PREFIX/lib/systemd/system/vu-launcher@.service          units (see docs/systemd.md)
#   PREFIX/lib/systemd/system/vu-vm@.service, vu-vm@.socket
#
# One description file per kind is in packaging/qemu-vhost-user/; its "binary" is written as
# @LIBEXECDIR@/vu-vhost-user-KIND and gets the real directory here. Every installed program
# is run with --print-capabilities at the end, and its type checked against its file.
#
# Usage: packaging/install.sh [--no-systemd] PREFIX        (e.g. /usr/local, or /usr)
# Environment:
#   DESTDIR       staging root: files go to $DESTDIR$PREFIX/..., and name $PREFIX/... inside
#   LAUNCHER_BIN  a launcher binary to install (default: `cargo build --release -p launcher`
#                 and target/release/launcher)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

systemd=1
if [[ "${1:-}" == "--no-systemd" ]]; then
    systemd=0
    shift
fi
if [[ $# -ne 1 || "$1" != /* ]]; then
    echo "usage: $0 [--no-systemd] PREFIX   (an absolute path, e.g. /usr/local)" >&2
    exit 2
fi
PREFIX="${1%/}"
DEST="${DESTDIR:-}"
bindir="$PREFIX/bin"
libexecdir="$PREFIX/libexec"
vhostdir="$PREFIX/share/qemu/vhost-user"
unitdir="$PREFIX/lib/systemd/system"

bin="${LAUNCHER_BIN:-}"
if [[ -z "$bin" ]]; then
    (cd "$ROOT" && cargo build --release -p launcher)
    bin="$ROOT/target/release/launcher"
fi
[[ -x "$bin" ]] || { echo "install: $bin is not an executable" >&2; exit 1; }

install -d "$DEST$bindir" "$DEST$libexecdir" "$DEST$vhostdir"
install -m 0755 "$bin" "$DEST$bindir/launcher"

shopt -s nullglob
descriptions=("$ROOT"/packaging/qemu-vhost-user/*.json)
if ((${#descriptions[@]} == 0)); then
    echo "install: no description files in packaging/qemu-vhost-user" >&2
    exit 1
fi
for json in "${descriptions[@]}"; do
    program="$(sed -n 's|.*"binary": *"@LIBEXECDIR@/\([^"/]*\)".*|\1|p' "$json")"
    type="$(sed -n 's|.*"type": *"\([^"]*\)".*|\1|p' "$json")"
    if [[ "$program" != vu-vhost-user-* || -z "$type" ]]; then
        echo "install: $json needs \"type\" and \"binary\": \"@LIBEXECDIR@/vu-vhost-user-KIND\"" >&2
        exit 1
    fi
    # Relative, so that the link holds under DESTDIR and if PREFIX moves as a whole.
    ln -sfn "../bin/launcher" "$DEST$libexecdir/$program"
    sed "s|@LIBEXECDIR@|$libexecdir|g" "$json" > "$DEST$vhostdir/$(basename "$json")"
    chmod 0644 "$DEST$vhostdir/$(basename "$json")"
    caps="$("$DEST$libexecdir/$program" --print-capabilities)"
    if [[ "$caps" != "{\"type\":\"$type\""* ]]; then
        echo "install: $program --print-capabilities printed $caps, not type $type" >&2
        exit 1
    fi
    echo "install: $libexecdir/$program ($caps)"
done

if ((systemd)); then
    install -d "$DEST$unitdir"
    for unit in "$ROOT"/packaging/systemd/*.service "$ROOT"/packaging/systemd/*.socket; do
        sed "s|@BINDIR@|$bindir|g" "$unit" > "$DEST$unitdir/$(basename "$unit")"
        chmod 0644 "$DEST$unitdir/$(basename "$unit")"
    done
    echo "install: systemd units in $unitdir (systemctl daemon-reload to see them)"
fi
echo "install: $bindir/launcher, description files in $vhostdir"
