#!/usr/bin/env bash
# A/B of launcher binaries on the net bench's saturated cells (ours only).
set -euo pipefail
rounds=${ROUNDS:-3}; runtime=${RUNTIME:-5}
variants=(${VARIANTS:-A B C})
ns="vu-ab-$$"; sockdir=$(mktemp -d /tmp/vu-ab.XXXXXX); server_pid=""
cleanup() { [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null; wait 2>/dev/null; ip netns del "$ns" 2>/dev/null; rm -rf "$sockdir"; }
trap cleanup EXIT
ip netns add "$ns"; ip -n "$ns" link set lo up
for k in all default; do ip netns exec "$ns" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6"; done
for r in $(seq 1 "$rounds"); do
  n=${#variants[@]}; order=()
  for i in $(seq 0 $((n-1))); do order+=("${variants[$(( (i + r) % n ))]}"); done
  for v in "${order[@]}"; do
    sock=$sockdir/s.sock; rm -f "$sock"; logf=$sockdir/log-$v
    ip -n "$ns" link del vubt0 2>/dev/null || true
    ip -n "$ns" tuntap add dev vubt0 mode tap multi_queue vnet_hdr
    ip -n "$ns" link set vubt0 up
    ip netns exec "$ns" tc qdisc add dev vubt0 ingress
    ip netns exec "$ns" tc filter add dev vubt0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev vubt0
    ip netns exec "$ns" taskset -c 1 /tmp/ab/launcher-$v start net --socket "$sock" --tap vubt0 --control "$sockdir/ctl.sock" >"$logf" 2>&1 &
    server_pid=$!
    for i in $(seq 1 200); do grep -q "listening on" "$logf" && break; sleep 0.05; done
    sleep 0.5
    for f in 64 1500; do
      j=$(taskset -c 0 /tmp/ab/vu-bench net --socket "$sock" --frame $f --window 256 --runtime "$runtime" --server-pid "$server_pid" --json --label "$v/$f/r$r")
      python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(f\"{j['label']:<12} {j['pps']:>10.0f} fps {j.get('server_us_per_frame') or 0:>6.2f} us/frame\")" "$j"
    done
    kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=""
  done
done
