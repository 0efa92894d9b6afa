#!/usr/bin/env bash
# Provides QEMU 10.0 beside the stock 7.2 (which apt installs): the bookworm-backports packages
# are unpacked with `dpkg -x` into DIR (default .cache/qemu-10), never installed, so the
# system's QEMU stays 7.2. DIR/bin holds wrappers for qemu-system-x86_64,
# qemu-storage-daemon, qemu-img and qemu-io that run the unpacked binaries with their own
# firmware (-L: QEMU 10's data files and backports' SeaBIOS first; the system's iPXE ROMs
# after) and their own modules (QEMU_MODULE_DIR).
#
#   tests/scripts/qemu10.sh [DIR]
#
# Adds the bookworm-backports suite to apt's sources the way the stock Debian entry is written
# (same archive, same keyring) when no source names it yet. Installs the shared libraries the
# unpacked binaries need (the lib* dependencies of the packages, from the stock suite), and
# fails if `ldd` still finds one missing. Idempotent: DIR/stamp records the package versions,
# DIR and this script's sha256.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SCRIPT_PATH")/../.." && pwd)
DIR=${1:-$ROOT/.cache/qemu-10}
SUITE=bookworm-backports
PKGS=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils seabios)
TOOLS=(qemu-system-x86_64 qemu-storage-daemon qemu-img qemu-io)

log() { echo "qemu10: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
export DEBIAN_FRONTEND=noninteractive

# --- the suite ------------------------------------------------------------------------------
SOURCES=/etc/apt/sources.list.d/debian-backports.sources
if ! grep -rqs "$SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    [[ $(id -u) -eq 0 ]] || die "run as root to add $SUITE to apt's sources"
    # The archive and keyring of the stock entry (deb822 or one-line format).
    uri=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [[ -z $uri ]]; then
        uri=$(awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++)
            if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null || true)
    fi
    uri=${uri:-http://deb.debian.org/debian}
    log "adding $SUITE ($uri) to $SOURCES"
    cat >"$SOURCES" <<EOF
Types: deb
URIs: $uri
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq
fi

candidate() { # package -> its version in $SUITE, empty if unknown
    apt-cache madison "$1" 2>/dev/null | awk -v s="$SUITE" '$0 ~ s { print $3; exit }'
}
VERSION=$(candidate qemu-system-x86)
if [[ -z $VERSION ]]; then
    apt-get update -qq
    VERSION=$(candidate qemu-system-x86)
fi
[[ -n $VERSION ]] || die "no qemu-system-x86 in $SUITE"

mkdir -p "$DIR"
DIR=$(readlink -f "$DIR")
# The wrappers name DIR: a moved DIR is unpacked again.
STAMP="qemu=$VERSION seabios=$(candidate seabios) dir=$DIR script=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)"
exec 9>"$DIR/.lock"
flock 9
if [[ -f $DIR/stamp && $(cat "$DIR/stamp") == "$STAMP" ]] &&
    "$DIR/bin/qemu-system-x86_64" --version >/dev/null 2>&1; then
    log "up to date: $DIR (QEMU $VERSION)"
    exit 0
fi

# --- unpack ---------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/vu-qemu10.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK"
chown _apt "$WORK" 2>/dev/null || true # apt-get download runs as _apt when it can
log "downloading ${PKGS[*]} from $SUITE"
(cd "$WORK" && for p in "${PKGS[@]}"; do apt-get download -q "$p/$SUITE" >&2; done)
rm -rf "$DIR/root" "$DIR/bin"
mkdir -p "$DIR/root" "$DIR/bin"
for deb in "$WORK"/*.deb; do
    dpkg -x "$deb" "$DIR/root"
done

# --- libraries ------------------------------------------------------------------------------
libs=()
for deb in "$WORK"/*.deb; do
    deps=$(dpkg-deb -f "$deb" Depends 2>/dev/null || true)
    while read -r name; do
        [[ $name == lib* ]] && libs+=("$name")
    done < <(tr ',' '\n' <<<"$deps" | sed -E 's/\|.*//; s/\(.*\)//; s/:any//; s/^ +| +$//g')
done
missing=()
for l in $(printf '%s\n' "${libs[@]}" | sort -u); do
    [[ $(dpkg-query -W -f='${Status}' "$l" 2>/dev/null || true) == "install ok installed" ]] ||
        missing+=("$l")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
R=$DIR/root
for t in "${TOOLS[@]}"; do
    [[ -x $R/usr/bin/$t ]] || die "$t is not in the unpacked packages"
    if ldd "$R/usr/bin/$t" | grep -q 'not found'; then
        die "$t lacks libraries: $(ldd "$R/usr/bin/$t" | grep 'not found' | tr '\n' ' ')"
    fi
done

# --- wrappers -------------------------------------------------------------------------------
for t in "${TOOLS[@]}"; do
    firmware=""
    [[ $t == qemu-system-* ]] && firmware="-L '$R/usr/share/qemu' -L '$R/usr/share/seabios' "
    cat >"$DIR/bin/$t" <<EOF
#!/bin/sh
# $t $VERSION, unpacked by tests/scripts/qemu10.sh.
QEMU_MODULE_DIR='$R/usr/lib/x86_64-linux-gnu/qemu'
export QEMU_MODULE_DIR
exec '$R/usr/bin/$t' ${firmware}"\$@"
EOF
    chmod 0755 "$DIR/bin/$t"
done
"$DIR/bin/qemu-system-x86_64" --version | head -n1 | sed 's/^/qemu10: /' >&2
echo "$STAMP" >"$DIR/stamp"
log "ready: $DIR/bin"
