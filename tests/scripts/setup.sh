#!/usr/bin/env bash
# Installs what the project needs on a Debian 12 host and builds the test guest image.
# Idempotent: a second run only checks. Needs root (apt-get) unless everything is present.
# QEMU: 7.2 from the stock suite (installed by apt) and 10.0 from bookworm-backports (unpacked
# into .cache/qemu-10 by qemu10.sh, beside it: apt cannot install both).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PKGS=(qemu-system-x86 qemu-utils fio busybox-static xz-utils cpio strace util-linux systemd prometheus)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "setup: cargo is not installed (install Rust with rustup first)" >&2
    exit 1
fi
bash "$ROOT/tests/scripts/qemu10.sh" "$ROOT/.cache/qemu-10"
bash "$ROOT/tests/guest/build-image.sh" "${VU_GUEST_DIR:-$ROOT/.cache/guest}"
