//! A real guest on our net device: its interface comes up on the tap's link, it pings the
//! host end, and 64 MiB move each way over TCP with SHA-256 sums compared at both ends; with
//! one queue pair, and with two (two vCPUs, two flows each way, every queue carrying
//! frames). The features the guest's driver negotiated (from sysfs) include the offloads, and
//! the device set the tap's offloads to match. Everything happens in a network namespace the
//! test creates and deletes.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{ensure, Result};
use vu_tests::e2e::POWEROFF;
use vu_tests::net::{
    guest_net_features, queue_completed, status_number, transfer, NetRig, Plan, NET_CMD,
};

const MIB: u64 = 1 << 20;

// virtio-net feature bits (virtio 1.2, 5.1.3).
const CSUM: u32 = 0;
const GUEST_CSUM: u32 = 1;
const GUEST_TSO4: u32 = 7;
const GUEST_TSO6: u32 = 8;
const HOST_TSO4: u32 = 11;
const HOST_TSO6: u32 = 12;
const MRG_RXBUF: u32 = 15;
const MQ: u32 = 22;
const VERSION_1: u32 = 32;

fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

/// Boots a guest with `cpus` vCPUs on a device with `pairs` queue pairs, checks features,
/// moves `total` bytes each way over `flows` flows per direction; with as many vCPUs as pairs,
/// every queue must carry frames.
fn run(pairs: u16, cpus: u32, flows: usize, total: u64) -> Result<()> {
    let rig = NetRig::new(pairs, &[])?;
    let guest = rig.boot(cpus, false)?;
    let outcome = (|| -> Result<()> {
        let f = guest_net_features(&guest)?;
        eprintln!("guest features: {f:#x}");
        for (bit, name) in [
            (VERSION_1, "VERSION_1"),
            (CSUM, "CSUM"),
            (GUEST_CSUM, "GUEST_CSUM"),
            (GUEST_TSO4, "GUEST_TSO4"),
            (GUEST_TSO6, "GUEST_TSO6"),
            (HOST_TSO4, "HOST_TSO4"),
            (HOST_TSO6, "HOST_TSO6"),
            (MRG_RXBUF, "MRG_RXBUF"),
        ] {
            ensure!(has(f, bit), "the guest did not negotiate {name}: {f:#x}");
        }
        if pairs > 1 {
            ensure!(has(f, MQ), "the guest did not negotiate MQ: {f:#x}");
        }
        if cpus > 1 {
            let queues = guest.run_ok("ls /sys/class/net/eth0/queues", NET_CMD)?;
            for q in ["rx-0", "rx-1", "tx-0", "tx-1"] {
                ensure!(queues.contains(q), "no {q} in the guest: {queues}");
            }
        }
        let st = rig.ctl().status("net0")?;
        let offloads = st.raw.find_key("offloads").map(|v| v.text());
        ensure!(
            offloads
                .as_deref()
                .is_some_and(|o| o.contains("csum") && o.contains("tso4") && o.contains("tso6")),
            "the tap's offloads do not follow the guest's features: {offloads:?}"
        );

        let progress = Arc::new(AtomicU64::new(0));
        let plan = Plan {
            flows,
            bytes: total / flows as u64,
            port: 5000,
        };
        let moved = transfer(&rig.netns, &guest, plan, &progress)?;
        eprintln!(
            "{pairs} pair(s): {} MiB to the host and {} MiB to the guest in {:.1} s",
            moved.to_host / MIB,
            moved.to_guest / MIB,
            moved.elapsed.as_secs_f64()
        );

        let snmp = guest.run_ok("grep Tcp: /proc/net/snmp", NET_CMD)?;
        eprintln!("guest TCP counters:\n{snmp}");
        let st = rig.ctl().status("net0")?;
        let tx = status_number(&st, "tx_bytes")?;
        let rx = status_number(&st, "rx_bytes")?;
        ensure!(
            tx >= total && rx >= total,
            "device counters: {tx} bytes from the guest, {rx} to it"
        );
        for key in [
            "tx_dropped_malformed",
            "rx_dropped_too_big",
            "rx_dropped_malformed",
        ] {
            ensure!(
                status_number(&st, key)? == 0,
                "{key} is not 0: {:?}",
                st.raw
            );
        }
        // The parent's view of the tap: the frames the device wrote.
        ensure!(
            status_number(&st, "tap_frames_from_device")? > 0,
            "no tap counters in the status: {:?}",
            st.raw
        );
        let per_queue = queue_completed(&st);
        eprintln!("per-queue completed: {per_queue:?}");
        ensure!(
            per_queue.len() == 2 * usize::from(pairs)
                && (cpus < u32::from(pairs) || per_queue.iter().all(|&n| n > 0)),
            "not every queue carried frames: {per_queue:?}"
        );
        Ok(())
    })();
    rig.report(&guest, outcome)?;
    guest.poweroff(POWEROFF)?;
    drop(guest);
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

#[test]
fn one_queue_pair_moves_64_mib_each_way() -> Result<()> {
    run(1, 1, 1, 64 * MIB)
}

#[test]
fn two_queue_pairs_move_64_mib_each_way_on_every_queue() -> Result<()> {
    run(2, 2, 2, 64 * MIB)
}

/// The guest uses one pair of two (one vCPU): QEMU disables the other pair's rings and the
/// device detaches their tap queue, so that no flow is steered where nobody reads.
#[test]
fn a_guest_with_fewer_vcpus_than_pairs_loses_no_flow() -> Result<()> {
    run(2, 1, 4, 16 * MIB)
}
