//! Framing and reply rules: NEED_REPLY / REPLY_ACK, exactly one reply for requests with an
//! explicit body, and hostile headers (unknown codes, bad version or flag bits, oversized or
//! truncated payloads, too many fds). None of them may panic the server, and the server
//! thread always returns.

mod common;

use std::os::fd::{AsFd, AsRawFd, RawFd};

use common::*;
use vu_core::ConnectionEnd;

#[test]
fn no_ack_without_reply_ack_negotiated() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, 0);
    // NEED_REPLY set, but REPLY_ACK was not negotiated: the back-end must stay silent,
    // whether the request succeeds or fails.
    h.fe.send_need_reply(req::SET_OWNER, &[], &[]);
    h.fe.send_need_reply(req::SET_FEATURES, &u64_payload(1 << 61), &[]);
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn no_ack_without_need_reply() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.send(req::SET_OWNER, &[], &[]);
    h.fe.send(req::SET_FEATURES, &u64_payload(feat::VERSION_1), &[]);
    // A malformed request without NEED_REPLY is refused silently; the connection stays.
    h.fe.send(req::SET_FEATURES, &u64_payload(1 << 61), &[]);
    h.fe.sync();
    assert_eq!(h.status().acked_features, feat::VERSION_1);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn exactly_one_reply_for_requests_with_an_explicit_body() {
    let h = Harness::new();
    h.negotiate_all();
    // NEED_REPLY on a request with an explicit reply: that reply is the only message.
    for (request, len) in [
        (req::GET_FEATURES, 8),
        (req::GET_PROTOCOL_FEATURES, 8),
        (req::GET_QUEUE_NUM, 8),
        (req::GET_MAX_MEM_SLOTS, 8),
        (req::GET_STATUS, 8),
    ] {
        h.fe.send_need_reply(request, &[], &[]);
        h.fe.recv().assert_reply(request, len);
        h.fe.sync();
    }
    h.fe.send_need_reply(req::GET_CONFIG, &config_msg(0, 4, 0, &[0; 4]), &[]);
    h.fe.recv().assert_reply(req::GET_CONFIG, 16);
    h.fe.sync();
    h.fe.send_need_reply(req::GET_VRING_BASE, &vring_state(1, 0), &[]);
    h.fe.recv().assert_reply(req::GET_VRING_BASE, 8);
    h.fe.sync();
    let log = memfd(4096);
    h.fe.send_need_reply(req::SET_LOG_BASE, &log_description(4096, 0), &[log.as_fd()]);
    h.fe.recv().assert_reply(req::SET_LOG_BASE, 16);
    h.fe.sync();
    h.fe.send_need_reply(req::GET_INFLIGHT_FD, &inflight_description(0, 0, 1, 8), &[]);
    let m = h.fe.recv();
    m.assert_reply(req::GET_INFLIGHT_FD, 24);
    assert_eq!(m.fds.len(), 1);
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn unknown_request_code_is_refused_and_the_connection_survives() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    for code in [0u32, 44, 99, 1000, u32::MAX] {
        h.fe.refused(code, &[], &[]);
        h.fe.send(code, &u64_payload(7), &[]);
        h.fe.sync();
    }
    // A known request the back-end does not implement.
    h.fe.refused(req::SEND_RARP, &[0u8; 8], &[]);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn unknown_request_code_without_reply_ack_is_ignored() {
    let h = Harness::new();
    h.fe.send_need_reply(77, &[], &[]);
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

fn closes_on_header(request: u32, flags: u32, size: u32, body: &[u8]) {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    let mut b = request.to_ne_bytes().to_vec();
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&size.to_ne_bytes());
    b.extend_from_slice(body);
    // The server may close before reading everything; a failed send is fine.
    let _ = h.fe.try_send_raw(&b, &[]);
    h.expect_protocol_error();
}

#[test]
fn bad_version_bits_close_the_connection() {
    for flags in [0, 2, 3, FLAG_NEED_REPLY] {
        closes_on_header(req::GET_FEATURES, flags, 0, &[]);
    }
}

#[test]
fn unknown_flag_bits_close_the_connection() {
    for bit in [4, 5, 8, 31] {
        closes_on_header(req::GET_FEATURES, VERSION | 1 << bit, 0, &[]);
    }
}

#[test]
fn payload_larger_than_4096_closes_the_connection() {
    closes_on_header(req::SET_CONFIG, VERSION, 4097, &[0u8; 4097]);
    // Announced but never sent: the header alone is enough to refuse.
    closes_on_header(req::SET_FEATURES, VERSION, u32::MAX, &[]);
}

#[test]
fn payload_of_exactly_4096_is_framed_and_refused_by_the_handler() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.refused(req::SET_CONFIG, &[0u8; 4096], &[]);
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn truncated_header_and_payload_end_the_connection() {
    let h = Harness::new();
    h.fe.write_all(&Frontend::frame(req::GET_FEATURES, VERSION, &[])[..6]);
    h.fe.shutdown_write();
    assert_eq!(h.wait_end(), ConnectionEnd::ProtocolError);

    let h = Harness::new();
    let b = Frontend::frame(req::SET_FEATURES, VERSION, &u64_payload(0));
    h.fe.write_all(&b[..16]);
    h.fe.shutdown_write();
    assert_eq!(h.wait_end(), ConnectionEnd::ProtocolError);
}

#[test]
fn fragmented_and_coalesced_messages_are_reassembled() {
    let h = Harness::new();
    // One message dribbled out a few bytes at a time...
    let b = Frontend::frame(req::GET_PROTOCOL_FEATURES, VERSION, &[]);
    for chunk in b.chunks(5) {
        h.fe.write_all(chunk);
    }
    let m = h.fe.recv();
    m.assert_reply(req::GET_PROTOCOL_FEATURES, 8);
    // ...and two messages in one write.
    let mut two = Frontend::frame(req::GET_FEATURES, VERSION, &[]);
    two.extend_from_slice(&Frontend::frame(req::GET_PROTOCOL_FEATURES, VERSION, &[]));
    h.fe.write_all(&two);
    h.fe.recv().assert_reply(req::GET_FEATURES, 8);
    h.fe.recv().assert_reply(req::GET_PROTOCOL_FEATURES, 8);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn too_many_fds_close_the_connection() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    let fds: Vec<_> = (0..9).map(|_| eventfd()).collect();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let _ = h.fe.try_send_raw(
        &Frontend::frame(req::SET_OWNER, VERSION | FLAG_NEED_REPLY, &[]),
        &raw,
    );
    h.expect_protocol_error();
}

#[test]
fn fds_on_a_request_that_takes_none_are_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    let fds: Vec<_> = (0..8).map(|_| eventfd()).collect();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    h.fe.refused(req::SET_OWNER, &[], &borrowed);
    h.fe.sync();
}

#[test]
fn shutdown_handle_ends_serve_stream() {
    let h = Harness::new();
    h.fe.sync();
    h.server.shutdown_handle().write(1).expect("shutdown");
    assert_eq!(h.wait_end(), ConnectionEnd::Shutdown);
    h.fe.expect_closed();
}

#[test]
fn garbage_stream_never_panics_the_server() {
    // A deterministic pseudo-random byte stream with valid-looking headers sprinkled in.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..16 {
        let h = Harness::new();
        let mut stream = Vec::new();
        for _ in 0..8 {
            let r = next();
            let code = (r % 45) as u32;
            let len = ((r >> 8) % 48) as usize;
            let flags = if r & (1 << 20) != 0 {
                VERSION | FLAG_NEED_REPLY
            } else {
                VERSION
            };
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            stream.extend_from_slice(&Frontend::frame(code, flags, &payload));
        }
        let _ = h.fe.try_send_raw(&stream, &[]);
        h.fe.shutdown_write();
        // Drain whatever the server answers until it closes.
        while let ReadOutcome::Message(_) = h.fe.read() {}
        let end = h.wait_end();
        assert!(
            matches!(
                end,
                ConnectionEnd::PeerClosed | ConnectionEnd::ProtocolError
            ),
            "{end:?}"
        );
    }
}
