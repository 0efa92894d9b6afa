//! Conformance: feature and protocol-feature negotiation, queue count, memory slots, device
//! status, config space and the back-end request channel, with the rust-vmm `vhost` crate as
//! the front-end.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use anyhow::{ensure, Result};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;
use vu_tests::frontend::raw::{self, Reply};
use vu_tests::frontend::{bits, negotiate, vh, Options, TestServer, TIMEOUT};
use vu_tests::test_device::{Call, CONFIG_MAGIC, CONFIG_RO_LEN, CONFIG_SIZE, TEST_DEVICE_FEATURES};

#[test]
fn offered_features_and_protocol_features() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    let neg = negotiate(&mut fe, &Options::default())?;
    for (bit, name) in [
        (bits::VERSION_1, "VERSION_1"),
        (bits::EVENT_IDX, "EVENT_IDX"),
        (bits::INDIRECT_DESC, "INDIRECT_DESC"),
        (bits::PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
        (bits::LOG_ALL, "LOG_ALL"),
        (TEST_DEVICE_FEATURES, "device bits"),
    ] {
        ensure!(
            neg.offered_features & bit == bit,
            "{name} not offered ({:#x})",
            neg.offered_features
        );
    }
    let p = VhostUserProtocolFeatures::from_bits_retain(neg.offered_protocol);
    for f in [
        VhostUserProtocolFeatures::MQ,
        VhostUserProtocolFeatures::LOG_SHMFD,
        VhostUserProtocolFeatures::REPLY_ACK,
        VhostUserProtocolFeatures::BACKEND_REQ,
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::INFLIGHT_SHMFD,
        VhostUserProtocolFeatures::RESET_DEVICE,
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        VhostUserProtocolFeatures::STATUS,
    ] {
        ensure!(p.contains(f), "protocol feature {f:?} not offered ({p:?})");
    }
    // Nothing the back-end cannot do: no postcopy, no shared objects, no device state.
    for f in [
        VhostUserProtocolFeatures::PAGEFAULT,
        VhostUserProtocolFeatures::SHARED_OBJECT,
        VhostUserProtocolFeatures::DEVICE_STATE,
        VhostUserProtocolFeatures::GPA_ADDRESSES,
    ] {
        ensure!(
            !p.contains(f),
            "protocol feature {f:?} offered but not implemented"
        );
    }
    ensure!(neg.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK));

    // The device saw exactly what the front-end accepted.
    ensure!(
        server
            .device()
            .calls()
            .contains(&Call::SetFeatures(neg.features)),
        "device calls: {:?}",
        server.device().calls()
    );
    let st = server.status();
    ensure!(st.acked_features == neg.features);
    ensure!(st.acked_protocol_features == neg.protocol.bits());

    // GET_FEATURES is stable and SET_FEATURES may be repeated.
    ensure!(vh(fe.get_features(), "GET_FEATURES")? == neg.offered_features);
    vh(fe.set_features(neg.features), "SET_FEATURES again")?;
    Ok(())
}

#[test]
fn queue_num_and_mem_slots() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::default())?;
    ensure!(vh(fe.get_queue_num(), "GET_QUEUE_NUM")? == 2);
    let slots = vh(fe.get_max_mem_slots(), "GET_MAX_MEM_SLOTS")?;
    ensure!(slots >= 8, "GET_MAX_MEM_SLOTS = {slots}");
    Ok(())
}

#[test]
fn unoffered_features_are_refused() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    let neg = negotiate(&mut fe, &Options::default())?;
    // Bit 40 is not offered: with REPLY_ACK the back-end's refusal reaches the caller.
    let bad = neg.features | (1 << 40);
    ensure!(
        fe.set_features(bad).is_err(),
        "SET_FEATURES with an unoffered bit was accepted"
    );
    ensure!(
        server.status().acked_features == neg.features,
        "features changed"
    );
    ensure!(!server.device().calls().contains(&Call::SetFeatures(bad)));
    // Unoffered protocol features (SHARED_OBJECT) are refused as well.
    let bad_proto = neg.protocol | VhostUserProtocolFeatures::SHARED_OBJECT;
    ensure!(
        fe.set_protocol_features(bad_proto).is_err(),
        "SET_PROTOCOL_FEATURES with an unoffered bit was accepted"
    );
    // Good requests still work on the same connection.
    vh(fe.set_features(neg.features), "SET_FEATURES")?;
    ensure!(vh(fe.get_queue_num(), "GET_QUEUE_NUM")? == 2);
    Ok(())
}

#[test]
fn requests_of_unnegotiated_protocol_features_are_refused() -> Result<()> {
    let server = TestServer::start_default()?;
    let conn = server.connect_raw()?;
    // Negotiate REPLY_ACK only.
    conn.send(raw::req::SET_OWNER, &[], &[])?;
    let f = conn.get_u64(raw::req::GET_FEATURES)?;
    ensure!(f & bits::PROTOCOL_FEATURES != 0);
    conn.send(
        raw::req::SET_PROTOCOL_FEATURES,
        &VhostUserProtocolFeatures::REPLY_ACK.bits().to_ne_bytes(),
        &[],
    )?;
    let r = conn.request(
        raw::req::SET_FEATURES,
        &(bits::VERSION_1 | bits::PROTOCOL_FEATURES).to_ne_bytes(),
        &[],
    )?;
    ensure!(r.ack() == Some(0), "{r:?}");
    // STATUS was not negotiated: SET_STATUS is refused.
    let r = conn.request(raw::req::SET_STATUS, &8u64.to_ne_bytes(), &[])?;
    ensure!(r.is_refusal(), "SET_STATUS without STATUS: {r:?}");
    // CONFIG was not negotiated: SET_CONFIG is refused.
    let mut p = Vec::new();
    for x in [8u32, 1, 0] {
        p.extend_from_slice(&x.to_ne_bytes());
    }
    p.push(1);
    let r = conn.request(raw::req::SET_CONFIG, &p, &[])?;
    ensure!(r.is_refusal(), "SET_CONFIG without CONFIG: {r:?}");
    ensure!(server.device().config()[8] == 0);
    Ok(())
}

#[test]
fn status_round_trip() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::default())?;
    ensure!(raw::get_status(&fe)? == 0, "initial status");
    // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    for s in [1u8, 3, 11, 15] {
        ensure!(raw::set_status(&fe, s)? == 0, "SET_STATUS {s} refused");
        ensure!(
            raw::get_status(&fe)? == s,
            "GET_STATUS after SET_STATUS {s}"
        );
    }
    // A status wider than 8 bits is refused and changes nothing.
    let r = raw::request_on(
        fe.as_raw_fd(),
        raw::req::SET_STATUS,
        &0x1_0000u64.to_ne_bytes(),
        &[],
    )?;
    ensure!(r.is_refusal(), "{r:?}");
    ensure!(raw::get_status(&fe)? == 15);
    // The vhost crate front-end keeps working on the same socket.
    ensure!(vh(fe.get_queue_num(), "GET_QUEUE_NUM")? == 2);
    // RESET_DEVICE clears the status.
    vh(fe.reset_device(), "RESET_DEVICE")?;
    ensure!(raw::get_status(&fe)? == 0, "status after RESET_DEVICE");
    Ok(())
}

#[test]
fn config_space() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::default())?;
    let flags = VhostUserConfigFlags::empty();
    let size = CONFIG_SIZE as u32;
    let (hdr, data) = vh(
        fe.get_config(0, size, flags, &[0u8; CONFIG_SIZE]),
        "GET_CONFIG",
    )?;
    let (off, sz) = (hdr.offset, hdr.size);
    ensure!(off == 0 && sz == size, "reply header {off}+{sz}");
    ensure!(data[..CONFIG_RO_LEN] == CONFIG_MAGIC, "config {data:?}");
    ensure!(data[CONFIG_RO_LEN..].iter().all(|&b| b == 0));

    // A partial read in the middle.
    let (_, part) = vh(fe.get_config(4, 6, flags, &[0u8; 6]), "GET_CONFIG 4+6")?;
    ensure!(part[..4] == CONFIG_MAGIC[4..] && part[4..] == [0, 0]);

    // Writable bytes.
    vh(fe.set_config(10, flags, &[0xaa, 0xbb, 0xcc]), "SET_CONFIG")?;
    ensure!(server.device().config()[10..13] == [0xaa, 0xbb, 0xcc]);
    let (_, after) = vh(fe.get_config(8, 8, flags, &[0u8; 8]), "GET_CONFIG 8+8")?;
    ensure!(after == [0, 0, 0xaa, 0xbb, 0xcc, 0, 0, 0], "{after:?}");

    // Read-only bytes: the device refuses, REPLY_ACK reports it.
    ensure!(
        fe.set_config(0, flags, &[1, 2]).is_err(),
        "read-only write accepted"
    );
    ensure!(server.device().config()[..CONFIG_RO_LEN] == CONFIG_MAGIC);
    // Past the end of the config space.
    ensure!(
        fe.set_config(14, flags, &[1, 2, 3, 4]).is_err(),
        "write past the end accepted"
    );
    // Flags the specification does not define (the vhost crate's LIVE_MIGRATION is 2).
    ensure!(
        fe.set_config(8, VhostUserConfigFlags::LIVE_MIGRATION, &[1])
            .is_err(),
        "unknown SET_CONFIG flags accepted"
    );
    // RESET_DEVICE restores the device's config.
    vh(fe.reset_device(), "RESET_DEVICE")?;
    ensure!(server.device().config()[10] == 0, "config after reset");
    Ok(())
}

/// GET_CONFIG past the device's fields but inside the 256 bytes the protocol carries reads
/// zeros (a front-end may ask for a larger struct than the device fills).
#[test]
fn get_config_past_the_device_fields_reads_zeros() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::default())?;
    let (_, data) = vh(
        fe.get_config(12, 8, VhostUserConfigFlags::empty(), &[0xffu8; 8]),
        "GET_CONFIG 12+8",
    )?;
    ensure!(data == [0u8; 8], "{data:?}");
    let (_, data) = vh(
        fe.get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60]),
        "GET_CONFIG 0+60",
    )?;
    ensure!(data[..CONFIG_RO_LEN] == CONFIG_MAGIC && data[CONFIG_SIZE..].iter().all(|&b| b == 0));
    Ok(())
}

/// GET_CONFIG out of range, sent by hand: the specification's error reply is a header with
/// an empty payload. (The vhost crate's front-end cannot be used here: it waits for a full
/// config-sized reply and would block forever on the specified error reply.)
#[test]
fn get_config_out_of_range_replies_empty() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::default())?;
    let fd = fe.as_raw_fd();
    for (offset, size, data) in [
        (250u32, 8u32, 8usize),
        (256, 1, 1),
        (0, 257, 257),
        (u32::MAX, 2, 2),
        (0, 0, 0),
        (0, 8, 4),
    ] {
        let mut p = Vec::new();
        for x in [offset, size, 0] {
            p.extend_from_slice(&x.to_ne_bytes());
        }
        p.extend(std::iter::repeat_n(0u8, data));
        raw::send(fd, raw::req::GET_CONFIG, raw::VERSION, &p, &[])?;
        match raw::recv(fd, TIMEOUT)? {
            Reply::Msg(m) => {
                ensure!(m.request == raw::req::GET_CONFIG && m.flags & raw::REPLY != 0);
                ensure!(
                    m.payload.is_empty(),
                    "GET_CONFIG {offset}+{size}: {} bytes of reply",
                    m.payload.len()
                );
            }
            Reply::Closed => anyhow::bail!("connection closed on GET_CONFIG {offset}+{size}"),
        }
    }
    // The connection is still usable by the vhost crate.
    let (_, data) = vh(
        fe.get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8]),
        "GET_CONFIG",
    )?;
    ensure!(data == CONFIG_MAGIC);
    Ok(())
}

#[test]
fn backend_request_channel_carries_config_change() -> Result<()> {
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::default())?;
    let (ours, theirs) = UnixStream::pair()?;
    vh(fe.set_backend_request_fd(&theirs), "SET_BACKEND_REQ_FD")?;
    drop(theirs);
    let notifier = server
        .handler()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .notifier()
        .clone();
    ensure!(notifier.has_channel());
    notifier.notify_config_change()?;
    ours.set_read_timeout(Some(TIMEOUT))?;
    let mut hdr = [0u8; 12];
    (&ours).read_exact(&mut hdr)?;
    let word = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    // VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, version 1, no payload.
    ensure!(word(0) == 2, "request {}", word(0));
    ensure!(word(4) & 3 == 1, "flags {:#x}", word(4));
    ensure!(word(8) == 0, "size {}", word(8));
    // After the front-end goes away the channel is dropped.
    drop(fe);
    ensure!(
        server.device().wait_call(TIMEOUT, |c| *c == Call::Reset),
        "no reset after disconnect"
    );
    // The reset runs under the handler lock; once we get the lock the disconnect is done.
    drop(server.status());
    ensure!(!notifier.has_channel(), "channel kept after disconnect");
    Ok(())
}
