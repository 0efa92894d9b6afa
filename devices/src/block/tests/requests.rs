//! Every request type, and hostile ones, executed synchronously against a temporary image.

use virtio_bindings::virtio_blk::*;

use super::super::request::{S_IOERR, S_OK, S_UNSUPP};
use super::*;

const SIZE: u64 = 1 << 20;
const SECTORS: u64 = SIZE / 512;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn seg(sector: u64, num: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&num.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn write_then_read_round_trips() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    let data = pattern(4096, 7);
    let w = run(&d, &mut g, VIRTIO_BLK_T_OUT, 8, &data, 0);
    assert_eq!((w.status, w.used), (S_OK, 1));
    assert_eq!(file_bytes(&d, 8 * 512, 4096), data);
    let r = run(&d, &mut g, VIRTIO_BLK_T_IN, 8, &[], 4096);
    assert_eq!((r.status, r.used), (S_OK, 4097));
    assert_eq!(r.data, data);
}

#[test]
fn data_spread_over_many_descriptors() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    let data = pattern(3 * 512, 1);
    // Header and first data bytes share a descriptor; the rest is split unevenly.
    let mut first = header(VIRTIO_BLK_T_OUT, 2);
    first.extend_from_slice(&data[..100]);
    let bufs = [
        Buf::Out(first),
        Buf::Out(data[100..700].to_vec()),
        Buf::Out(data[700..].to_vec()),
        Buf::In(1),
    ];
    assert_eq!(run_bufs(&d, &mut g, &bufs).status, S_OK);
    assert_eq!(file_bytes(&d, 1024, data.len()), data);
    // Read back into two writable buffers, the status sharing the second.
    let bufs = [
        Buf::Out(header(VIRTIO_BLK_T_IN, 2)),
        Buf::In(1000),
        Buf::In(537),
    ];
    let (chain, addrs) = g.chain(&bufs);
    let action = classify(&d, &chain);
    let used = execute_sync(&d, &chain, action, &mut IoVecs::default());
    assert_eq!(used, 1537);
    let mut back = g.read(addrs[1], 1000);
    back.extend(g.read(addrs[2], 537));
    assert_eq!(back[1536], S_OK);
    assert_eq!(&back[..1536], &data[..]);
}

#[test]
fn flush_and_get_id() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    let f = run(&d, &mut g, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!((f.status, f.used), (S_OK, 1));
    let id = run(&d, &mut g, VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!((id.status, id.used), (S_OK, 21));
    assert_eq!(&id.data[..11], b"test-serial");
    assert!(id.data[11..].iter().all(|&b| b == 0));
    // Truncated to the room the driver gave.
    let id = run(&d, &mut g, VIRTIO_BLK_T_GET_ID, 0, &[], 4);
    assert_eq!((id.status, id.used), (S_OK, 5));
    assert_eq!(&id.data, b"test");
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    put_file(&d, 0, &pattern(64 * 1024, 3));
    // Discard sectors 8..16 (punches a hole: zeroes on a regular file).
    let r = run(&d, &mut g, VIRTIO_BLK_T_DISCARD, 0, &seg(8, 8, 0), 0);
    assert_eq!(r.status, S_OK);
    // Write zeroes, with and without UNMAP, two segments in one request.
    let mut segs = seg(32, 8, 0);
    segs.extend(seg(64, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    let r = run(&d, &mut g, VIRTIO_BLK_T_WRITE_ZEROES, 0, &segs, 0);
    assert_eq!((r.status, r.used), (S_OK, 1));
    let all = file_bytes(&d, 0, 64 * 1024);
    let orig = pattern(64 * 1024, 3);
    for s in 0..128usize {
        let sector = &all[s * 512..(s + 1) * 512];
        if (32..40).contains(&s) || (64..80).contains(&s) {
            assert!(sector.iter().all(|&b| b == 0), "sector {s} not zeroed");
        } else if !(8..16).contains(&s) {
            assert_eq!(sector, &orig[s * 512..(s + 1) * 512], "sector {s} changed");
        }
    }
    // Read back through the device too.
    let back = run(&d, &mut g, VIRTIO_BLK_T_IN, 32, &[], 4096);
    assert!(back.data.iter().all(|&b| b == 0));
}

#[test]
fn discard_and_write_zeroes_validation() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let cases: &[(u32, Vec<u8>, u8)] = &[
        // DISCARD with UNMAP, unknown flags: UNSUPP.
        (VIRTIO_BLK_T_DISCARD, seg(0, 8, unmap), S_UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, seg(0, 8, 2), S_UNSUPP),
        (VIRTIO_BLK_T_DISCARD, seg(0, 8, 0x8000_0000), S_UNSUPP),
        // Past the end, overflowing, too many sectors at once.
        (VIRTIO_BLK_T_DISCARD, seg(SECTORS - 4, 8, 0), S_IOERR),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            seg(u64::MAX / 256, 8, 0),
            S_IOERR,
        ),
        (VIRTIO_BLK_T_WRITE_ZEROES, seg(0, u32::MAX, 0), S_IOERR),
        // Payload not a whole number of segments, or empty.
        (VIRTIO_BLK_T_DISCARD, seg(0, 8, 0)[..12].to_vec(), S_IOERR),
        // Too many segments.
        (VIRTIO_BLK_T_DISCARD, seg(0, 1, 0).repeat(17), S_UNSUPP),
    ];
    for (ty, payload, want) in cases {
        let r = run(&d, &mut g, *ty, 0, payload, 0);
        assert_eq!(r.status, *want, "type {ty} payload {payload:?}");
    }
    let r = run(&d, &mut g, VIRTIO_BLK_T_DISCARD, 0, &[], 0);
    assert_eq!(r.status, S_IOERR);
    // A failing segment after a valid one: nothing executed.
    put_file(&d, 0, &[0xab; 512]);
    let mut segs = seg(0, 1, 0);
    segs.extend(seg(0, 1, 4));
    let r = run(&d, &mut g, VIRTIO_BLK_T_WRITE_ZEROES, 0, &segs, 0);
    assert_eq!(r.status, S_UNSUPP);
    assert_eq!(file_bytes(&d, 0, 512), vec![0xab; 512]);
    // The last sector is fine.
    let r = run(
        &d,
        &mut g,
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &seg(SECTORS - 1, 1, 0),
        0,
    );
    assert_eq!(r.status, S_OK);
}

#[test]
fn out_of_range_and_bad_lengths_are_ioerr() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    let r = run(&d, &mut g, VIRTIO_BLK_T_IN, SECTORS, &[], 512);
    assert_eq!((r.status, r.used), (S_IOERR, 1));
    assert!(
        r.data.iter().all(|&b| b == 0xee),
        "no data written on error"
    );
    let r = run(&d, &mut g, VIRTIO_BLK_T_IN, SECTORS - 1, &[], 1024);
    assert_eq!(r.status, S_IOERR);
    let r = run(&d, &mut g, VIRTIO_BLK_T_OUT, SECTORS - 1, &[0; 1024], 0);
    assert_eq!(r.status, S_IOERR);
    // sector * 512 overflows.
    let r = run(&d, &mut g, VIRTIO_BLK_T_IN, u64::MAX / 2, &[], 512);
    assert_eq!(r.status, S_IOERR);
    // Lengths that are not whole sectors.
    let r = run(&d, &mut g, VIRTIO_BLK_T_IN, 0, &[], 100);
    assert_eq!(r.status, S_IOERR);
    let r = run(&d, &mut g, VIRTIO_BLK_T_OUT, 0, &[1; 513], 0);
    assert_eq!(r.status, S_IOERR);
    assert_eq!(file_bytes(&d, 0, 513), vec![0; 513]);
    // The last sector itself is fine.
    let r = run(&d, &mut g, VIRTIO_BLK_T_IN, SECTORS - 1, &[], 512);
    assert_eq!((r.status, r.used), (S_OK, 513));
    // A zero-length read is a no-op that succeeds.
    let r = run(&d, &mut g, VIRTIO_BLK_T_IN, 0, &[], 0);
    assert_eq!((r.status, r.used), (S_OK, 1));
    assert_eq!(
        d.counters
            .io_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

#[test]
fn malformed_chains() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    // No writable byte at all: nothing can be reported.
    let (chain, _) = g.chain(&[Buf::Out(header(VIRTIO_BLK_T_IN, 0)), Buf::Out(vec![0; 512])]);
    let action = classify(&d, &chain);
    assert_eq!(execute_sync(&d, &chain, action, &mut IoVecs::default()), 0);
    // Short header: IOERR in the status byte.
    let r = run_bufs(&d, &mut g, &[Buf::Out(vec![0; 8]), Buf::In(1)]);
    assert_eq!((r.status, r.used), (S_IOERR, 1));
    // No readable part at all.
    let r = run_bufs(&d, &mut g, &[Buf::In(513)]);
    assert_eq!((r.status, r.used), (S_IOERR, 1));
    // A header split over two descriptors is fine.
    let h = header(VIRTIO_BLK_T_GET_ID, 0);
    let r = run_bufs(
        &d,
        &mut g,
        &[
            Buf::Out(h[..5].to_vec()),
            Buf::Out(h[5..].to_vec()),
            Buf::In(20),
            Buf::In(1),
        ],
    );
    assert_eq!((r.status, r.used), (S_OK, 21));
}

#[test]
fn unknown_types_are_unsupp() {
    let d = disk(SIZE, |_| {});
    let mut g = Guest::new();
    for ty in [
        2,
        3,
        10,
        VIRTIO_BLK_T_SECURE_ERASE,
        VIRTIO_BLK_T_ZONE_REPORT,
        u32::MAX,
    ] {
        let r = run(&d, &mut g, ty, 0, &[], 512);
        assert_eq!((r.status, r.used), (S_UNSUPP, 1), "type {ty}");
    }
}

#[test]
fn read_only_refuses_writes() {
    let d = disk(SIZE, |p| p.read_only = true);
    let mut g = Guest::new();
    for (ty, payload) in [
        (VIRTIO_BLK_T_OUT, vec![1u8; 512]),
        (VIRTIO_BLK_T_DISCARD, seg(0, 1, 0)),
        (VIRTIO_BLK_T_WRITE_ZEROES, seg(0, 1, 0)),
    ] {
        let r = run(&d, &mut g, ty, 0, &payload, 0);
        assert_eq!(r.status, S_IOERR, "type {ty}");
    }
    assert_eq!(run(&d, &mut g, VIRTIO_BLK_T_IN, 0, &[], 512).status, S_OK);
    assert_eq!(run(&d, &mut g, VIRTIO_BLK_T_FLUSH, 0, &[], 0).status, S_OK);
}

#[test]
fn write_through_makes_each_write_durable() {
    let d = disk(SIZE, |p| p.writeback = false);
    let mut g = Guest::new();
    assert!(d.write_through());
    assert_eq!(
        run(&d, &mut g, VIRTIO_BLK_T_OUT, 0, &[5; 1024], 0).status,
        S_OK
    );
    assert_eq!(
        d.counters
            .durable_writes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    d.set_writeback(true);
    assert_eq!(
        run(&d, &mut g, VIRTIO_BLK_T_OUT, 0, &[6; 1024], 0).status,
        S_OK
    );
    assert_eq!(
        d.counters
            .durable_writes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn misaligned_buffers_bounce_when_direct() {
    // `direct` without O_DIRECT on the fd: exercises the bounce path on any filesystem.
    let d = disk(SIZE, |p| p.direct = true);
    let mut g = Guest::new();
    let data = pattern(2048, 9);
    let bufs = [
        Buf::Out(header(VIRTIO_BLK_T_OUT, 4)),
        Buf::OutAt(data.clone(), 3),
        Buf::In(1),
    ];
    assert_eq!(run_bufs(&d, &mut g, &bufs).status, S_OK);
    assert_eq!(file_bytes(&d, 2048, 2048), data);
    let bufs = [
        Buf::Out(header(VIRTIO_BLK_T_IN, 4)),
        Buf::InAt(1000, 1),
        Buf::InAt(1048, 5),
        Buf::In(1),
    ];
    let r = run_bufs(&d, &mut g, &bufs);
    assert_eq!((r.status, r.used), (S_OK, 2049));
    assert_eq!(r.data, data);
}
