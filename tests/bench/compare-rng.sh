#!/usr/bin/env bash
# compare-rng.sh: our rng device vs rust-vmm's vhost-device-rng, side by side, in one run, and
# the rng section of BENCHMARKS.md. compare.sh runs it after the block cells (and alone with
# `compare.sh --rng-only`); it can also be run by itself.
#
# usage: tests/bench/compare-rng.sh [options]
#
#   --quick            one round, 2 s per cell, a 512 MiB source file
#   --rounds N         A/B rounds (default 3); the server order alternates every cell
#   --runtime SEC      seconds per cell with an endless source (default 5)
#   --tmpfs-dir DIR    where the random source file lives (default /dev/shm/vu-bench)
#   --source-size SIZE size of that file (default 2G; --quick: 512M)
#   --pin              pin servers to CPU 1 and vu-bench to CPU 0
#   --profile          also profile both servers (perf, cpu-clock) under the light load with
#                      /dev/zero, and add their top symbols to the report
#   --no-build         do not run cargo build --release first
#   --out FILE         the report whose rng section is (re)written (default BENCHMARKS.md)
#   --work DIR         raw results and logs (default target/vu-bench/rng)
#   --raw DIR          where the raw results are kept in the repository (default
#                      tests/bench/raw): rng-results.jsonl, rng-meta.json, rng-console.log
#
# Servers, each started fresh for every cell, in a cgroup of its own (cpuacct) so that its CPU
# counts every thread and process it has (for ours: the launcher and its jailed device):
#   ours: target/release/launcher start rng --socket S --source SRC --control C   (jailed)
#   peer: vhost-device-rng --socket-path S --rng-source SRC   (listens on S0; installed with
#         `cargo install vhost-device-rng` when missing)
# Sources: /dev/urandom (the kernel's generator), a random file on tmpfs (made once with
# /dev/urandom; each server reads it from its start, and a cell never reads more than 90% of
# it: vhost-device-rng answers 0-byte completions at EOF, ours waits), /dev/zero (no
# generation at all: the servers' own cost). Workloads, the same vu-bench front-end for both
# (one queue, EVENT_IDX, completions by call eventfd):
#   light   512 B requests, 1 in flight, queue of 4 (what a Linux guest's virtio_rng does)
#   4k      4 KiB requests, 128 in flight, queue of 256
#   64k     64 KiB requests, 128 in flight, queue of 256
# Environment: PEER (default vhost-device-rng), PYTHON (default /usr/bin/python3).

set -euo pipefail

orig_args="$*"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3
runtime=5
quick=0
tmpfs_dir=/dev/shm/vu-bench
source_size=2G
pin=0
profile=0
build=1
out="$root/BENCHMARKS.md"
work="$root/target/vu-bench/rng"
raw="$root/tests/bench/raw"
rounds_set=0
runtime_set=0
size_set=0
export PATH="$PATH:$HOME/.cargo/bin"
PEER=${PEER:-vhost-device-rng}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
fi

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --rounds) rounds=$2; rounds_set=1; shift ;;
        --runtime) runtime=$2; runtime_set=1; shift ;;
        --tmpfs-dir) tmpfs_dir=$2; shift ;;
        --source-size) source_size=$2; size_set=1; shift ;;
        --pin) pin=1 ;;
        --profile) profile=1 ;;
        --no-build) build=0 ;;
        --out) out=$2; shift ;;
        --work) work=$2; shift ;;
        --raw) raw=$2; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare-rng.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    [ "$rounds_set" = 1 ] || rounds=1
    [ "$runtime_set" = 1 ] || runtime=2
    [ "$size_set" = 1 ] || source_size=512M
fi

mkdir -p "$work" "$raw"
results="$work/results.jsonl"
meta="$work/meta.json"
console="$work/console.log"
: > "$results"
: > "$console"
sockdir=$(mktemp -d /tmp/vu-bench-rng.XXXXXX)
launcher="$root/target/release/launcher"
vubench="$root/target/release/vu-bench"
server_pid=""
cg_base=/sys/fs/cgroup/cpuacct
cg=""

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$console" >&2; }

cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    for d in "$cg_base"/vu-bench-rng-$$-*; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
    done
    rm -rf "$sockdir"
}
trap cleanup EXIT

if ! command -v "$PEER" >/dev/null 2>&1; then
    log "installing vhost-device-rng (cargo install vhost-device-rng)"
    cargo install -q vhost-device-rng
fi
if [ "$build" = 1 ]; then
    log "building release binaries"
    (cd "$root" && cargo build --release -q -p launcher -p vu-tests --bin launcher --bin vu-bench)
fi
source_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$root" status --porcelain -- core devices launcher tests/src 2>/dev/null | head -1)" ]; then
    source_rev="$source_rev + uncommitted changes in core/devices/launcher/tests/src"
fi
[ "$build" = 0 ] && source_rev="$source_rev (--no-build: the binaries may be older)"
for b in "$launcher" "$vubench"; do
    [ -x "$b" ] || { echo "compare-rng.sh: build $b first" >&2; exit 1; }
done
peer_version=$("$PEER" --version 2>&1 | head -1)

if [ "$pin" = 1 ]; then srv_pin=(taskset -c 1); cli_pin=(taskset -c 0); else srv_pin=(); cli_pin=(); fi

# --- the random source file ---------------------------------------------------------------
mkdir -p "$tmpfs_dir"
file="$tmpfs_dir/rng-source.bin"
bytes=$(numfmt --from=iec "$source_size")
if [ ! -f "$file" ] || [ "$(stat -c %s "$file")" != "$bytes" ]; then
    log "writing the random source $file ($source_size)"
    head -c "$bytes" /dev/urandom > "$file.tmp"
    mv "$file.tmp" "$file"
fi
budget=$((bytes * 9 / 10))
declare -A src_path=([urandom]=/dev/urandom [file]="$file" [zero]=/dev/zero)
sources=(urandom file zero)

# --- cgroups: every process and thread of a server, exited ones included -------------------
use_cg=0
if mkdir "$cg_base/vu-bench-rng-$$-probe" 2>/dev/null; then
    rmdir "$cg_base/vu-bench-rng-$$-probe"
    use_cg=1
else
    log "no cpuacct cgroup (not root?): server CPU from /proc of the process tree"
fi

# name -> vu-bench arguments
declare -A wl_args=(
    [light]="--bs 512 --iodepth 1 --queue-size 4"
    [4k]="--bs 4k --iodepth 128 --queue-size 256"
    [64k]="--bs 64k --iodepth 128 --queue-size 256"
)
declare -A wl_bs=([light]=512 [4k]=4096 [64k]=65536)
workloads=(light 4k 64k)

start_server() { # server source socket
    local server=$1 src=${src_path[$2]} sock=$3 logf="$work/server.log" listen
    rm -f "$sock" "${sock}0"
    cg=""
    if [ "$use_cg" = 1 ]; then
        cg="$cg_base/vu-bench-rng-$$-$server"
        mkdir -p "$cg"
    fi
    local cmd
    if [ "$server" = ours ]; then
        cmd=("$launcher" start rng --socket "$sock" --source "$src" --control "$sockdir/ctl.sock")
        listen=$sock
    else
        cmd=("$PEER" --socket-path "$sock" --rng-source "$src")
        listen=${sock}0
    fi
    if [ -n "$cg" ]; then
        "${srv_pin[@]}" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "${cmd[@]}" >"$logf" 2>&1 &
    else
        "${srv_pin[@]}" "${cmd[@]}" >"$logf" 2>&1 &
    fi
    server_pid=$!
    for _ in $(seq 1 200); do
        if [ -S "$listen" ] && { [ "$server" = peer ] || grep -q "listening on" "$logf"; }; then
            sleep 0.2
            server_sock=$listen
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "compare-rng.sh: $server did not start; its log:" >&2
    cat "$logf" >&2
    exit 1
}

stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

run_cell() { # round source workload server
    local r=$1 src=$2 wl=$3 server=$4 json amount
    if [ "$src" = file ]; then
        local n=$((budget / wl_bs[$wl]))
        [ "$wl" = light ] && [ "$n" -gt 150000 ] && n=150000
        amount=(--requests "$n")
    else
        amount=(--runtime "$runtime")
    fi
    start_server "$server" "$src" "$sockdir/$server.sock"
    local probe=(--server-pid "$server_pid")
    [ -n "$cg" ] && probe+=(--server-cgroup "$cg")
    # shellcheck disable=SC2086
    if ! json=$("${cli_pin[@]}" "$vubench" rng --socket "$server_sock" ${wl_args[$wl]} "${amount[@]}" \
        "${probe[@]}" --json --label "$server/$src/$wl/r$r"); then
        echo "compare-rng.sh: vu-bench failed against $server ($src, $wl); server log:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    stop_server
    printf '{"kind":"rng","round":%d,"source":"%s","workload":"%s","server":"%s","result":%s}\n' \
        "$r" "$src" "$wl" "$server" "$json" >>"$results"
    "$PYTHON" - "$json" <<'EOF' | tee -a "$console" >&2
import json, sys
j = json.loads(sys.argv[1])
print(f"    {j['label']:<24} {j['mib_s']:>9.1f} MiB/s {j['requests_s']:>9.0f} req/s"
      f"  {j.get('server_cpu_ms_per_mib') or 0:>8.4f} ms CPU/MiB ({j.get('server_cpu_from')})"
      f"  {j['elapsed_s']:.2f} s, short {j['short']} empty {j['empty']}")
EOF
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
cell=0
for r in $(seq 1 "$rounds"); do
    log "rng round $r of $rounds"
    for src in "${sources[@]}"; do
        for wl in "${workloads[@]}"; do
            if [ $(((cell + r) % 2)) = 0 ]; then order="ours peer"; else order="peer ours"; fi
            for server in $order; do
                run_cell "$r" "$src" "$wl" "$server"
            done
            cell=$((cell + 1))
        done
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- profile: where a light-load request's CPU goes ------------------------------------------
profiles=()
if [ "$profile" = 1 ]; then
    for server in ours peer; do
        log "profiling $server (light load, /dev/zero)"
        start_server "$server" zero "$sockdir/$server.sock"
        pids=$server_pid
        for c in $(pgrep -P "$server_pid" || true); do pids="$pids,$c"; done
        # shellcheck disable=SC2086
        "${cli_pin[@]}" "$vubench" rng --socket "$server_sock" ${wl_args[light]} \
            --runtime "$runtime" --json >"$work/profile-$server.json" &
        bench=$!
        sleep 0.5
        perf record -q -e cpu-clock -F 2999 -g -p "$pids" -o "$work/perf-$server.data" \
            -- sleep "$("$PYTHON" -c "print(max(1, $runtime - 1))")" >/dev/null 2>&1 || true
        wait "$bench" || true
        stop_server
        perf report -i "$work/perf-$server.data" --no-children --sort dso,symbol --stdio -g none \
            --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' \
            | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -25 >"$work/profile-$server.txt" || true
        cp "$work/profile-$server.txt" "$raw/rng-profile-$server.txt"
        profiles+=("$server")
    done
fi
finished=$(date +%s)

"$PYTHON" - "$meta" <<EOF
import json, sys
json.dump({
    "rounds": $rounds, "runtime": $runtime, "quick": $quick, "pin": $pin,
    "source_file": "$file", "source_size": "$source_size", "file_budget": $budget,
    "peer_version": """$peer_version""", "cpu_from": "$([ "$use_cg" = 1 ] && echo cgroup || echo proc)",
    "load_before": "$load_before", "load_after": "$load_after",
    "seconds": $finished - $started,
    "command": "tests/bench/compare-rng.sh $orig_args",
    "profiles": "${profiles[*]:-}".split(), "work": "$work",
    "source": "$source_rev",
}, open(sys.argv[1], "w"))
EOF
"$PYTHON" "$here/rng_report.py" --results "$results" --meta "$meta" --out "$out"
cp "$results" "$raw/rng-results.jsonl"
cp "$meta" "$raw/rng-meta.json"
cp "$console" "$raw/rng-console.log"
log "wrote the rng section of $out and the raw results in $raw ($((finished - started)) s)"
