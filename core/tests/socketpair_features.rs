//! Feature negotiation, ownership, status, queue count and device reset, against the real
//! handler over a socketpair.

mod common;

use std::os::fd::AsFd;

use common::*;
use vu_core::ConnectionEnd;

#[test]
fn get_features_reply_is_exact() {
    let h = Harness::new();
    let m = h.fe.call(req::GET_FEATURES, &[], &[], 8);
    assert!(m.fds.is_empty());
    assert_eq!(read_u64(&m.payload), feat::OFFERED);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn get_features_with_a_payload_closes_the_connection() {
    let h = Harness::new();
    h.fe.send(req::GET_FEATURES, &u64_payload(0), &[]);
    h.expect_protocol_error();
}

#[test]
fn get_features_with_an_fd_closes_the_connection() {
    let h = Harness::new();
    let e = eventfd();
    h.fe.send(req::GET_FEATURES, &[], &[e.as_fd()]);
    h.expect_protocol_error();
}

#[test]
fn set_features_acks_and_reaches_the_device() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    let want = feat::VERSION_1 | feat::PROTOCOL_FEATURES | feat::DEVICE_BIT;
    h.fe.ok(req::SET_FEATURES, &u64_payload(want), &[]);
    assert_eq!(h.status().acked_features, want);
    assert_eq!(
        h.device.features.lock().expect("lock").last().copied(),
        Some(want)
    );
}

#[test]
fn set_features_malformed_is_refused_and_changes_nothing() {
    let h = Harness::new();
    let base = feat::VERSION_1 | feat::PROTOCOL_FEATURES;
    h.negotiate(base, proto::REPLY_ACK);
    // A bit the back-end never offered.
    h.fe.refused(req::SET_FEATURES, &u64_payload(base | 1 << 60), &[]);
    // Wrong payload size.
    h.fe.refused(req::SET_FEATURES, &[0u8; 4], &[]);
    h.fe.refused(req::SET_FEATURES, &[0u8; 16], &[]);
    // An fd where none belongs.
    let e = eventfd();
    h.fe.refused(req::SET_FEATURES, &u64_payload(base), &[e.as_fd()]);
    assert_eq!(h.status().acked_features, base);
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn get_protocol_features_reply_is_exact() {
    let h = Harness::new();
    let m = h.fe.call(req::GET_PROTOCOL_FEATURES, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), proto::OFFERED);
}

#[test]
fn get_protocol_features_malformed_closes_the_connection() {
    let h = Harness::new();
    h.fe.send(req::GET_PROTOCOL_FEATURES, &[1, 2, 3], &[]);
    h.expect_protocol_error();
}

#[test]
fn set_protocol_features_negotiates_reply_ack() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK | proto::MQ);
    assert_eq!(
        h.status().acked_protocol_features,
        proto::REPLY_ACK | proto::MQ
    );
    // Now NEED_REPLY gets an ack.
    h.fe.ok(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK | proto::STATUS),
        &[],
    );
    assert_eq!(
        h.status().acked_protocol_features,
        proto::REPLY_ACK | proto::STATUS
    );
}

#[test]
fn set_protocol_features_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.refused(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK | 1 << 40),
        &[],
    );
    h.fe.refused(req::SET_PROTOCOL_FEATURES, &[0u8; 7], &[]);
    let e = eventfd();
    h.fe.refused(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK),
        &[e.as_fd()],
    );
    assert_eq!(h.status().acked_protocol_features, proto::REPLY_ACK);
}

#[test]
fn set_owner_acks_and_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.ok(req::SET_OWNER, &[], &[]);
    h.fe.refused(req::SET_OWNER, &u64_payload(0), &[]);
    let e = eventfd();
    h.fe.refused(req::SET_OWNER, &[], &[e.as_fd()]);
}

#[test]
fn reset_owner_stops_rings_and_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let _ring = Ring::start(&h, 0, 0, 0);
    assert!(h.status().queues[0].started);
    h.fe.ok(req::RESET_OWNER, &[], &[]);
    assert!(!h.status().queues[0].started, "RESET_OWNER stops the rings");
    assert_eq!(h.device.stops.load(std::sync::atomic::Ordering::SeqCst), 1);
    let e = eventfd();
    h.fe.refused(req::RESET_OWNER, &[], &[e.as_fd()]);
}

#[test]
fn get_queue_num_reply_is_exact() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::MQ);
    let m = h.fe.call(req::GET_QUEUE_NUM, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), NUM_QUEUES as u64);
}

#[test]
fn get_queue_num_without_mq_closes_the_connection() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.send(req::GET_QUEUE_NUM, &[], &[]);
    h.expect_protocol_error();
}

#[test]
fn get_queue_num_with_a_payload_closes_the_connection() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::MQ);
    h.fe.send(req::GET_QUEUE_NUM, &u64_payload(0), &[]);
    h.expect_protocol_error();
}

#[test]
fn set_and_get_status() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK | proto::STATUS);
    let m = h.fe.call(req::GET_STATUS, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), 0);
    h.fe.ok(req::SET_STATUS, &u64_payload(0x0f), &[]);
    let m = h.fe.call(req::GET_STATUS, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), 0x0f);
    // Out of range and wrong size are refused; the status stays.
    h.fe.refused(req::SET_STATUS, &u64_payload(0x100), &[]);
    h.fe.refused(req::SET_STATUS, &[0x0f], &[]);
    let m = h.fe.call(req::GET_STATUS, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), 0x0f);
}

#[test]
fn set_status_without_the_feature_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.refused(req::SET_STATUS, &u64_payload(1), &[]);
}

#[test]
fn get_status_without_the_feature_closes_the_connection() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.send(req::GET_STATUS, &[], &[]);
    h.expect_protocol_error();
}

#[test]
fn reset_device_forgets_the_session_state() {
    let h = Harness::new();
    h.negotiate_all();
    let _ring = Ring::start(&h, 1, 0, 0);
    h.fe.ok(req::SET_STATUS, &u64_payload(0x0f), &[]);
    let resets = h.device.resets.load(std::sync::atomic::Ordering::SeqCst);
    h.fe.ok(req::RESET_DEVICE, &[], &[]);
    let st = h.status();
    assert_eq!(st.acked_features, 0);
    assert!(!st.queues[1].started);
    assert_eq!(
        h.device.resets.load(std::sync::atomic::Ordering::SeqCst),
        resets + 1
    );
    let m = h.fe.call(req::GET_STATUS, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), 0);
    // Protocol features survive a device reset (REPLY_ACK still works).
    h.fe.refused(req::RESET_DEVICE, &u64_payload(0), &[]);
}

#[test]
fn reset_device_without_the_feature_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.refused(req::RESET_DEVICE, &[], &[]);
}

#[test]
fn disconnect_resets_the_device_and_the_session() {
    let h = Harness::new();
    h.negotiate_all();
    let _ring = Ring::start(&h, 0, 0, 0);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
    let st = h.status();
    assert_eq!(st.acked_features, 0);
    assert_eq!(st.acked_protocol_features, 0);
    assert_eq!(st.memory_regions, 0);
    assert!(st.queues.iter().all(|q| !q.started));
    assert!(h.device.resets.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}
