#!/usr/bin/env bash
# The soak run: what the device servers survive, in figures anyone can reproduce.
#
#   bash tests/soak/run.sh [--kills N] [--fuzz-minutes T] [--fuzz-runs N] [--quick]
#                          [--only "block rng ..."] [--seed S] [--no-audit]
#                          [--out DIR] [--report FILE]
#
# For each device kind (block, rng, vsock, and net when `launcher start net` exists):
#   1. kills: N SIGKILLs of the serving device process under guest load, with the default
#      supervisor settings and guest-side verification (vu-soak kills KIND; see
#      tests/soak/README.md);
#   2. hostile-input tests: the conformance_hostile tests, the core's framing tests and the
#      devices' hostile tests;
#   3. a fuzz campaign of T minutes per target (.ci/fuzz.sh), optionally bounded by N
#      executions per target (--fuzz-runs);
#   4. the jail audit (tests/tests/jail_audit_KIND.rs): syscalls seen outside the policy,
#      rules never used.
# Then RELIABILITY.md (or --report FILE) is written from the results in DIR (default
# target/soak): the machine, the commands, and per kind the figures and every failure with
# how to reproduce it.
#
# Defaults: --kills 100 --fuzz-minutes 10. --quick: 3 kills per kind, 20 s per fuzz
# target, no audit (a few minutes once built; see tests/soak/README.md).
# Needs root (guests, jails), QEMU, fio, strace, cargo-fuzz (installed if missing), and the
# guest image (built into .cache/guest if VU_GUEST_DIR is not set).
# Exit status: 0 when every figure is clean, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

cmdline="$*"
kills=100
fuzz_minutes=10
fuzz_runs=""
quick=0
only=""
seed=""
audit=1
out=target/soak
report=RELIABILITY.md

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --kills) kills=$2; shift 2 ;;
        --fuzz-minutes) fuzz_minutes=$2; shift 2 ;;
        --fuzz-runs) fuzz_runs=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --only) only=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --no-audit) audit=0; shift ;;
        --out) out=$2; shift 2 ;;
        --report) report=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "soak: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
fuzz_seconds=$((fuzz_minutes * 60))
if [ "$quick" = 1 ]; then
    kills=3
    fuzz_seconds=20
    audit=0
fi

log() { echo "soak: $(date +%T) $*" >&2; }
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.tsv "$out"/*.log "$out"/*.txt
started=$(date +%s)

# ---- the machine and the commands ------------------------------------------------------
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo -dirty)"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "cpus=$(nproc)"
    echo "memory=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel=$(uname -r)"
    echo "qemu=$(${VU_QEMU:-qemu-system-x86_64} --version | head -1)"
    echo "rustc=$(rustc --version)"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "cmdline=$cmdline"
    echo "args=kills=$kills fuzz_seconds=$fuzz_seconds fuzz_runs=${fuzz_runs:-none} quick=$quick audit=$audit seed=${seed:-clock}"
} >"$out/machine.txt"

# ---- build -----------------------------------------------------------------------------
log "building the launcher and vu-soak"
if ! cargo build -p launcher -p vu-tests --bins >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log" >&2
    exit 1
fi
if [ -z "${VU_GUEST_DIR:-}" ]; then
    log "guest image (.cache/guest)"
    bash tests/guest/build-image.sh .cache/guest >>"$out/build.log" 2>&1 || {
        tail -n 20 "$out/build.log" >&2
        exit 1
    }
    export VU_GUEST_DIR=$root/.cache/guest
fi
kinds="block rng vsock"
if target/debug/launcher start net --help >/dev/null 2>&1; then
    kinds="$kinds net"
fi
if [ -n "$only" ]; then
    kinds=$only
fi
echo "kinds=$kinds" >>"$out/machine.txt"

# ---- 1. kills under load ---------------------------------------------------------------
for k in $kinds; do
    log "kills: $k ($kills)"
    target/debug/vu-soak kills "$k" --kills "$kills" ${seed:+--seed "$seed"} \
        --out "$out/kills-$k.json" >"$out/kills-$k.log" 2>&1
    grep -E '^soak ' "$out/kills-$k.log" | tail -n 1 >&2
done

# ---- 2. hostile-input tests ------------------------------------------------------------
# kind | name | cargo test arguments
hostile_tests() {
    echo "protocol|conformance_hostile|-p vu-tests --test conformance_hostile"
    echo "protocol|socketpair_framing|-p vu-core --test socketpair_framing"
    echo "block|block_queue|-p vu-devices --test block_queue"
    echo "rng|rng_hostile|-p vu-devices --test rng_hostile"
    echo "vsock|vsock_hostile|-p vu-devices --test vsock_hostile"
    echo "net|net_tx_fuzz|-p vu-devices --test net_tx_fuzz"
}
printf 'kind\tname\tcommand\trc\tpassed\tfailed\tcases\n' >"$out/hostile.tsv"
hostile_tests | while IFS='|' read -r kind name args; do
    case " $kinds protocol " in *" $kind "*) ;; *) continue ;; esac
    if [ "$kind" = net ] && [ ! -f devices/tests/net_tx_fuzz.rs ]; then continue; fi
    log "hostile: $name"
    # shellcheck disable=SC2086
    cargo test $args -- --nocapture >"$out/hostile-$name.log" 2>&1
    rc=$?
    passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out/hostile-$name.log" | awk '{s+=$4} END {print s+0}')
    failed=$(grep -Eo '[0-9]+ failed' "$out/hostile-$name.log" | awk '{s+=$1} END {print s+0}')
    cases=$(grep -Eo 'hostile cases: [0-9]+' "$out/hostile-$name.log" | awk '{s+=$3} END {print s+0}')
    printf '%s\t%s\tcargo test %s\t%s\t%s\t%s\t%s\n' "$kind" "$name" "$args" "$rc" "$passed" "$failed" "$cases" >>"$out/hostile.tsv"
done

# ---- 3. fuzz campaign ------------------------------------------------------------------
targets="message_dispatch descriptor_chain snapshot_decode"
for k in $kinds; do
    case $k in
        block) targets="$targets block_request" ;;
        rng) targets="$targets rng_request" ;;
        vsock) targets="$targets vsock_tx" ;;
        net) [ -f core/fuzz/fuzz_targets/net_tx.rs ] && targets="$targets net_tx" ;;
    esac
done
log "fuzz: $targets, ${fuzz_seconds}s each${fuzz_runs:+, at most $fuzz_runs runs}"
FUZZ_SECONDS=$fuzz_seconds FUZZ_RUNS=$fuzz_runs FUZZ_TARGETS=$targets \
    bash .ci/fuzz.sh >"$out/fuzz.log" 2>&1
echo "fuzz_rc=$?" >>"$out/machine.txt"
echo "fuzz_targets=$targets" >>"$out/machine.txt"

# ---- 4. jail audit ---------------------------------------------------------------------
if [ "$audit" = 1 ]; then
    printf 'kind\trc\n' >"$out/audit.tsv"
    for k in $kinds; do
        [ -f "tests/tests/jail_audit_$k.rs" ] || continue
        log "audit: $k"
        cargo test -p vu-tests --test "jail_audit_$k" -- --nocapture >"$out/audit-$k.log" 2>&1
        printf '%s\t%s\n' "$k" "$?" >>"$out/audit.tsv"
    done
fi

# ---- report ----------------------------------------------------------------------------
{
    echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "seconds=$(($(date +%s) - started))"
} >>"$out/machine.txt"
python3 tests/soak/report.py "$out" >"$report"
rc=$?
log "wrote $report ($(($(date +%s) - started)) s)"
exit $rc
