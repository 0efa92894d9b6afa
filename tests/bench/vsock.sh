# vsock.sh: the vsock part of compare.sh (sourced by it; uses its variables and log()).
#
# Every cell runs the same `vu-bench vsock` load (a host-side guest driver: RX and TX queues
# in shared memory, credit, connections; host programs on the server's --uds-path) against:
#   A  ours: target/release/launcher start vsock --socket S --guest-cid 3 --uds-path U
#            (jailed, as deployed; its CPU counts the launcher, whose broker thread connects
#            host sockets for the device, and the device process)
#   B  vdv:  vhost-device-vsock --guest-cid 3 --socket S --uds-path U  (rust-vmm; installed
#            with `cargo install vhost-device-vsock` when missing)
# each started fresh for the cell and measured with --server-pid (every thread of every
# process of its tree). Workloads: bulk to the host (TX; 64 KiB packets as Linux sends a large
# write, and 8 KiB packets as an application writing 8 KiB at a time makes them), bulk from
# the host (RX), connection churn (16 in flight: connect, one 64-byte message, close); each
# at saturation and at a light fixed rate (VSOCK_LIGHT_MIB MiB/s, VSOCK_LIGHT_CONNS
# connections/s).

VDV=${VDV:-vhost-device-vsock}
VSOCK_LIGHT_MIB=${VSOCK_LIGHT_MIB:-64}
VSOCK_LIGHT_CONNS=${VSOCK_LIGHT_CONNS:-500}
vsock_server_pid=""

vsock_need_peer() {
    if ! command -v "$VDV" >/dev/null 2>&1; then
        log "installing vhost-device-vsock (cargo install, a few minutes)"
        cargo install -q vhost-device-vsock
        VDV=$HOME/.cargo/bin/vhost-device-vsock
    fi
    vdv_version=$("$VDV" --version 2>/dev/null | head -1 || echo "vhost-device-vsock (unknown version)")
}

vsock_start() { # server socket uds
    local server=$1 sock=$2 uds=$3 logf="$work/vsock-server.log"
    rm -f "$sock" "$uds"
    if [ "$server" = ours ]; then
        # shellcheck disable=SC2086
        "${srv_pin[@]}" "$launcher" start vsock --socket "$sock" --guest-cid 3 --uds-path "$uds" \
            --no-control $OURS_EXTRA >"$logf" 2>&1 &
    else
        "${srv_pin[@]}" "$VDV" --guest-cid 3 --socket "$sock" --uds-path "$uds" >"$logf" 2>&1 &
    fi
    vsock_server_pid=$!
    for _ in $(seq 1 200); do
        if [ -S "$sock" ] && { [ "$server" = vdv ] || grep -q "listening on" "$logf"; }; then
            sleep 0.2
            return 0
        fi
        kill -0 "$vsock_server_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "compare.sh: vsock server $server did not start; its log:" >&2
    cat "$logf" >&2
    exit 1
}

vsock_stop() {
    kill -TERM "$vsock_server_pid" 2>/dev/null || true
    wait "$vsock_server_pid" 2>/dev/null || true
    vsock_server_pid=""
}

# name -> vu-bench vsock arguments
declare -A vsock_wl=(
    [to-host]="--mode to-host"
    [to-host-8k]="--mode to-host --tx-pkt 8k"
    [from-host]="--mode from-host"
    [churn]="--mode churn"
    [to-host-light]="--mode to-host --rate $VSOCK_LIGHT_MIB"
    [from-host-light]="--mode from-host --rate $VSOCK_LIGHT_MIB"
    [churn-light]="--mode churn --rate $VSOCK_LIGHT_CONNS"
)
vsock_workloads=(to-host to-host-8k from-host churn to-host-light from-host-light churn-light)

vsock_cell() { # round workload server
    local r=$1 wl=$2 server=$3 sock="$sockdir/vsock-$3.sock" uds="$sockdir/vsock-$3.v" json
    vsock_start "$server" "$sock" "$uds"
    # shellcheck disable=SC2086
    if ! json=$("${cli_pin[@]}" "$vubench" vsock --socket "$sock" --uds-path "$uds" \
        ${vsock_wl[$wl]} --runtime "$runtime" --server-pid "$vsock_server_pid" --json \
        --label "$server/$wl/r$r"); then
        echo "compare.sh: vu-bench vsock failed against $server ($wl); server log:" >&2
        cat "$work/vsock-server.log" >&2
        exit 1
    fi
    vsock_stop
    printf '{"kind":"vsock","round":%d,"workload":"%s","server":"%s","result":%s}\n' \
        "$r" "$wl" "$server" "$json" >>"$results"
    "$PYTHON" - "$json" <<'EOF' >&2
import json, sys
j = json.loads(sys.argv[1])
per = (f"{j.get('server_us_per_conn') or 0:>8.1f} us/conn" if j["mode"] == "churn"
       else f"{j.get('server_cpu_ms_per_mib') or 0:>8.3f} ms/MiB")
print(f"    {j['label']:<28} {j['mib_s']:>9.1f} MiB/s {j['conns_s']:>9.0f} conn/s {per}")
EOF
}

vsock_rounds() {
    vsock_need_peer
    local r wl order cell=0
    for r in $(seq 1 "$rounds"); do
        log "vsock round $r of $rounds"
        for wl in "${vsock_workloads[@]}"; do
            if [ $(((cell + r) % 2)) = 0 ]; then order="ours vdv"; else order="vdv ours"; fi
            for server in $order; do
                vsock_cell "$r" "$wl" "$server"
            done
            cell=$((cell + 1))
        done
    done
}
