#!/usr/bin/env bash
# Short libFuzzer runs of the vu-core fuzz targets (core/fuzz, cargo-fuzz layout).
# Exits non-zero if any target crashes, panics, leaks, runs out of memory or hangs.
#
#   FUZZ_SECONDS  seconds per target (default 30)
#   FUZZ_TARGETS  space-separated targets (default: all three)
#
# The committed seeds in core/fuzz/corpus/seed/<target>/ are read, never written:
# new inputs go to core/fuzz/corpus/<target>/ (git-ignored), crashes to
# core/fuzz/artifacts/<target>/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
targets="${FUZZ_TARGETS:-message_dispatch descriptor_chain snapshot_decode}"
# cargo-fuzz passes -Z flags (sanitizers, coverage); this lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cd core
for t in $targets; do
    cargo fuzz build "$t"
done

failed=()
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    log="$(mktemp)"
    echo "fuzz: $t for ${seconds}s"
    # -timeout: a single input running this long is a hang (a finding, not a slow machine:
    # inputs take milliseconds). Without it libFuzzer waits 1200 s per input.
    if cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/corpus/seed/$t" -- \
        -max_total_time="$seconds" -timeout=25 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
            "$log" | sed "s/^/fuzz: $t: /"
    else
        echo "fuzz: $t FAILED; end of its log:"
        tail -n 60 "$log"
        failed+=("$t")
    fi
    rm -f "$log"
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: failed: ${failed[*]} (reproducers in core/fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: all targets clean"
