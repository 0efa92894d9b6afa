#!/usr/bin/env bash
# light_fixes.sh: before/after of the light-load fixes (issue 15), system call by system call:
# the same vu-bench load against a baseline build (--base DIR: DIR/launcher) and this tree,
# alternating, each server started fresh in a cgroup of its own, with tracepoint counts of
# the server's system calls and wake-ups (perf stat) over the run.
#
# usage: tests/bench/light_fixes.sh --base DIR [--rounds N] [--runtime SEC] [--out FILE]
#
# Cases (4k, one queue, 2000 requests/s unless said):
#   tmpfs-read        tmpfs image, random reads: the kick is no longer read (epoll ET)
#   disk-read         O_DIRECT image (--direct), random reads: completions posted by task work
#                     are collected before the worker sleeps, no eventfd round trip
#   ext4-write        buffered ext4 image, random writes: RWF_NOWAIT is refused (EOPNOTSUPP)
#                     once, not tried again per write
#   ext4-uncached     buffered ext4 image, random reads over 1 GiB dropped from the page
#                     cache before each run: RWF_NOWAIT reads that would block back off
#   tmpfs-burst       tmpfs, bursts of 32 with 1 ms think time
# The raw lines go to FILE (default tests/bench/light/fixes.txt), with the commands.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
base=""
rounds=3
runtime=3
out=$here/light/fixes.txt
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --runtime) runtime=$2; shift ;;
        --out) out=$2; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "light_fixes.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$base/launcher" ] || { echo "light_fixes.sh: --base DIR with DIR/launcher" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
vubench=$root/target/release/vu-bench
tmpfs_img=/dev/shm/vu-bench/image.raw
disk_img=/var/tmp/vu-bench/image.raw
for f in $tmpfs_img $disk_img; do
    [ -f "$f" ] || { echo "light_fixes.sh: no image $f (run compare.sh once)" >&2; exit 1; }
done
cg_root=/sys/fs/cgroup/cpuacct
[ -f "$cg_root/cpuacct.usage" ] || cg_root=/sys/fs/cgroup/unified
sock=$(mktemp -u /tmp/vu-fixes.XXXXXX.sock)
events="raw_syscalls:sys_enter,sched:sched_switch"
for c in epoll_wait read write preadv2 pwritev2 io_uring_enter; do
    events="$events,syscalls:sys_enter_$c"
done

declare -A case_img=([tmpfs-read]=$tmpfs_img [disk-read]=$disk_img [ext4-write]=$disk_img
    [ext4-uncached]=$disk_img [tmpfs-burst]=$tmpfs_img)
declare -A case_opt=([disk-read]=--direct)
declare -A case_load=(
    [tmpfs-read]="--rw randread --bs 4k --rate 2k"
    [disk-read]="--rw randread --bs 4k --rate 2k"
    [ext4-write]="--rw randwrite --bs 4k --rate 2k"
    [ext4-uncached]="--rw randread --bs 4k --rate 2k"
    [tmpfs-burst]="--rw randread --bs 4k --batch 32 --think-us 1000")
cases="tmpfs-read disk-read ext4-write ext4-uncached tmpfs-burst"

{
    echo "# $(date -u '+%F %T UTC'); load $(cut -d' ' -f1-3 /proc/loadavg); this tree $(git -C "$root" rev-parse --short HEAD), base $base"
    echo "# server: launcher start block --socket S --file IMG --num-queues 1 [--direct], in cgroup CG"
    echo "# load:   vu-bench --socket S <load> --runtime $runtime --server-cgroup CG --json"
    echo "# counts: perf stat -e $events -p <server pids> over the load"
    for c in $cases; do echo "# $c: IMG ${case_img[$c]} ${case_opt[$c]:-} load ${case_load[$c]}"; done
} >>"$out"

run() { # case build round
    local c=$1 who=$2 r=$3 bin=$root/target/release/launcher cg pid pids stat json
    [ "$who" = base ] && bin=$base/launcher
    cg=$cg_root/vu-fixes-$$-$who
    mkdir -p "$cg"
    rm -f "$sock"
    if [ "$c" = ext4-uncached ]; then
        # Out of the page cache: RWF_NOWAIT reads of it would block.
        python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "${case_img[$c]}"
    fi
    # shellcheck disable=SC2016,SC2086
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$bin" start block --socket "$sock" \
        --file "${case_img[$c]}" --num-queues 1 ${case_opt[$c]:-} >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do [ -S "$sock" ] && break; sleep 0.05; done
    sleep 0.3
    pids=$(echo "$pid" $(pgrep -P "$pid") | tr ' ' ',')
    stat=$(mktemp)
    perf stat -e "$events" -p "$pids" -o "$stat" &
    local ps_=$!
    sleep 0.3
    # shellcheck disable=SC2086
    json=$("$vubench" --socket "$sock" ${case_load[$c]} --runtime "$runtime" --server-cgroup "$cg" --json)
    kill -INT "$ps_"
    wait "$ps_" 2>/dev/null || true
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do flock -n "${case_img[$c]}" true 2>/dev/null && break; sleep 0.05; done
    rmdir "$cg" 2>/dev/null || true
    python3 - "$c" "$who" "$r" "$json" "$stat" <<'EOF' | tee -a "$out"
import json, re, sys
c, who, r, j, stat = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), open(sys.argv[5]).read()
n = j["completed"] or 1
counts = {m.group(2): float(m.group(1).replace(",", ""))
          for m in re.finditer(r"^\s*([0-9,.]+)\s+([\w:]+)", stat, re.M)}
per = {k.split(":")[-1].replace("sys_enter_", ""): v / n for k, v in counts.items()}
calls = " ".join(f"{k}={v:.2f}" for k, v in per.items() if k not in ("sys_enter", "sched_switch"))
print(f"{c:14} {who:5} r{r} IOPS {j['iops']:7.0f} CPU {j['server_us_per_request']:6.2f} us/req "
      f"p50 {j['lat_p50_us']:7.1f} us | per request: syscalls {per.get('sys_enter', 0):.2f} "
      f"switches {per.get('sched_switch', 0):.2f} | {calls}")
EOF
    rm -f "$stat"
}

for r in $(seq 1 "$rounds"); do
    for c in $cases; do
        if [ $((r % 2)) = 1 ]; then order="base ours"; else order="ours base"; fi
        for who in $order; do run "$c" "$who" "$r"; done
    done
done
