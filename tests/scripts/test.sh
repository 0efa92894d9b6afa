#!/usr/bin/env bash
# Runs every test: unit, socketpair, conformance (rust-vmm vhost front-end), launcher CLI, and
# end-to-end tests with real QEMU guests, then the end-to-end tests (tests/, package vu-tests)
# a second time against QEMU 10.0. Sets up the host first (idempotent).
#
#   VU_QEMU_VERSIONS  the QEMU versions the end-to-end tests run against (default "7.2 10")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash tests/scripts/setup.sh
# The end-to-end tests start the launcher binary; build it before the tests run.
cargo build -p launcher
# Guest boots are heavy under TCG: keep at most two tests in flight on a 2-core machine.
threads="${VU_TEST_THREADS:-2}"
first=1
for v in ${VU_QEMU_VERSIONS:-7.2 10}; do
    case $v in
    10 | 10.0) qemu="$ROOT/.cache/qemu-10/bin/qemu-system-x86_64" ;;
    *) qemu=$(command -v qemu-system-x86_64) ;;
    esac
    echo "test: QEMU $v: $("$qemu" --version | head -n1) ($qemu)"
    if ((first)); then
        VU_QEMU="$qemu" cargo test --workspace -- --test-threads="$threads"
        first=0
    else
        # The other packages do not run QEMU: only the end-to-end tests run again.
        VU_QEMU="$qemu" cargo test -p vu-tests --tests -- --test-threads="$threads"
    fi
    echo "test: QEMU $v: passed"
done
