#!/usr/bin/env bash
# profile_light.sh: where a light-load request's server CPU goes, ours against
# qemu-storage-daemon (10.0 and 7.2), 4k random reads at a fixed rate, one queue.
#
# usage: tests/bench/profile_light.sh [--rate N] [--runtime SEC] [--storage tmpfs|disk]
#                                     [--servers "ours qsd10 qsd"] [--out DIR] [--callgrind]
#
# For each server, started fresh (as compare.sh starts it, in a cgroup of its own) for each
# measurement:
#   1. plain run: vu-bench --rate N --server-cgroup CG: CPU per request (every thread and
#      process, exited ones included), wake-ups (voluntary context switches) per request;
#   2. perf stat on the server's threads during the same load: system calls (all, and the
#      usual ones by name), scheduler switches and wake-ups, migrations (tracepoints: cheap;
#      strace slows a server enough that its requests batch);
#   3. perf record -e cpu-clock -g (no hardware counters in this VM): the profile by thread
#      and by symbol, and the call chains of the hottest symbols;
#   4. with --callgrind, ours served in-process (vu-bench serve-block, no jail) and qsd under
#      valgrind --tool=callgrind: user-space instructions per request (the kernel not counted).
# Everything goes to DIR (default tests/bench/light/profile-<storage>-<rate>), raw, with the
# commands in DIR/commands.txt and a summary in DIR/summary.txt.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rate=10k
runtime=4
storage=tmpfs
servers="ours qsd10 qsd"
out=""
callgrind=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift ;;
        --runtime) runtime=$2; shift ;;
        --storage) storage=$2; shift ;;
        --servers) servers=$2; shift ;;
        --out) out=$2; shift ;;
        --callgrind) callgrind=1 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "profile_light.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
out=${out:-$here/light/profile-$storage-$rate}
mkdir -p "$out"
launcher=$root/target/release/launcher
vubench=$root/target/release/vu-bench
QSD=${QSD:-qemu-storage-daemon}
QSD10=${QSD10:-$root/.cache/qemu-10/bin/qemu-storage-daemon}
case "$storage" in
    tmpfs) img=/dev/shm/vu-bench/image.raw; direct=(); qopt=cache.direct=off,aio=threads ;;
    disk) img=/var/tmp/vu-bench/image.raw; direct=(--direct); qopt=cache.direct=on,aio=io_uring ;;
    *) echo "profile_light.sh: --storage tmpfs|disk" >&2; exit 2 ;;
esac
[ -f "$img" ] || { echo "profile_light.sh: no image $img (run compare.sh once)" >&2; exit 1; }
cg_root=/sys/fs/cgroup/cpuacct
[ -f "$cg_root/cpuacct.usage" ] || cg_root=/sys/fs/cgroup/unified
sock=$(mktemp -u /tmp/vu-profile.XXXXXX.sock)
pid=""
cg=""
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
cmds=$out/commands.txt
: >"$cmds"
record() { echo "$*" >>"$cmds"; }

start() { # server [wrapper...]
    local s=$1 cmd
    shift
    cg=$cg_root/vu-profile-$$-$s
    mkdir -p "$cg"
    rm -f "$sock"
    case "$s" in
        ours) cmd=("$launcher" start block --socket "$sock" --file "$img" --num-queues 1 "${direct[@]}") ;;
        ours-inproc) cmd=("$vubench" serve-block --socket "$sock" --file "$img" "${direct[@]}") ;;
        qsd|qsd10)
            local bin=$QSD
            [ "$s" = qsd10 ] && bin=$QSD10
            cmd=("$bin" --blockdev "driver=file,node-name=f,filename=$img,$qopt"
                --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$sock,writable=on,num-queues=1") ;;
    esac
    record "# $s: ${*:+$* }${cmd[*]}"
    # shellcheck disable=SC2016
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@" "${cmd[@]}" >"$out/$s.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 400); do [ -S "$sock" ] && break; sleep 0.05; done
    sleep 0.3
}

stop() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do flock -n "$img" true 2>/dev/null && break; sleep 0.05; done
    rmdir "$cg" 2>/dev/null || true
}

tree() { # pid: it and its descendants, comma-separated
    local all=$1 c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do all="$all,$(tree "$c")"; done
    echo "$all"
}

load() { # label extra-args...: the load, JSON to $out/label.json
    local label=$1
    shift
    record "$vubench --socket S --rw randread --bs 4k --rate $rate --runtime $runtime --server-cgroup CG --json $*"
    "$vubench" --socket "$sock" --rw randread --bs 4k --rate "$rate" --runtime "$runtime" \
        --server-cgroup "$cg" --json "$@" >"$out/$label.json"
}

# Tracepoint counts (cheap, unlike strace, which slows a server enough that its requests
# batch): every system call, the scheduler's switches and wake-ups, and the calls the servers
# make per request.
events="task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,sched:sched_switch,sched:sched_wakeup"
for c in epoll_wait read write preadv2 pwritev2 io_uring_enter futex ppoll pread64 pwrite64 poll; do
    events="$events,syscalls:sys_enter_$c"
done
record "# $(date -u '+%F %T UTC'), load $(cut -d' ' -f1-3 /proc/loadavg), $(git -C "$root" rev-parse --short HEAD)"
for s in $servers; do
    log "$s: plain run"
    start "$s"
    load "$s-plain"
    stop

    log "$s: system calls and scheduler events"
    start "$s"
    pids=$(tree "$pid")
    record "perf stat -e $events -p $pids -- sleep $((runtime - 1))"
    perf stat -e "$events" -p "$pids" -o "$out/$s-counts.txt" -- sleep "$((runtime - 1))" >/dev/null 2>&1 &
    ps_=$!
    sleep 0.2
    load "$s-counts"
    wait "$ps_" 2>/dev/null || true
    stop

    log "$s: perf"
    start "$s"
    pids=$(tree "$pid")
    record "perf record -e cpu-clock -F 4999 -g -p $pids -- sleep $((runtime - 1))"
    perf record -q -e cpu-clock -F 4999 -g -p "$pids" -o "$out/$s-perf.data" \
        -- sleep "$((runtime - 1))" >/dev/null 2>&1 &
    pr=$!
    load "$s-perf"
    wait "$pr" 2>/dev/null || true
    stop
    perf report -i "$out/$s-perf.data" --no-children --sort comm,dso --stdio -g none \
        --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' >"$out/$s-perf-threads.txt" || true
    perf report -i "$out/$s-perf.data" --no-children --sort symbol --stdio -g none \
        --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 >"$out/$s-perf-symbols.txt" || true
    perf report -i "$out/$s-perf.data" --no-children --sort symbol --stdio -G \
        --percent-limit 5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -150 >"$out/$s-perf-callers.txt" || true
    rm -f "$out/$s-perf.data" "$out/$s-perf.data.old"
done

if [ "$callgrind" = 1 ]; then
    for s in ours-inproc qsd10; do
        log "$s: callgrind"
        start "$s" valgrind --tool=callgrind --callgrind-out-file="$out/$s-callgrind.out"
        sleep 2 # valgrind starts slowly
        load "$s-callgrind" --stall-timeout 60
        stop
        callgrind_annotate "$out/$s-callgrind.out" 2>/dev/null | head -40 >"$out/$s-callgrind.txt" || true
        rm -f "$out/$s-callgrind.out"
    done
fi

python3 - "$out" "$rate" $servers <<'EOF' | tee "$out/summary.txt"
import json, os, re, sys
out, rate, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
rate = float(rate[:-1]) * {"k": 1e3, "m": 1e6}[rate[-1]] if rate[-1] in "km" else float(rate)
print(f"{'server':8} {'IOPS':>8} {'CPU us/req':>10} {'wake/req':>9} | per request in the perf window: "
      "syscalls, switches, wake-ups, migrations; calls by name")
for s in servers:
    try:
        j = json.load(open(os.path.join(out, f"{s}-plain.json")))
    except OSError:
        continue
    n = j["completed"] or 1
    wk = (j.get("server_wakeups") or 0) / n
    line = f"{s:8} {j['iops']:8.0f} {j['server_us_per_request']:10.2f} {wk:9.2f} |"
    try:
        text = open(os.path.join(out, f"{s}-counts.txt")).read()
        secs = float(re.search(r"([0-9.]+) seconds time elapsed", text).group(1))
        reqs = rate * secs
        c = {}
        for m in re.finditer(r"^\s*([0-9,.]+)\s+(?:msec\s+)?([\w:-]+)", text, re.M):
            c[m.group(2)] = float(m.group(1).replace(",", ""))
        per = lambda k: c.get(k, 0) / reqs  # noqa: E731
        calls = {k.split("sys_enter_")[1]: per(k) for k in c if "sys_enter_" in k}
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(calls.items(), key=lambda x: -x[1]) if v >= 0.05)
        line += (f" {per('raw_syscalls:sys_enter'):.2f} syscalls, {per('sched:sched_switch'):.2f} switches, "
                 f"{per('sched:sched_wakeup'):.2f} wake-ups, {per('cpu-migrations'):.3f} migrations; {top}")
    except (OSError, AttributeError, ValueError):
        pass
    print(line)
EOF
log "wrote $out"
