#!/usr/bin/env bash
# Short libFuzzer runs of the vu-core fuzz targets (core/fuzz, cargo-fuzz layout).
# Exits non-zero if any target crashes, panics, runs out of memory or hangs.
#
#   FUZZ_SECONDS    seconds per target (default 30)
#   FUZZ_RUNS       if set, a target also stops after this many executions (libFuzzer
#                   -runs): a campaign of N executions per target, FUZZ_SECONDS its bound
#   FUZZ_TARGETS    space-separated targets (default: all of them)
#   FUZZ_SANITIZER  none (default) or address. The targets drive safe Rust whose unsafe code
#                   touches memory-mapped guest memory, which AddressSanitizer does not
#                   shadow; it slows every target 2-3x. Use address for an occasional run.
#   FUZZ_MINIMIZE   1: afterwards, fold what the run found into the committed minimized
#                   corpus (core/fuzz/corpus/min/<target>/, libFuzzer -merge), so that the
#                   next campaign starts where this one ended.
#
# Corpora: core/fuzz/corpus/seed/<target>/ (written by the gen_seeds example) and
# core/fuzz/corpus/min/<target>/ (minimized campaign results) are committed and read; new
# inputs go to core/fuzz/corpus/<target>/ (git-ignored), crashes to
# core/fuzz/artifacts/<target>/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
runs=()
if [ -n "${FUZZ_RUNS:-}" ]; then
    runs=(-runs="$FUZZ_RUNS")
fi
targets="${FUZZ_TARGETS:-message_dispatch descriptor_chain snapshot_decode block_request net_tx rng_request vsock_tx}"
sanitizer="${FUZZ_SANITIZER:-none}"
# cargo-fuzz passes -Z flags (sanitizers, coverage), and core/fuzz/Cargo.toml uses cargo's
# profile-rustflags; this lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1
# Compare tracing for the dependencies (vu-core, vu-devices, vm-memory, ...) but not for the
# harness crate itself: --no-trace-compares turns it off, core/fuzz/Cargo.toml's
# [profile.release.package."*"] turns it back on for every dependency (see
# core/fuzz/README.md, Speed). Every cargo fuzz build/run below must pass the same flags,
# or cargo rebuilds the dependencies.
build_flags=(-s "$sanitizer" --no-trace-compares)

# The longest input a target reads: every byte after it is ignored (the input formats in
# core/fuzz/src/ stop there), so a longer input runs exactly like its prefix. Without
# -max_len libFuzzer lets inputs grow to 4096 bytes.
max_len() {
    case "$1" in
        net_tx) echo 2116 ;;   # MAX_NET_TX_INPUT: 4 header bytes + 64 chains of 33 at most
        vsock_tx) echo 817 ;;  # MAX_VSOCK_INPUT: a flag byte + 16 steps of 51 bytes at most
        *) echo 0 ;;           # 0: libFuzzer's default
    esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cd core
for t in $targets; do
    cargo fuzz build "${build_flags[@]}" "$t"
done

failed=()
for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "fuzz/corpus/min/$t"
    log="$(mktemp)"
    echo "fuzz: $t for ${seconds}s (sanitizer: $sanitizer)"
    # -timeout: a single input running this long is a hang (a finding, not a slow machine:
    # inputs take milliseconds). Without it libFuzzer waits 1200 s per input.
    len=()
    if [ "$(max_len "$t")" != 0 ]; then
        len=(-max_len="$(max_len "$t")")
    fi
    if cargo fuzz run "${build_flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/corpus/min/$t" \
        "fuzz/corpus/seed/$t" -- \
        -max_total_time="$seconds" "${runs[@]}" "${len[@]}" -timeout=25 -print_final_stats=1 \
        >"$log" 2>&1; then
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

if [ "${FUZZ_MINIMIZE:-0}" = 1 ]; then
    for t in $targets; do
        # Keep what adds coverage to the seeds: merge the old minimized corpus and this
        # run's inputs into a fresh directory that starts as a copy of the seeds, then drop
        # the seeds from it again.
        fresh="$(mktemp -d)"
        cp "fuzz/corpus/seed/$t/"* "$fresh/"
        # (What `cargo fuzz cmin` does, with the seeds counted as already covered.)
        cargo fuzz run "${build_flags[@]}" "$t" "$fresh" "fuzz/corpus/min/$t" "fuzz/corpus/$t" \
            -- -merge=1 -timeout=25 >/dev/null 2>&1
        for s in "fuzz/corpus/seed/$t/"*; do
            rm -f "$fresh/$(basename "$s")"
        done
        rm -rf "fuzz/corpus/min/$t"
        mkdir -p "fuzz/corpus/min/$t"
        cp "$fresh/"* "fuzz/corpus/min/$t/" 2>/dev/null || true
        rm -rf "$fresh"
        echo "fuzz: $t: $(ls "fuzz/corpus/min/$t" | wc -l) inputs in corpus/min/$t"
    done
fi
echo "fuzz: all targets clean"
