#!/usr/bin/env bash
# Runs every test: unit, socketpair, conformance (rust-vmm vhost front-end), launcher CLI, and
# end-to-end tests with real QEMU guests. Sets up the host first (idempotent).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash tests/scripts/setup.sh
# The end-to-end tests start the launcher binary; build it before the tests run.
cargo build -p launcher
# Guest boots are heavy under TCG: keep at most two tests in flight on a 2-core machine.
cargo test --workspace -- --test-threads="${VU_TEST_THREADS:-2}"
