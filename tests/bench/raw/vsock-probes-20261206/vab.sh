#!/usr/bin/env bash
# usage: vab.sh "args" rounds variants...
args=$1; rounds=$2; shift 2
for r in $(seq 1 $rounds); do
 for v in "$@"; do
  d=$(mktemp -d /tmp/vprobe.XXXX); sock=$d/s.sock; uds=$d/v
  if [ $v = vdv ]; then vhost-device-vsock --guest-cid 3 --socket $sock --uds-path $uds > $d/log 2>&1 &
  else /tmp/ab/launcher-$v start vsock --socket $sock --guest-cid 3 --uds-path $uds --no-control > $d/log 2>&1 & fi
  spid=$!
  for i in $(seq 1 100); do [ -S $sock ] && break; sleep 0.05; done; sleep 0.3
  /work/main/target/release/vu-bench vsock --socket $sock --uds-path $uds $args --runtime ${RT:-4} --server-pid $spid --json --label x > $d/out.json
  python3 -c "import json; j=json.load(open('$d/out.json')); print('$v r$r', {k:j.get(k) for k in ['mib_s','server_cpu_ms_per_mib','conns_s','server_us_per_conn','kicks','waits']})"
  kill $spid; wait $spid 2>/dev/null; rm -rf $d
 done
done
