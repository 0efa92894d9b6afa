#!/usr/bin/env bash
# compare.sh: our vhost-user-blk server vs qemu-storage-daemon, side by side, in one run.
#
# usage: tests/bench/compare.sh [options]
#
#   --quick            one round, 2 s per cell, 256 MiB images (under 2 minutes); explicit
#                      --rounds, --runtime and --image-size still apply
#   --rounds N         A/B rounds (default 3); the server order alternates every cell
#   --runtime SEC      seconds per vu-bench cell (default 5; fio cells get 60% of it)
#   --image-size SIZE  image size for dd, e.g. 1G (default 1G; --quick: 256M)
#   --tmpfs-dir DIR    where the buffered image lives (default /dev/shm/vu-bench)
#   --disk-dir DIR     where the O_DIRECT image lives (default /var/tmp/vu-bench)
#   --storage LIST     tmpfs,disk (default both)
#   --queues LIST      queue counts (default 1,2)
#   --with-sync        add a third server to every cell: ours with --engine sync (preadv and
#                      pwritev on the queue thread); reported apart, not part of the bars
#   --base DIR         add a server: ours run from DIR/launcher (a build of the baseline tree),
#                      for before/after A/B in the same run; reported apart as ours-base
#   --poll-us LIST     add servers: ours with `launcher start block ... --poll-us N` (bounded
#                      queue polling) for each N in LIST (e.g. 0,50), reported apart as ours-pollN
#   --guest            add the secondary table: fio inside a TCG guest (tests/src/guest.rs image in
#                      .cache/guest, 1 vCPU) against ours and qsd, 4k randread QD32 and 128k
#                      read QD8, 1 queue, on the first storage, once per round
#   --pin              pin servers to CPU 1 and vu-bench and fio to CPU 0 (the same for both)
#   --profile          also profile both servers (perf, software cpu-clock sampling) during
#                      4k randread QD32 on tmpfs and add the top symbols to the report
#   --no-build         do not run cargo build --release first
#   --out FILE         the report to write (default BENCHMARKS.md at the repository root)
#   --work DIR         raw results, logs and profiles (default target/vu-bench)
#
# Environment: OURS_EXTRA adds arguments to `launcher start block` (e.g. "--seccomp-log");
# QSD (default qemu-storage-daemon), FIO (default fio) and PYTHON (default /usr/bin/python3)
# name the peer and the tools.
#
# Every cell runs the same vu-bench load (host-side vhost-user-blk front-end, call eventfd
# notification, EVENT_IDX where offered) against:
#   A  ours: target/release/launcher start block --socket S --file IMG --num-queues N
#            --engine io_uring [--direct on the disk]
#   B  qsd:  qemu-storage-daemon --blockdev driver=file,node-name=f,filename=IMG,
#            cache.direct=off,aio=threads (tmpfs) | cache.direct=on,aio=io_uring (disk)
#            --export type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=S,
#            writable=on,num-queues=N
# each started fresh for the cell (same image file: both lock it, so never at once) and
# measured with --server-pid (its CPU time and RssAnon, descendants included). Workloads:
# 4k randread QD1, 4k randread QD32, 4k randwrite QD32, 128k sequential read QD8 (per queue).
# The host ceiling comes from fio (psync and io_uring) on the same file in the same round.
# Raw results go to target/vu-bench/results.jsonl (see --work); tests/bench/report.py writes the report.

set -euo pipefail

orig_args="$*"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3
runtime=5
image_size=1G
quick=0
tmpfs_dir=/dev/shm/vu-bench
disk_dir=/var/tmp/vu-bench
storages=tmpfs,disk
queue_list=1,2
pin=0
with_sync=0
guest=0
base_dir=""
poll_list=""
profile=0
build=1
out="$root/BENCHMARKS.md"
work="$root/target/vu-bench"
QSD=${QSD:-qemu-storage-daemon}
FIO=${FIO:-fio}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
fi
OURS_EXTRA=${OURS_EXTRA:-}
image_size_set=0
rounds_set=0
runtime_set=0

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --rounds) rounds=$2; rounds_set=1; shift ;;
        --runtime) runtime=$2; runtime_set=1; shift ;;
        --image-size) image_size=$2; image_size_set=1; shift ;;
        --tmpfs-dir) tmpfs_dir=$2; shift ;;
        --disk-dir) disk_dir=$2; shift ;;
        --storage) storages=$2; shift ;;
        --queues) queue_list=$2; shift ;;
        --pin) pin=1 ;;
        --with-sync) with_sync=1 ;;
        --guest) guest=1 ;;
        --base) base_dir=$2; shift ;;
        --poll-us) poll_list=$2; shift ;;
        --profile) profile=1 ;;
        --no-build) build=0 ;;
        --out) out=$2; shift ;;
        --work) work=$2; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    [ "$rounds_set" = 1 ] || rounds=1
    [ "$runtime_set" = 1 ] || runtime=2
    [ "$image_size_set" = 1 ] || image_size=256M
fi
fio_runtime=$("$PYTHON" -c "print(max(1, round($runtime * 0.6)))")

mkdir -p "$work"
results="$work/results.jsonl"
meta="$work/meta.json"
: > "$results"
sockdir=$(mktemp -d /tmp/vu-bench.XXXXXX)
launcher="$root/target/release/launcher"
vubench="$root/target/release/vu-bench"
server_pid=""
server_img=""

cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$sockdir"
}
trap cleanup EXIT

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [ "$build" = 1 ]; then
    log "building release binaries"
    (cd "$root" && cargo build --release -q -p launcher -p vu-tests --bin launcher --bin vu-bench)
fi
# The source the binaries were built from, taken now: the tree may change during the run.
source_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$root" status --porcelain -- core devices launcher tests/src 2>/dev/null | head -1)" ]; then
    source_rev="$source_rev + uncommitted changes in core/devices/launcher/tests/src"
fi
if [ "$build" = 0 ]; then
    source_rev="$source_rev (tree at the start; --no-build: the binaries may be older)"
fi
if [ ! -x "$launcher" ] || [ ! -x "$vubench" ]; then
    echo "compare.sh: build $launcher and $vubench first" >&2
    exit 1
fi

qsd_version=$("$QSD" --version | head -1)
case "$qsd_version" in
    *"version 7.2"*) ;;
    *) log "warning: $QSD is not 7.2 ($qsd_version); Debian 12's qemu-system-common 7.2 provides it" ;;
esac

if [ "$pin" = 1 ]; then
    srv_pin=(taskset -c 1)
    cli_pin=(taskset -c 0)
else
    srv_pin=()
    cli_pin=()
fi

# --- images ---------------------------------------------------------------------------
declare -A image
for st in ${storages//,/ }; do
    case "$st" in
        tmpfs) mkdir -p "$tmpfs_dir"; image[$st]="$tmpfs_dir/image.raw"; ddflags="" ;;
        disk) mkdir -p "$disk_dir"; image[$st]="$disk_dir/image.raw"; ddflags="oflag=direct" ;;
        *) echo "compare.sh: unknown storage $st" >&2; exit 2 ;;
    esac
    bytes=$(numfmt --from=iec "$image_size")
    if [ ! -f "${image[$st]}" ] || [ "$(stat -c %s "${image[$st]}")" != "$bytes" ]; then
        log "writing the $st image ${image[$st]} ($image_size)"
        rm -f "${image[$st]}"
        # Real data blocks (not holes): reads must reach the page cache or the disk.
        dd if=/dev/zero of="${image[$st]}" bs=1M count=$((bytes >> 20)) $ddflags status=none
    fi
done

# --- servers ---------------------------------------------------------------------------
start_server() { # server storage queues socket
    local server=$1 st=$2 nq=$3 sock=$4 img=${image[$2]} logf="$work/server.log"
    server_img=$img
    rm -f "$sock"
    if [ "$server" != qsd ]; then
        local direct=() engine=io_uring bin=$launcher poll=()
        [ "$st" = disk ] && direct=(--direct)
        [ "$server" = ours-sync ] && engine=sync
        [ "$server" = ours-base ] && bin=$base_dir/launcher
        [[ "$server" == ours-poll* ]] && poll=(--poll-us "${server#ours-poll}")
        # shellcheck disable=SC2086
        "${srv_pin[@]}" "$bin" start block --socket "$sock" --file "$img" \
            --num-queues "$nq" --engine "$engine" "${direct[@]}" "${poll[@]}" $OURS_EXTRA >"$logf" 2>&1 &
    else
        local cache=off aio=threads
        [ "$st" = disk ] && { cache=on; aio=io_uring; }
        "${srv_pin[@]}" "$QSD" \
            --blockdev "driver=file,node-name=f,filename=$img,cache.direct=$cache,aio=$aio" \
            --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$sock,writable=on,num-queues=$nq" \
            >"$logf" 2>&1 &
    fi
    server_pid=$!
    for _ in $(seq 1 200); do
        if [ -S "$sock" ] && { [ "$server" = qsd ] || grep -q "listening on" "$logf"; }; then
            sleep 0.2 # let the (jailed) device settle before measuring it idle
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "compare.sh: $server did not start; its log:" >&2
    cat "$logf" >&2
    exit 1
}

tree_pids() { # pid: it and its descendants, one per line
    echo "$1"
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$c"; done
}

stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    # The kernel tears a stopped server's io_uring contexts down after its processes exit, and
    # a ring that registered the image keeps it open (and flock-ed) until then: wait for the
    # lock to be free (up to 10 s) so that the next server, whichever, finds the image unused.
    local i
    [ -n "$server_img" ] || return 0
    for i in $(seq 1 200); do
        flock -n "$server_img" true 2>/dev/null && break
        sleep 0.05
    done
}

# name -> vu-bench workload arguments
declare -A wl_args=(
    [randread-4k-qd1]="--rw randread --bs 4k --iodepth 1"
    [randread-4k-qd32]="--rw randread --bs 4k --iodepth 32"
    [randwrite-4k-qd32]="--rw randwrite --bs 4k --iodepth 32"
    [read-128k-qd8]="--rw read --bs 128k --iodepth 8"
)
# name -> fio arguments (one job; iodepth matters only for io_uring)
declare -A wl_fio=(
    [randread-4k-qd1]="--rw=randread --bs=4k --iodepth=1"
    [randread-4k-qd32]="--rw=randread --bs=4k --iodepth=32"
    [randwrite-4k-qd32]="--rw=randwrite --bs=4k --iodepth=32"
    [read-128k-qd8]="--rw=read --bs=128k --iodepth=8"
)
workloads=(randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd32 read-128k-qd8)

run_cell() { # round storage queues workload server
    local r=$1 st=$2 nq=$3 wl=$4 server=$5 sock="$sockdir/$5.sock" json
    start_server "$server" "$st" "$nq" "$sock"
    # shellcheck disable=SC2086
    if ! json=$("${cli_pin[@]}" "$vubench" --socket "$sock" ${wl_args[$wl]} --queues "$nq" \
        --runtime "$runtime" --server-pid "$server_pid" --json \
        --label "$server/$st/q$nq/$wl/r$r"); then
        echo "compare.sh: vu-bench failed against $server ($st, $nq queues, $wl); server log:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    stop_server
    printf '{"kind":"vu-bench","round":%d,"storage":"%s","queues":%d,"workload":"%s","server":"%s","result":%s}\n' \
        "$r" "$st" "$nq" "$wl" "$server" "$json" >>"$results"
    "$PYTHON" - "$json" <<'EOF' >&2
import json, sys
j = json.loads(sys.argv[1])
print(f"    {j['label']:<42} {j['iops']:>10.0f} IOPS {j['mib_s']:>8.1f} MiB/s  p50 {j['lat_p50_us']:>7.1f} us"
      f"  {j.get('iops_per_server_cpu_s') or 0:>9.0f} IOPS/CPU-s")
EOF
}

run_fio() { # round storage workload engine
    local r=$1 st=$2 wl=$3 eng=$4 odirect=0
    [ "$st" = disk ] && odirect=1
    # shellcheck disable=SC2086
    "${cli_pin[@]}" "$FIO" --name=ceiling --filename="${image[$st]}" ${wl_fio[$wl]} \
        --ioengine="$eng" --direct=$odirect --runtime="$fio_runtime" --time_based \
        --size="$image_size" --invalidate=0 --output-format=json --output="$work/fio.json" >/dev/null
    "$PYTHON" - "$work/fio.json" "$r" "$st" "$wl" "$eng" >>"$results" <<'EOF'
import json, sys
path, r, st, wl, eng = sys.argv[1:]
j = json.load(open(path))
print(json.dumps({"kind": "fio", "round": int(r), "storage": st, "workload": wl, "engine": eng, "result": j}))
job = j["jobs"][0]
d = job["read"] if job["read"]["io_bytes"] else job["write"]
p50 = d["clat_ns"]["percentile"]["50.000000"] / 1000
label = f"{eng}/{st}/{wl}/r{r}"
print(f"    fio {label:<38} {d['iops']:>10.0f} IOPS {d['bw_bytes'] / 2**20:>8.1f} MiB/s  p50 {p50:>7.1f} us",
      file=sys.stderr)
EOF
}

# --- the rounds ------------------------------------------------------------------------
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
cell=0
for r in $(seq 1 "$rounds"); do
    log "round $r of $rounds"
    for st in ${storages//,/ }; do
        for nq in ${queue_list//,/ }; do
            for wl in "${workloads[@]}"; do
                if [ $(((cell + r) % 2)) = 0 ]; then order="ours qsd"; else order="qsd ours"; fi
                [ "$with_sync" = 1 ] && order="$order ours-sync"
                [ -n "$base_dir" ] && order="$order ours-base"
                for p in ${poll_list//,/ }; do order="$order ours-poll$p"; done
                for server in $order; do
                    run_cell "$r" "$st" "$nq" "$wl" "$server"
                done
                cell=$((cell + 1))
            done
        done
        for wl in "${workloads[@]}"; do
            for eng in psync io_uring; do
                run_fio "$r" "$st" "$wl" "$eng"
            done
        done
    done
    # Secondary table: fio in a TCG guest (the guest CPU is the bottleneck).
    if [ "$guest" = 1 ]; then
        gst=${storages%%,*}
        for gwl in "randread 4k 32" "read 128k 8"; do
            read -r grw gbs gqd <<<"$gwl"
            if [ $(((cell + r) % 2)) = 0 ]; then order="ours qsd"; else order="qsd ours"; fi
            cell=$((cell + 1))
            for server in $order; do
                start_server "$server" "$gst" 1 "$sockdir/$server.sock"
                if json=$("$vubench" guest-fio --socket "$sockdir/$server.sock" --rw "$grw" \
                    --bs "$gbs" --iodepth "$gqd" --runtime "$fio_runtime" \
                    --server-pid "$server_pid" --label "guest/$server/$gst/$grw-$gbs-qd$gqd/r$r"); then
                    printf '{"kind":"guest","round":%d,"storage":"%s","workload":"%s-%s-qd%s","server":"%s","result":%s}\n' \
                        "$r" "$gst" "$grw" "$gbs" "$gqd" "$server" "$json" >>"$results"
                    log "guest fio $server $gst $grw $gbs QD$gqd: $json"
                else
                    log "guest fio against $server failed (is the guest image in .cache/guest?)"
                fi
                stop_server
            done
        done
    fi
    # The load generator's own ceiling: the in-process null device.
    for qd in 1 32; do
        json=$("${cli_pin[@]}" "$vubench" --null --rw randread --bs 4k --iodepth "$qd" \
            --runtime "$runtime" --json --label "null/q1/randread-4k-qd$qd/r$r")
        printf '{"kind":"null","round":%d,"workload":"randread-4k-qd%d","result":%s}\n' \
            "$r" "$qd" "$json" >>"$results"
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- profile -----------------------------------------------------------------------------
profile_files=()
if [ "$profile" = 1 ] && [[ ",$storages," == *",tmpfs,"* ]]; then
    for server in ours qsd; do
        log "profiling $server (4k randread QD32, tmpfs, 1 queue)"
        sock="$sockdir/$server.sock"
        start_server "$server" tmpfs 1 "$sock"
        pids=$(tree_pids "$server_pid" | paste -sd,)
        "${cli_pin[@]}" "$vubench" --socket "$sock" --rw randread --bs 4k --iodepth 32 \
            --runtime "$runtime" --server-pid "$server_pid" --json >"$work/profile-$server.json" &
        bench=$!
        sleep 0.5
        perf record -q -e cpu-clock -F 2999 -g -p "$pids" -o "$work/perf-$server.data" \
            -- sleep "$("$PYTHON" -c "print(max(1, $runtime - 1))")" >/dev/null 2>&1 || true
        wait "$bench" || true
        stop_server
        perf report -i "$work/perf-$server.data" --no-children --sort dso,symbol \
            --stdio -g none --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' \
            | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -40 >"$work/profile-$server.txt" || true
        perf report -i "$work/perf-$server.data" --no-children --sort comm,dso \
            --stdio -g none --percent-limit 0.5 2>/dev/null | grep -v '^#' | grep -v '^$' \
            | sed -E 's/[[:space:]]+$//' | head -16 >"$work/profile-$server-threads.txt" || true
        # Callers of the hottest symbols (kernel stacks unwind; user stacks mostly do not).
        perf report -i "$work/perf-$server.data" --no-children --sort comm,symbol \
            --stdio -G --percent-limit 4 2>/dev/null | grep -v '^#' | grep -v '^$' \
            | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -120 >"$work/profile-$server-callers.txt" || true
        profile_files+=("$server")
    done
fi
finished=$(date +%s)

# --- the report --------------------------------------------------------------------------
"$PYTHON" - "$meta" <<EOF
import json, sys
json.dump({
    "rounds": $rounds, "runtime": $runtime, "fio_runtime": $fio_runtime,
    "image_size": "$image_size", "quick": $quick, "pin": $pin,
    "tmpfs_image": "${image[tmpfs]:-}", "disk_image": "${image[disk]:-}",
    "qsd_version": """$qsd_version""", "ours_extra": "$OURS_EXTRA",
    "load_before": "$load_before", "load_after": "$load_after",
    "seconds": $finished - $started,
    "profiles": "${profile_files[*]:-}".split(),
    "command": "tests/bench/compare.sh $orig_args",
    "source": "$source_rev",
}, open(sys.argv[1], "w"))
EOF
"$PYTHON" "$here/report.py" --results "$results" --meta "$meta" --work "$work" --out "$out"
log "wrote $out ($(( finished - started )) s)"
