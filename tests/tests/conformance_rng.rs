//! Conformance: the virtio-rng device served by our back-end, with the rust-vmm `vhost`
//! crate as the front-end: what is offered (no device bits, no config space, one queue), one
//! queue of size 4 as QEMU's vhost-user-rng-pci sets it up, requests filled (direct and
//! indirect descriptors, with and without EVENT_IDX), a queue larger than the device allows
//! refused, and a second front-end after the first went away.

use std::fs::File;
use std::sync::Arc;

use anyhow::{ensure, Result};
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;
use vu_devices::rng::{RngConfig, RngDevice};
use vu_tests::frontend::{
    bits, negotiate, vh, Buf, DriverQueue, Options, TestGuest, TestServer, TIMEOUT,
};

/// QEMU's vhost-user-rng-pci: one queue of four descriptors.
const QEMU_QUEUE_SIZE: u16 = 4;

fn server(max_queue_size: u16) -> Result<(TestServer, Arc<RngDevice>)> {
    let mut cfg = RngConfig::new(File::open("/dev/urandom")?);
    cfg.queue_size = max_queue_size;
    let dev = RngDevice::new(cfg)?;
    let server = TestServer::start_device(dev.clone())?;
    Ok((server, dev))
}

/// `rounds` times: fills the ring with one-descriptor requests of `len` bytes (their data
/// slots), kicks, and checks every answer is complete and not all zeros.
fn fill_ring(dq: &mut DriverQueue, rounds: usize, len: u32, indirect: bool) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    for _ in 0..rounds {
        let n = dq.size() as usize;
        for _ in 0..n {
            if indirect {
                let Some(head) = dq.peek_free() else {
                    anyhow::bail!("ring full");
                };
                // The table takes the slot's first bytes; the buffer is the rest.
                let buf = dq.slot(head) + 64;
                dq.guest().write(buf, &vec![0u8; len as usize])?;
                dq.add_indirect(&[Buf::w(buf, len)])?;
            } else {
                dq.submit_sg(&[], &[len])?;
            }
        }
        dq.kick()?;
        let used = dq.wait_used(n, TIMEOUT)?;
        ensure!(used.len() == n, "{} of {n} answers", used.len());
        for u in used {
            ensure!(
                u.len == len,
                "used length {} for a {len}-byte buffer",
                u.len
            );
            ensure!(u.data.len() == len as usize);
            all.extend(u.data);
        }
    }
    ensure!(
        all.iter().filter(|&&b| b == 0).count() < all.len() / 64,
        "mostly zeros: the buffers were not filled"
    );
    Ok(all)
}

#[test]
fn offers_one_queue_no_device_bits_and_no_config_space() -> Result<()> {
    let (server, _dev) = server(1024)?;
    let mut fe = server.connect()?;
    let neg = negotiate(&mut fe, &Options::default())?;
    // Bits 0..=23 are device-specific: virtio-rng defines none.
    ensure!(
        neg.offered_features & 0xff_ffff == 0,
        "device bits offered: {:#x}",
        neg.offered_features
    );
    for bit in [
        bits::VERSION_1,
        bits::PROTOCOL_FEATURES,
        bits::EVENT_IDX,
        bits::INDIRECT_DESC,
    ] {
        ensure!(neg.offered_features & bit == bit, "{bit:#x} not offered");
    }
    let p = VhostUserProtocolFeatures::from_bits_retain(neg.offered_protocol);
    ensure!(p.contains(VhostUserProtocolFeatures::MQ));
    ensure!(
        !p.contains(VhostUserProtocolFeatures::CONFIG),
        "CONFIG offered without a config space"
    );
    ensure!(vh(fe.get_queue_num(), "GET_QUEUE_NUM")? == 1);
    Ok(())
}

#[test]
fn one_queue_of_four_as_qemu_sets_it_up() -> Result<()> {
    let guest = TestGuest::standard()?;
    let (server, dev) = server(1024)?;
    let mut s = server.session(&guest, &Options::default(), QEMU_QUEUE_SIZE)?;
    // 512 bytes per request, as Linux's virtio-rng driver asks; 50 rounds wrap the ring.
    let data = fill_ring(&mut s.queues[0], 50, 512, false)?;
    ensure!(data.len() == 50 * 4 * 512);
    let st = dev.stats();
    ensure!(
        st.requests_total == 200 && st.bytes_total == 200 * 512,
        "{st:?}"
    );
    let q = &server.status().queues[0];
    ensure!(q.completed == 200 && q.chain_errors == 0, "{q:?}");
    ensure!(q.bytes_to_driver == 200 * 512, "{q:?}");
    Ok(())
}

#[test]
fn event_idx_and_indirect_descriptors() -> Result<()> {
    let guest = TestGuest::standard()?;
    let (server, _dev) = server(1024)?;
    let mut s = server.session(&guest, &Options::event_idx(), 16)?;
    ensure!(
        s.neg.features & bits::EVENT_IDX != 0,
        "EVENT_IDX not negotiated"
    );
    fill_ring(&mut s.queues[0], 10, 256, false)?;
    fill_ring(&mut s.queues[0], 10, 256, true)?;
    Ok(())
}

#[test]
fn a_queue_larger_than_the_device_allows_is_refused() -> Result<()> {
    let (server, _dev) = server(QEMU_QUEUE_SIZE)?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::default())?;
    ensure!(fe.set_vring_num(0, 8).is_err(), "queue size 8 accepted");
    ensure!(fe.set_vring_num(1, 4).is_err(), "a second queue accepted");
    vh(fe.set_vring_num(0, 4), "SET_VRING_NUM 4")?;
    Ok(())
}

#[test]
fn a_second_front_end_is_served_after_the_first_went_away() -> Result<()> {
    let guest = TestGuest::standard()?;
    let (server, dev) = server(1024)?;
    {
        let mut s = server.session(&guest, &Options::default(), QEMU_QUEUE_SIZE)?;
        fill_ring(&mut s.queues[0], 5, 512, false)?;
    }
    let mut s = server.session(&guest, &Options::event_idx(), QEMU_QUEUE_SIZE)?;
    fill_ring(&mut s.queues[0], 5, 512, false)?;
    ensure!(dev.stats().requests_total == 40);
    Ok(())
}
