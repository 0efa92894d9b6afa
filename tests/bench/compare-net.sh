#!/usr/bin/env bash
# compare-net.sh: our vhost-user-net server vs DPDK's testpmd (vhost PMD forwarding to its tap
# PMD), side by side, in one run, with no guest CPU in the way.
#
# usage: tests/bench/compare-net.sh [options]
#
#   --quick          one round, 2 s per cell
#   --rounds N       rounds (default 3); the server order alternates every round
#   --runtime SEC    measured seconds per cell (default 5)
#   --no-pin         do not pin (default: servers on CPU 1, vu-bench on CPU 0)
#   --no-build       do not run cargo build --release first
#   --out FILE       the report whose net section is (re)written (default BENCHMARKS.md)
#   --work DIR       raw results and logs (default target/vu-bench/net)
#
# The topology, the same for both servers: a network namespace made for the run; in it one
# tap per server whose far side sends every frame back (tc ingress qdisc, a u32 filter that
# matches everything, action mirred egress redirect to the same tap); vu-bench net (the
# host-side vhost-user-net front-end, tests/src/bench/net) sends frames on the transmit queue
# and counts what comes back on the receive queue, at most WINDOW frames' worth of payload
# out at once. Servers:
#   ours:    launcher start net --socket S --tap vubt0 (release, jailed, as deployed; the tap
#            made with ip tuntap ... multi_queue vnet_hdr)
#   testpmd: dpdk-testpmd --lcores 0@CPU,1@CPU --no-huge -m 1024 --no-pci
#            --vdev net_vhost0,iface=S,queues=1,tso=1,legacy-ol-flags=1
#            --vdev net_tap0,iface=vubt1 -- --total-num-mbufs=16384 --forward-mode=io
#            --stats-period 3600, with TCP TSO and checksum TX offloads on its tap port (its
#            tap PMD segments TSO frames in software: it takes frames of at most 1522 bytes)
# Cells: 64-byte frames (window 256), 1500-byte frames (window 256), 64 KiB TSO frames
# (window 8), each saturated and at a light load (10,000 frames/s; 1,000 for 64 KiB). The
# server's CPU is every thread of its processes (launcher and device process; testpmd)
# over the measured run. Raw results go to WORK/results.jsonl; tests/bench/net_report.py
# writes the net section of the report (between its markers; the rest stays as it is).

set -euo pipefail

orig_args="$*"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3
runtime=5
pin=1
build=1
quick=0
rounds_set=0
runtime_set=0
out="$root/BENCHMARKS.md"
work="$root/target/vu-bench/net"
TESTPMD=${TESTPMD:-dpdk-testpmd}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
fi

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --rounds) rounds=$2; rounds_set=1; shift ;;
        --runtime) runtime=$2; runtime_set=1; shift ;;
        --no-pin) pin=0 ;;
        --pin) pin=1 ;;
        --no-build) build=0 ;;
        --out) out=$2; shift ;;
        --work) work=$2; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare-net.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    [ "$rounds_set" = 1 ] || rounds=1
    [ "$runtime_set" = 1 ] || runtime=2
fi
for tool in ip tc "$TESTPMD"; do
    command -v "$tool" >/dev/null || {
        echo "compare-net.sh: $tool is missing (iproute2; dpdk-dev with librte-net-vhost23 and librte-net-tap23)" >&2
        exit 1
    }
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$work"
results="$work/results.jsonl"
meta="$work/meta.json"
: >"$results"
launcher="$root/target/release/launcher"
vubench="$root/target/release/vu-bench"
ns="vu-bench-net-$$"
sockdir=$(mktemp -d /tmp/vu-bench-net.XXXXXX)
server_pid=""

cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$sockdir"
}
trap cleanup EXIT

if [ "$build" = 1 ]; then
    log "building release binaries"
    (cd "$root" && cargo build --release -q -p launcher -p vu-tests --bin launcher --bin vu-bench)
fi
source_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$root" status --porcelain -- core devices launcher tests/src 2>/dev/null | head -1)" ]; then
    source_rev="$source_rev + uncommitted changes in core/devices/launcher/tests/src"
fi
[ "$build" = 0 ] && source_rev="$source_rev (tree at the start; --no-build: the binaries may be older)"

if [ "$pin" = 1 ]; then
    srv_cpu=1
    cli_pin=(taskset -c 0)
    srv_pin=(taskset -c "$srv_cpu")
else
    srv_cpu=0
    cli_pin=()
    srv_pin=()
fi

# --- the namespace ---------------------------------------------------------------------------
ip netns add "$ns"
ip -n "$ns" link set lo up
# No IPv6: the kernel would send its own frames (neighbour discovery) on the taps.
for k in all default; do
    ip netns exec "$ns" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6"
done
reflect() { # tap: every frame the server writes into it goes back out of it to the server
    ip netns exec "$ns" tc qdisc add dev "$1" ingress
    ip netns exec "$ns" tc filter add dev "$1" parent ffff: protocol all u32 match u32 0 0 \
        action mirred egress redirect dev "$1"
}

# --- servers -----------------------------------------------------------------------------------
cmds="$work/testpmd.cmds"
cat >"$cmds" <<'EOF'
port stop all
port config 1 tx_offload tcp_tso on
port config 1 tx_offload tcp_cksum on
port start all
start
EOF

start_server() { # server socket
    local server=$1 sock=$2 logf="$work/server-$1.log" i
    rm -f "$sock"
    if [ "$server" = ours ]; then
        ip -n "$ns" link del vubt0 2>/dev/null || true
        ip -n "$ns" tuntap add dev vubt0 mode tap multi_queue vnet_hdr
        ip -n "$ns" link set vubt0 up
        reflect vubt0
        ip netns exec "$ns" "${srv_pin[@]}" "$launcher" start net --socket "$sock" --tap vubt0 \
            --control "$sockdir/ctl.sock" >"$logf" 2>&1 &
        server_pid=$!
        for i in $(seq 1 200); do
            grep -q "listening on" "$logf" && break
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.05
        done
        grep -q "listening on" "$logf" || { echo "compare-net.sh: ours did not start:" >&2; cat "$logf" >&2; exit 1; }
    else
        ip netns exec "$ns" "$TESTPMD" --lcores "0@$srv_cpu,1@$srv_cpu" --no-huge -m 1024 --no-pci \
            --file-prefix "vu-bench-$$" \
            --vdev "net_vhost0,iface=$sock,queues=1,tso=1,legacy-ol-flags=1" \
            --vdev net_tap0,iface=vubt1 -- --total-num-mbufs=16384 --forward-mode=io \
            --stats-period 3600 --cmdline-file="$cmds" >"$logf" 2>&1 &
        server_pid=$!
        for i in $(seq 1 400); do
            [ -S "$sock" ] && grep -q "Read CLI commands" "$logf" && break
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.05
        done
        grep -q "Read CLI commands" "$logf" || { echo "compare-net.sh: testpmd did not start:" >&2; cat "$logf" >&2; exit 1; }
        reflect vubt1
    fi
    sleep 0.5 # let the server settle before measuring it
}

stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

# frame -> window
declare -A window=([64]=256 [1500]=256 [64k]=8)
# frame -> light-load rate (frames/s)
declare -A light=([64]=10000 [1500]=10000 [64k]=1000)
frames=(64 1500 64k)

run_cell() { # round server frame load
    local r=$1 server=$2 f=$3 load=$4 sock="$sockdir/$2.sock" rate=() json
    [ "$load" = light ] && rate=(--rate "${light[$f]}")
    if ! json=$("${cli_pin[@]}" "$vubench" net --socket "$sock" --frame "$f" \
        --window "${window[$f]}" "${rate[@]}" --runtime "$runtime" --server-pid "$server_pid" \
        --json --label "$server/$f/$load/r$r"); then
        echo "compare-net.sh: vu-bench net failed against $server ($f, $load); server log:" >&2
        tail -40 "$work/server-$server.log" >&2
        exit 1
    fi
    printf '{"kind":"net","round":%d,"server":"%s","frame":"%s","load":"%s","result":%s}\n' \
        "$r" "$server" "$f" "$load" "$json" >>"$results"
    "$PYTHON" - "$json" <<'EOF' >&2
import json, sys
j = json.loads(sys.argv[1])
print(f"    {j['label']:<28} {j['pps']:>10.0f} frames/s {j['payload_gbit_s']:>7.2f} Gbit/s payload"
      f"  {j.get('server_us_per_frame') or 0:>8.2f} us CPU/frame  rtt p50 {j['rtt_p50_us']:>8.1f} us")
EOF
}

# --- the rounds ----------------------------------------------------------------------------
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
busy_before=$(ps -eo pcpu=,comm= --sort=-pcpu | head -5 | awk '{printf "%s %s%%; ", $2, $1}')
started=$(date +%s)
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="ours testpmd"; else order="testpmd ours"; fi
    log "round $r of $rounds ($order)"
    for server in $order; do
        start_server "$server" "$sockdir/$server.sock"
        for f in "${frames[@]}"; do
            for load in saturate light; do
                run_cell "$r" "$server" "$f" "$load"
            done
        done
        stop_server
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
finished=$(date +%s)

testpmd_version=$(dpkg-query -W -f '${Version}' librte-net-vhost23 2>/dev/null || echo unknown)
"$PYTHON" - "$meta" <<EOF
import json, sys
json.dump({
    "rounds": $rounds, "runtime": $runtime, "pin": $pin, "quick": $quick,
    "testpmd": "dpdk-testpmd (DPDK $testpmd_version)",
    "load_before": "$load_before", "load_after": "$load_after",
    "busy_before": """$busy_before""",
    "seconds": $finished - $started,
    "command": "tests/bench/compare-net.sh $orig_args",
    "source": "$source_rev",
    "windows": {"64": 256, "1500": 256, "64k": 8},
    "light": {"64": 10000, "1500": 10000, "64k": 1000},
}, open(sys.argv[1], "w"))
EOF
"$PYTHON" "$here/net_report.py" --results "$results" --meta "$meta" --out "$out"
log "wrote the net section of $out ($((finished - started)) s)"
