//! A device may withhold core protocol features: they are not offered, and the requests that
//! need them are refused (net withholds CONFIGURE_MEM_SLOTS: QEMU's multi-queue
//! vhost-user-net sends ADD_MEM_REG once per queue pair, the same regions each time, while
//! SET_MEM_TABLE goes out once).

mod common;

use common::*;

#[test]
fn withheld_protocol_features_are_not_offered_or_served() {
    let mut device = TestDevice::new();
    device.withheld = proto::CONFIGURE_MEM_SLOTS;
    let h = Harness::with_device(device);
    let m = h.fe.call(req::GET_PROTOCOL_FEATURES, &[], &[], 8);
    assert_eq!(
        read_u64(&m.payload),
        proto::OFFERED & !proto::CONFIGURE_MEM_SLOTS
    );
    h.fe.ok(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK),
        &[],
    );
    // Acking it is refused: it was not offered.
    h.fe.refused(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::OFFERED),
        &[],
    );
    // A request that needs it has no way to fail but closing the connection.
    h.fe.send(req::GET_MAX_MEM_SLOTS, &[], &[]);
    h.expect_protocol_error();
}
