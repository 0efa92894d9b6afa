//! The memory table: SET_MEM_TABLE, GET_MAX_MEM_SLOTS, ADD_MEM_REG and REM_MEM_REG.

mod common;

use std::os::fd::AsFd;

use common::*;
use vu_core::ConnectionEnd;

fn region(gpa: u64, size: u64, uva: u64) -> Region {
    Region {
        gpa,
        size,
        uva,
        offset: 0,
    }
}

#[test]
fn set_mem_table_exact_and_padded() {
    let h = Harness::new();
    h.negotiate_all();
    let a = memfd(0x10000);
    h.fe.ok(
        req::SET_MEM_TABLE,
        &mem_table(&[region(0, 0x10000, 0x1000_0000)], false),
        &[a.as_fd()],
    );
    assert_eq!(h.status().memory_regions, 1);
    // QEMU sends room for 8 regions whatever the count.
    let b = memfd(0x2000);
    h.fe.ok(
        req::SET_MEM_TABLE,
        &mem_table(
            &[
                region(0, 0x10000, 0x1000_0000),
                region(0x100000, 0x2000, 0x2000_0000),
            ],
            true,
        ),
        &[a.as_fd(), b.as_fd()],
    );
    assert_eq!(h.status().memory_regions, 2);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn set_mem_table_malformed_is_refused_and_keeps_the_old_table() {
    let h = Harness::new();
    h.negotiate_all();
    let a = memfd(0x10000);
    let b = memfd(0x10000);
    let r = region(0, 0x10000, 0x1000_0000);
    h.fe.ok(req::SET_MEM_TABLE, &mem_table(&[r], false), &[a.as_fd()]);
    // Fewer fds than regions, more fds than regions.
    h.fe.refused(req::SET_MEM_TABLE, &mem_table(&[r], false), &[]);
    h.fe.refused(
        req::SET_MEM_TABLE,
        &mem_table(&[r], false),
        &[a.as_fd(), b.as_fd()],
    );
    // Zero regions; more than 8 regions.
    h.fe.refused(req::SET_MEM_TABLE, &mem_table(&[], false), &[]);
    let nine: Vec<Region> = (0..9)
        .map(|i| region(i * 0x10000, 0x1000, 0x1000_0000 + i * 0x10000))
        .collect();
    h.fe.refused(req::SET_MEM_TABLE, &mem_table(&nine, false), &[a.as_fd()]);
    // Payload neither n regions nor 8: one byte short, one byte long, header only.
    let mut p = mem_table(&[r], false);
    p.pop();
    h.fe.refused(req::SET_MEM_TABLE, &p, &[a.as_fd()]);
    let mut p = mem_table(&[r], false);
    p.push(0);
    h.fe.refused(req::SET_MEM_TABLE, &p, &[a.as_fd()]);
    h.fe.refused(req::SET_MEM_TABLE, &[0u8; 4], &[a.as_fd()]);
    // Region larger than its file; zero-sized; overflowing; unaligned offset; overlapping.
    h.fe.refused(
        req::SET_MEM_TABLE,
        &mem_table(&[region(0, 0x20000, 0x1000_0000)], false),
        &[a.as_fd()],
    );
    h.fe.refused(
        req::SET_MEM_TABLE,
        &mem_table(&[region(0, 0, 0x1000_0000)], false),
        &[a.as_fd()],
    );
    h.fe.refused(
        req::SET_MEM_TABLE,
        &mem_table(&[region(u64::MAX - 0xfff, 0x10000, 0)], false),
        &[a.as_fd()],
    );
    h.fe.refused(
        req::SET_MEM_TABLE,
        &mem_table(
            &[Region {
                offset: 12,
                ..region(0, 0x1000, 0x1000_0000)
            }],
            false,
        ),
        &[a.as_fd()],
    );
    h.fe.refused(
        req::SET_MEM_TABLE,
        &mem_table(
            &[
                region(0, 0x10000, 0x1000_0000),
                region(0x8000, 0x1000, 0x3000_0000),
            ],
            false,
        ),
        &[a.as_fd(), b.as_fd()],
    );
    // An fd that cannot be mapped.
    let e = eventfd();
    h.fe.refused(
        req::SET_MEM_TABLE,
        &mem_table(&[region(0, 0x1000, 0x1000_0000)], false),
        &[e.as_fd()],
    );
    assert_eq!(h.status().memory_regions, 1, "the old table stays");
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn get_max_mem_slots_reply_is_exact() {
    let h = Harness::new();
    h.negotiate_all();
    let m = h.fe.call(req::GET_MAX_MEM_SLOTS, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), 509);
}

#[test]
fn get_max_mem_slots_without_the_feature_closes_the_connection() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.send(req::GET_MAX_MEM_SLOTS, &[], &[]);
    h.expect_protocol_error();
}

#[test]
fn get_max_mem_slots_with_a_payload_closes_the_connection() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.send(req::GET_MAX_MEM_SLOTS, &u64_payload(0), &[]);
    h.expect_protocol_error();
}

#[test]
fn add_and_remove_regions() {
    let h = Harness::new();
    h.negotiate_all();
    let a = memfd(0x10000);
    let b = memfd(0x1000);
    let ra = region(0, 0x10000, 0x1000_0000);
    let rb = region(0x100000, 0x1000, 0x2000_0000);
    h.fe.ok(req::ADD_MEM_REG, &single_region(&ra), &[a.as_fd()]);
    h.fe.ok(req::ADD_MEM_REG, &single_region(&rb), &[b.as_fd()]);
    assert_eq!(h.status().memory_regions, 2);
    // REM_MEM_REG takes no fd, or one (ignored) for compatibility.
    h.fe.ok(req::REM_MEM_REG, &single_region(&rb), &[]);
    h.fe.ok(req::REM_MEM_REG, &single_region(&ra), &[a.as_fd()]);
    assert_eq!(h.status().memory_regions, 0);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn add_mem_reg_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let a = memfd(0x10000);
    let b = memfd(0x10000);
    let ra = region(0, 0x10000, 0x1000_0000);
    h.fe.refused(req::ADD_MEM_REG, &single_region(&ra), &[]);
    h.fe.refused(
        req::ADD_MEM_REG,
        &single_region(&ra),
        &[a.as_fd(), b.as_fd()],
    );
    h.fe.refused(req::ADD_MEM_REG, &ra.bytes(), &[a.as_fd()]);
    h.fe.refused(
        req::ADD_MEM_REG,
        &single_region(&region(0, 0x20000, 0x1000_0000)),
        &[a.as_fd()],
    );
    h.fe.ok(req::ADD_MEM_REG, &single_region(&ra), &[a.as_fd()]);
    // Overlaps in guest physical space, then in user space.
    h.fe.refused(
        req::ADD_MEM_REG,
        &single_region(&region(0x8000, 0x1000, 0x5000_0000)),
        &[b.as_fd()],
    );
    h.fe.refused(
        req::ADD_MEM_REG,
        &single_region(&region(0x100000, 0x1000, 0x1000_8000)),
        &[b.as_fd()],
    );
    assert_eq!(h.status().memory_regions, 1);
}

#[test]
fn add_mem_reg_without_the_feature_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    let a = memfd(0x1000);
    h.fe.refused(
        req::ADD_MEM_REG,
        &single_region(&region(0, 0x1000, 0x1000_0000)),
        &[a.as_fd()],
    );
}

#[test]
fn rem_mem_reg_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let a = memfd(0x10000);
    let ra = region(0, 0x10000, 0x1000_0000);
    h.fe.ok(req::ADD_MEM_REG, &single_region(&ra), &[a.as_fd()]);
    // No such region (size differs), two fds, short payload.
    h.fe.refused(
        req::REM_MEM_REG,
        &single_region(&region(0, 0x1000, 0x1000_0000)),
        &[],
    );
    let e1 = eventfd();
    let e2 = eventfd();
    h.fe.refused(
        req::REM_MEM_REG,
        &single_region(&ra),
        &[e1.as_fd(), e2.as_fd()],
    );
    h.fe.refused(req::REM_MEM_REG, &ra.bytes(), &[]);
    assert_eq!(h.status().memory_regions, 1);
}

#[test]
fn rem_mem_reg_without_the_feature_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    h.fe.refused(
        req::REM_MEM_REG,
        &single_region(&region(0, 0x1000, 0x1000_0000)),
        &[],
    );
}
