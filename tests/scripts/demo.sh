#!/usr/bin/env bash
# Quick start: installs what is needed, builds, starts `launcher start block` on a fresh image,
# boots a QEMU guest whose /dev/vda is served by it, and runs fio with verification on it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash tests/scripts/setup.sh
cargo build --release -p launcher -p vu-tests
exec "$ROOT/target/release/vu-demo" --launcher "$ROOT/target/release/launcher" "$@"
