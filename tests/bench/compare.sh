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
#   --vsock            add the vsock part: ours (launcher start vsock, jailed) vs rust-vmm's
#                      vhost-device-vsock, vu-bench vsock (bulk both ways, connection churn; at
#                      saturation and at a light fixed rate); see tests/bench/vsock.sh
#   --only-vsock       run just the vsock part and replace only the vsock section of the report
#   --no-qsd10         leave out qemu-storage-daemon 10.0 ($QSD10, default
#                      .cache/qemu-10/bin/qemu-storage-daemon from tests/scripts/qemu10.sh; run
#                      in every cell when it exists, reported beside 7.2)
#   --no-light         leave out the light-load cells
#   --light-only       only the light-load cells (no saturation cells, fio or null runs)
#   --rates LIST       light load: fixed total rates, 4k randread, open loop (default 2k,10k,50k)
#   --burst N:US       light load: bursts of N requests, US microseconds of think time after
#                      each completes (default 32:1000; "none" to leave out)
#   --no-build         do not run cargo build --release first
#   --out FILE         the report to write (default BENCHMARKS.md at the repository root)
#   --work DIR         raw results, logs and profiles (default target/vu-bench)
#   --rng-only         only the rng comparison (tests/bench/compare-rng.sh: our rng device vs
#                      rust-vmm's vhost-device-rng); rewrites only the rng section of the report
#   --no-rng           only the block comparison; the report keeps its rng section
#   --net-only         only the net comparison (tests/bench/compare-net.sh: our net device vs
#                      DPDK's testpmd, vhost PMD to tap PMD); rewrites only the net section
#   --no-net           the report keeps its net section; compare-net.sh does not run
#
# After the block cells, compare.sh runs tests/bench/compare-rng.sh with the same --quick,
# --rounds, --runtime, --tmpfs-dir, --pin and --profile (see its --help); its section of the report sits
# between rng markers and survives a rewrite of the block sections. Then it runs
# tests/bench/compare-net.sh with the same --quick, --rounds, --runtime and --no-build (net
# servers are always pinned, see its --help); its section sits between net markers.
#
# Environment: OURS_EXTRA adds arguments to `launcher start block` (e.g. "--seccomp-log");
# QSD (default qemu-storage-daemon, 7.2 on Debian 12), QSD10, FIO (default fio) and PYTHON
# (default /usr/bin/python3) name the peers and the tools.
#
# Server CPU: each server runs in a cgroup of its own (cgroup v1 cpuacct, else cgroup v2),
# created for the cell, so that every thread and process of it counts, exited ones included
# (io_uring's workers, a thread pool's idle threads); without cgroups (not root) it comes
# from /proc of the process tree.
#
# Light load (tests/bench/report_light.py writes its section): 4k random reads at fixed
# rates (vu-bench --rate, open loop, latency from the intended send time) and in bursts with
# think time (vu-bench --batch --think-us), 1 and 2 queues, tmpfs and disk, every server.
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
vsock=0
only_vsock=0
build=1
use_qsd10=1
light=1
saturation=1
rates=2k,10k,50k
burst=32:1000
out="$root/BENCHMARKS.md"
work="$root/target/vu-bench"
QSD=${QSD:-qemu-storage-daemon}
QSD10=${QSD10:-$root/.cache/qemu-10/bin/qemu-storage-daemon}
FIO=${FIO:-fio}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
fi
OURS_EXTRA=${OURS_EXTRA:-}
image_size_set=0
rounds_set=0
runtime_set=0
rng_only=0
no_rng=0
rng_args=()
net_only=0
no_net=0
net_args=()

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; rng_args+=(--quick); net_args+=(--quick) ;;
        --rounds) rounds=$2; rounds_set=1; rng_args+=(--rounds "$2"); net_args+=(--rounds "$2"); shift ;;
        --runtime) runtime=$2; runtime_set=1; rng_args+=(--runtime "$2"); net_args+=(--runtime "$2"); shift ;;
        --image-size) image_size=$2; image_size_set=1; shift ;;
        --tmpfs-dir) tmpfs_dir=$2; rng_args+=(--tmpfs-dir "$2"); shift ;;
        --disk-dir) disk_dir=$2; shift ;;
        --storage) storages=$2; shift ;;
        --queues) queue_list=$2; shift ;;
        --pin) pin=1; rng_args+=(--pin) ;;
        --rng-only) rng_only=1 ;;
        --no-rng) no_rng=1 ;;
        --net-only) net_only=1 ;;
        --no-net) no_net=1 ;;
        --with-sync) with_sync=1 ;;
        --guest) guest=1 ;;
        --base) base_dir=$2; shift ;;
        --poll-us) poll_list=$2; shift ;;
        --profile) profile=1; rng_args+=(--profile) ;;
        --vsock) vsock=1 ;;
        --only-vsock) vsock=1; only_vsock=1 ;;
        --no-qsd10) use_qsd10=0 ;;
        --no-light) light=0 ;;
        --light-only) saturation=0 ;;
        --rates) rates=$2; shift ;;
        --burst) burst=$2; shift ;;
        --no-build) build=0; rng_args+=(--no-build); net_args+=(--no-build) ;;
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
if [ "$net_only" = 1 ]; then
    exec bash "$here/compare-net.sh" "${net_args[@]}" --out "$out" --work "$work/net"
fi
if [ "$rng_only" = 1 ]; then
    exec bash "$here/compare-rng.sh" "${rng_args[@]}" --out "$out" --work "$work/rng"
fi

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
    if [ -n "${vsock_server_pid:-}" ] && kill -0 "$vsock_server_pid" 2>/dev/null; then
        kill -TERM "$vsock_server_pid" 2>/dev/null || true
        wait "$vsock_server_pid" 2>/dev/null || true
    fi
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$sockdir"
    if [ -n "${cg_root:-}" ]; then rmdir "$cg_root"/vu-bench-$$-* 2>/dev/null || true; fi
    true
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
qsd10_version=""
if [ "$use_qsd10" = 1 ]; then
    if [ -x "$QSD10" ]; then
        qsd10_version=$("$QSD10" --version | head -1)
    else
        log "no qemu-storage-daemon 10.0 at $QSD10 (tests/scripts/qemu10.sh makes it): left out"
        use_qsd10=0
    fi
fi
peers="ours qsd"
[ "$use_qsd10" = 1 ] && peers="$peers qsd10"

# --- cgroups: every process and thread of a server, exited ones included -------------------
cg_root=""
for d in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ -f "$d/cpuacct.usage" ] || [ -f "$d/cgroup.controllers" ]; then
        if mkdir "$d/vu-bench-$$-probe" 2>/dev/null; then
            rmdir "$d/vu-bench-$$-probe"
            cg_root=$d
            break
        fi
    fi
done
[ -n "$cg_root" ] || log "no writable cgroup (cpuacct or v2): server CPU from /proc of the process tree"
server_cg=""

if [ "$pin" = 1 ]; then
    srv_pin=(taskset -c 1)
    cli_pin=(taskset -c 0)
else
    srv_pin=()
    cli_pin=()
fi

# shellcheck source=tests/bench/vsock.sh
. "$here/vsock.sh"
if [ "$only_vsock" = 1 ]; then
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    busy_before=$(ps -eo pcpu=,comm= --sort=-pcpu | head -5 | awk '{printf "%s %s%%; ", $2, $1}')
    started=$(date +%s)
    vsock_rounds
    finished=$(date +%s)
    "$PYTHON" - "$meta" <<EOF
import json, sys
json.dump({
    "rounds": $rounds, "runtime": $runtime, "pin": $pin, "ours_extra": "$OURS_EXTRA",
    "load_before": "$load_before", "load_after": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "busy_before": "$busy_before", "seconds": $finished - $started,
    "vdv_version": "$vdv_version", "light_mib": $VSOCK_LIGHT_MIB, "light_conns": $VSOCK_LIGHT_CONNS,
    "command": "tests/bench/compare.sh $orig_args", "source": "$source_rev",
}, open(sys.argv[1], "w"))
EOF
    "$PYTHON" "$here/report.py" --results "$results" --meta "$meta" --work "$work" --out "$out" --vsock-only
    log "wrote the vsock section of $out ($(( finished - started )) s)"
    exit 0
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
    local server=$1 st=$2 nq=$3 sock=$4 img=${image[$2]} logf="$work/server.log" in_cg=()
    server_img=$img
    rm -f "$sock"
    server_cg=""
    if [ -n "$cg_root" ]; then
        # A fresh cgroup per cell: its CPU count starts at zero with the server.
        server_cg="$cg_root/vu-bench-$$-$server"
        rmdir "$server_cg" 2>/dev/null || true
        mkdir -p "$server_cg"
        # shellcheck disable=SC2016
        in_cg=(sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$server_cg")
    fi
    if [[ "$server" != qsd* ]]; then
        local direct=() engine=io_uring bin=$launcher poll=()
        [ "$st" = disk ] && direct=(--direct)
        [ "$server" = ours-sync ] && engine=sync
        [ "$server" = ours-base ] && bin=$base_dir/launcher
        [[ "$server" == ours-poll* ]] && poll=(--poll-us "${server#ours-poll}")
        # shellcheck disable=SC2086
        "${srv_pin[@]}" "${in_cg[@]}" "$bin" start block --socket "$sock" --file "$img" \
            --num-queues "$nq" --engine "$engine" "${direct[@]}" "${poll[@]}" $OURS_EXTRA >"$logf" 2>&1 &
    else
        local cache=off aio=threads qsd=$QSD
        [ "$st" = disk ] && { cache=on; aio=io_uring; }
        [ "$server" = qsd10 ] && qsd=$QSD10
        "${srv_pin[@]}" "${in_cg[@]}" "$qsd" \
            --blockdev "driver=file,node-name=f,filename=$img,cache.direct=$cache,aio=$aio" \
            --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$sock,writable=on,num-queues=$nq" \
            >"$logf" 2>&1 &
    fi
    server_pid=$!
    for _ in $(seq 1 200); do
        if [ -S "$sock" ] && { [[ "$server" == qsd* ]] || grep -q "listening on" "$logf"; }; then
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
    [ -n "$server_cg" ] && { rmdir "$server_cg" 2>/dev/null || true; }
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
# Light load: 4k random reads at fixed total rates (open loop), and bursts with think time.
light_workloads=()
for rt in ${rates//,/ }; do
    light_workloads+=("rate-$rt")
    wl_args["rate-$rt"]="--rw randread --bs 4k --rate $rt"
done
if [ "$burst" != none ]; then
    bn=${burst%%:*} bus=${burst##*:}
    light_workloads+=("burst-$bn-think-${bus}us")
    wl_args["burst-$bn-think-${bus}us"]="--rw randread --bs 4k --batch $bn --think-us $bus"
fi
[ "$light" = 1 ] || light_workloads=()
[ "$saturation" = 1 ] || workloads=()

order_for() { # cell: the servers of this cell, the peers rotated one step per cell
    local all=($peers) n i out=""
    [ -n "$base_dir" ] && all+=(ours-base)
    n=${#all[@]}
    for ((i = 0; i < n; i++)); do out="$out ${all[$(((i + $1) % n))]}"; done
    [ "$with_sync" = 1 ] && out="$out ours-sync"
    for p in ${poll_list//,/ }; do out="$out ours-poll$p"; done
    echo "$out"
}

run_cell() { # round storage queues workload server [kind]
    local r=$1 st=$2 nq=$3 wl=$4 server=$5 kind=${6:-vu-bench} sock="$sockdir/$5.sock" json cg_args=()
    start_server "$server" "$st" "$nq" "$sock"
    [ -n "$server_cg" ] && cg_args=(--server-cgroup "$server_cg")
    # shellcheck disable=SC2086
    if ! json=$("${cli_pin[@]}" "$vubench" --socket "$sock" ${wl_args[$wl]} --queues "$nq" \
        --runtime "$runtime" --server-pid "$server_pid" "${cg_args[@]}" --json \
        --label "$server/$st/q$nq/$wl/r$r"); then
        echo "compare.sh: vu-bench failed against $server ($st, $nq queues, $wl); server log:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    stop_server
    printf '{"kind":"%s","round":%d,"storage":"%s","queues":%d,"workload":"%s","server":"%s","result":%s}\n' \
        "$kind" "$r" "$st" "$nq" "$wl" "$server" "$json" >>"$results"
    "$PYTHON" - "$json" <<'EOF' >&2
import json, sys
j = json.loads(sys.argv[1])
print(f"    {j['label']:<42} {j['iops']:>10.0f} IOPS {j['mib_s']:>8.1f} MiB/s  p50 {j['lat_p50_us']:>7.1f} us"
      f"  {j.get('iops_per_server_cpu_s') or 0:>9.0f} IOPS/CPU-s {j.get('server_us_per_request') or 0:>7.2f} us/req")
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
            for wl in "${workloads[@]}" "${light_workloads[@]}"; do
                kind=vu-bench
                [[ "$wl" == rate-* || "$wl" == burst-* ]] && kind=light
                for server in $(order_for $((cell + r))); do
                    run_cell "$r" "$st" "$nq" "$wl" "$server" "$kind"
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
    [ "$saturation" = 1 ] || continue
    for qd in 1 32; do
        json=$("${cli_pin[@]}" "$vubench" --null --rw randread --bs 4k --iodepth "$qd" \
            --runtime "$runtime" --json --label "null/q1/randread-4k-qd$qd/r$r")
        printf '{"kind":"null","round":%d,"workload":"randread-4k-qd%d","result":%s}\n' \
            "$r" "$qd" "$json" >>"$results"
    done
done
if [ "$vsock" = 1 ]; then vsock_rounds; fi
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
    "qsd_version": """$qsd_version""", "qsd10_version": """$qsd10_version""",
    "ours_extra": "$OURS_EXTRA", "cpu_from": "$([ -n "$cg_root" ] && echo "cgroup $cg_root" || echo proc)",
    "rates": "$rates", "burst": "$burst",
    "load_before": "$load_before", "load_after": "$load_after",
    "seconds": $finished - $started,
    "profiles": "${profile_files[*]:-}".split(),
    "command": "tests/bench/compare.sh $orig_args",
    "source": "$source_rev",
    "vdv_version": "${vdv_version:-}", "light_mib": $VSOCK_LIGHT_MIB, "light_conns": $VSOCK_LIGHT_CONNS,
}, open(sys.argv[1], "w"))
EOF
# The rng section (between its markers) is not report.py's: keep it across the rewrite.
rm -f "$work/rng-section.md" "$work/net-section.md"
"$PYTHON" "$here/rng_report.py" --extract "$out" --section "$work/rng-section.md"
"$PYTHON" "$here/net_report.py" --extract "$out" --section "$work/net-section.md"
"$PYTHON" "$here/report.py" --results "$results" --meta "$meta" --work "$work" --out "$out"
"$PYTHON" "$here/rng_report.py" --splice "$out" --section "$work/rng-section.md"
"$PYTHON" "$here/net_report.py" --splice "$out" --section "$work/net-section.md"
log "wrote $out ($(( finished - started )) s)"
if [ "$no_rng" = 0 ]; then
    bash "$here/compare-rng.sh" "${rng_args[@]}" --no-build --out "$out" --work "$work/rng"
fi
if [ "$no_net" = 0 ]; then
    bash "$here/compare-net.sh" "${net_args[@]}" --no-build --out "$out" --work "$work/net"
fi
