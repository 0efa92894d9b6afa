//! Config space (GET/SET_CONFIG), the back-end request channel (SET_BACKEND_REQ_FD) and
//! the config-change notification sent on it.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use common::*;
use vu_core::backend_client::NotifyError;
use vu_core::ConnectionEnd;

#[test]
fn get_config_reply_is_exact() {
    let h = Harness::new();
    h.negotiate_all();
    let m = h.fe.call(
        req::GET_CONFIG,
        &config_msg(0, 16, 0, &[0u8; 16]),
        &[],
        12 + 16,
    );
    assert_eq!(m.payload, config_msg(0, 16, 0, &CONFIG_INIT));
    let m =
        h.fe.call(req::GET_CONFIG, &config_msg(12, 4, 0, &[0u8; 4]), &[], 16);
    assert_eq!(m.payload, config_msg(12, 4, 0, &CONFIG_INIT[12..]));
}

#[test]
fn get_config_past_the_device_fields_reads_zeros() {
    // A newer front-end may read a larger config struct than the device has: the bytes past
    // the device's 16 read as zero, up to the 256 the protocol carries.
    let h = Harness::new();
    h.negotiate_all();
    let m =
        h.fe.call(req::GET_CONFIG, &config_msg(10, 8, 0, &[0xee; 8]), &[], 20);
    let mut want = CONFIG_INIT[10..].to_vec();
    want.extend_from_slice(&[0, 0]);
    assert_eq!(m.payload, config_msg(10, 8, 0, &want));
    let m = h.fe.call(
        req::GET_CONFIG,
        &config_msg(0, 256, 0, &[0xee; 256]),
        &[],
        268,
    );
    assert_eq!(&m.payload[12..28], &CONFIG_INIT);
    assert!(m.payload[28..].iter().all(|&b| b == 0));
    let m =
        h.fe.call(req::GET_CONFIG, &config_msg(255, 1, 0, &[0xee]), &[], 13);
    assert_eq!(m.payload[12], 0);
}

/// The spec's error reply for GET_CONFIG: an empty payload; the connection stays up.
fn get_config_is_refused(h: &Harness, payload: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    h.fe.send(req::GET_CONFIG, payload, fds);
    let m = h.fe.recv();
    m.assert_reply(req::GET_CONFIG, 0);
    h.fe.sync();
}

#[test]
fn get_config_malformed_gets_an_empty_payload() {
    let h = Harness::new();
    h.negotiate_all();
    // Beyond the 256 bytes the protocol carries; larger than 256; offset + size
    // overflowing; size 0.
    get_config_is_refused(&h, &config_msg(250, 8, 0, &[0u8; 8]), &[]);
    get_config_is_refused(&h, &config_msg(0, 257, 0, &[0u8; 257]), &[]);
    get_config_is_refused(&h, &config_msg(u32::MAX, 1, 0, &[0u8; 1]), &[]);
    get_config_is_refused(&h, &config_msg(0, 0, 0, &[]), &[]);
    // Size field disagreeing with the data that follows.
    get_config_is_refused(&h, &config_msg(0, 16, 0, &[0u8; 8]), &[]);
    get_config_is_refused(&h, &config_msg(0, 4, 0, &[0u8; 8]), &[]);
    // Shorter than the config header.
    get_config_is_refused(&h, &[0u8; 8], &[]);
    // An fd where none belongs.
    let e = eventfd();
    get_config_is_refused(&h, &config_msg(0, 4, 0, &[0u8; 4]), &[e.as_fd()]);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn get_config_without_the_feature_gets_an_empty_payload() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    get_config_is_refused(&h, &config_msg(0, 4, 0, &[0u8; 4]), &[]);
}

#[test]
fn set_config_writes_the_device_config() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.ok(
        req::SET_CONFIG,
        &config_msg(8, 4, 0, &[0xa0, 0xa1, 0xa2, 0xa3]),
        &[],
    );
    // Migration flag is allowed.
    h.fe.ok(req::SET_CONFIG, &config_msg(15, 1, 1, &[0xff]), &[]);
    let mut want = CONFIG_INIT;
    want[8..12].copy_from_slice(&[0xa0, 0xa1, 0xa2, 0xa3]);
    want[15] = 0xff;
    assert_eq!(h.device.config(), want);
    let m =
        h.fe.call(req::GET_CONFIG, &config_msg(0, 16, 0, &[0u8; 16]), &[], 28);
    assert_eq!(&m.payload[12..], &want);
}

#[test]
fn set_config_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    // Read-only bytes (the device refuses), out of range, unknown flag, size mismatch, short.
    h.fe.refused(req::SET_CONFIG, &config_msg(0, 4, 0, &[1; 4]), &[]);
    h.fe.refused(req::SET_CONFIG, &config_msg(12, 8, 0, &[1; 8]), &[]);
    h.fe.refused(req::SET_CONFIG, &config_msg(8, 4, 2, &[1; 4]), &[]);
    h.fe.refused(req::SET_CONFIG, &config_msg(8, 4, 0, &[1; 3]), &[]);
    h.fe.refused(req::SET_CONFIG, &config_msg(u32::MAX, 2, 0, &[1; 2]), &[]);
    h.fe.refused(req::SET_CONFIG, &[0u8; 11], &[]);
    let e = eventfd();
    h.fe.refused(req::SET_CONFIG, &config_msg(8, 4, 0, &[1; 4]), &[e.as_fd()]);
    assert_eq!(h.device.config(), CONFIG_INIT);
}

#[test]
fn set_config_without_the_feature_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.refused(req::SET_CONFIG, &config_msg(8, 4, 0, &[1; 4]), &[]);
    assert_eq!(h.device.config(), CONFIG_INIT);
}

#[test]
fn config_change_notification_arrives_on_the_backend_channel() {
    let h = Harness::new();
    h.negotiate_all();
    assert!(h.device.has_notifier(), "the device was given the notifier");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    h.fe.ok(req::SET_BACKEND_REQ_FD, &[], &[theirs.as_fd()]);
    drop(theirs);
    let backend = Frontend::new(ours);
    h.handler()
        .lock()
        .expect("handler lock")
        .notifier()
        .notify_config_change()
        .expect("notify");
    let m = backend.recv();
    assert_eq!(m.request, 2, "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG");
    assert_eq!(
        m.flags, VERSION,
        "a request: version 1, no reply bit, no need_reply"
    );
    assert_eq!(m.size, 0);
    assert!(m.fds.is_empty());
    // After the front-end goes away the channel is forgotten.
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
    let r = h
        .handler()
        .lock()
        .expect("handler lock")
        .notifier()
        .notify_config_change();
    assert!(matches!(r, Err(NotifyError::NoChannel)), "{r:?}");
    backend.expect_closed();
}

#[test]
fn notification_without_a_channel_is_an_error() {
    let h = Harness::new();
    h.negotiate_all();
    let r = h
        .handler()
        .lock()
        .expect("handler lock")
        .notifier()
        .notify_config_change();
    assert!(matches!(r, Err(NotifyError::NoChannel)), "{r:?}");
}

#[test]
fn set_backend_req_fd_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let (a, b) = UnixStream::pair().expect("socketpair");
    h.fe.refused(req::SET_BACKEND_REQ_FD, &[], &[]);
    h.fe.refused(req::SET_BACKEND_REQ_FD, &[], &[a.as_fd(), b.as_fd()]);
    h.fe.refused(req::SET_BACKEND_REQ_FD, &u64_payload(0), &[a.as_fd()]);
    assert!(!h
        .handler()
        .lock()
        .expect("handler lock")
        .notifier()
        .has_channel());
}

#[test]
fn set_backend_req_fd_without_the_feature_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    let (_a, b) = UnixStream::pair().expect("socketpair");
    h.fe.refused(req::SET_BACKEND_REQ_FD, &[], &[b.as_fd()]);
}
