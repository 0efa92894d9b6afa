//! Conformance: the memory table. SET_MEM_TABLE with several regions, ADD_MEM_REG and
//! REM_MEM_REG (CONFIGURE_MEM_SLOTS), I/O through regions added at run time, refusals of
//! overlapping, unknown and oversized regions, and mmap offsets.

use anyhow::{ensure, Context, Result};
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vu_tests::frontend::{
    echo_requests, negotiate, vh, Buf, DriverQueue, Options, TestGuest, TestServer, TIMEOUT,
};
use vu_tests::test_device::expected_response;

#[test]
fn two_regions_in_set_mem_table() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    ensure!(server.status().memory_regions == 2);
    // Buffers in the second region.
    let dq = &mut s.queues[0];
    let (r1, _) = guest.region_range(1);
    guest.write(r1 + 0x4000, b"second region")?;
    let head = dq.add(&[Buf::r(r1 + 0x4000, 13), Buf::w(r1 + 0x5000, 13)])?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(
        used[0].id == head as u32 && used[0].data == expected_response(0, b"second region", 13)
    );
    Ok(())
}

#[test]
fn rings_and_buffers_in_an_added_region() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut fe = server.connect()?;
    negotiate(&mut fe, &Options::event_idx())?;
    vh(fe.set_mem_table(&guest.regions_info(&[0])), "SET_MEM_TABLE")?;
    ensure!(server.status().memory_regions == 1);
    let mut q0 = DriverQueue::new(&guest, 0, 16, 0)?;
    q0.set_event_idx(true)?;
    q0.setup(&mut fe, true)?;
    ensure!(q0.run_echo(&echo_requests(10, 1), 4, TIMEOUT)?.len() == 10);

    // Region 2 arrives; queue 1 lives entirely in it (rings and data).
    vh(fe.add_mem_region(&guest.region_info(2)), "ADD_MEM_REG")?;
    ensure!(server.status().memory_regions == 2);
    let mut q1 = DriverQueue::new(&guest, 1, 16, 2)?;
    q1.set_event_idx(true)?;
    q1.setup(&mut fe, true)?;
    ensure!(q1.run_echo(&echo_requests(50, 2), 8, TIMEOUT)?.len() == 50);
    // Queue 0 can use buffers in the new region too.
    let (r2, _) = guest.region_range(2);
    let at = r2 + 0x8_0000;
    guest.write(at, b"via region 2")?;
    let head = q0.add(&[Buf::r(at, 12), Buf::w(at + 0x100, 12)])?;
    q0.kick()?;
    let used = q0.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32 && used[0].data == expected_response(0, b"via region 2", 12));

    // Stop queue 1, then remove region 2.
    vh(fe.get_vring_base(1), "GET_VRING_BASE")?;
    vh(fe.remove_mem_region(&guest.region_info(2)), "REM_MEM_REG")?;
    ensure!(server.status().memory_regions == 1);
    // Queue 0 still works...
    ensure!(q0.run_echo(&echo_requests(10, 3), 4, TIMEOUT)?.len() == 10);
    // ...but buffers in the removed region are no longer guest memory: the chain is
    // returned with length 0 and the error eventfd fires.
    let head = q0.add(&[Buf::r(at, 12), Buf::w(at + 0x100, 12)])?;
    q0.kick()?;
    let used = q0.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32 && used[0].len == 0, "{used:?}");
    ensure!(q0.wait_err(TIMEOUT)?, "no error notification");
    ensure!(q0.run_echo(&echo_requests(3, 4), 2, TIMEOUT)?.len() == 3);

    // Removing it again, or a region that never existed, fails.
    ensure!(
        fe.remove_mem_region(&guest.region_info(2)).is_err(),
        "removed a region twice"
    );
    let mut unknown = guest.region_info(2);
    unknown.guest_phys_addr = 0x2000_0000;
    ensure!(
        fe.remove_mem_region(&unknown).is_err(),
        "removed an unknown region"
    );
    // Same addresses, different size: not the same region.
    let mut resized = guest.region_info(0);
    resized.memory_size /= 2;
    ensure!(
        fe.remove_mem_region(&resized).is_err(),
        "removed a resized region"
    );
    ensure!(server.status().memory_regions == 1);
    Ok(())
}

#[test]
fn overlapping_regions_are_refused() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let fe = &mut s.fe;
    let base = guest.region_info(2);
    // Guest physical range overlapping region 0.
    let gpa_overlap = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0x8_0000,
        ..base
    };
    ensure!(
        fe.add_mem_region(&gpa_overlap).is_err(),
        "guest-physical overlap accepted"
    );
    // User address range overlapping region 1's mapping.
    let uva_overlap = VhostUserMemoryRegionInfo {
        userspace_addr: guest.region_info(1).userspace_addr + 0x1000,
        ..base
    };
    ensure!(
        fe.add_mem_region(&uva_overlap).is_err(),
        "user-address overlap accepted"
    );
    // Two overlapping regions in one SET_MEM_TABLE: refused, old table kept.
    let dup = [guest.region_info(0), guest.region_info(0)];
    ensure!(
        fe.set_mem_table(&dup).is_err(),
        "SET_MEM_TABLE with overlap accepted"
    );
    ensure!(server.status().memory_regions == 2);
    ensure!(
        s.queues[0]
            .run_echo(&echo_requests(10, 1), 4, TIMEOUT)?
            .len()
            == 10
    );
    // A region larger than its file.
    let too_big = VhostUserMemoryRegionInfo {
        memory_size: base.memory_size * 2,
        ..base
    };
    ensure!(
        fe.add_mem_region(&too_big).is_err(),
        "region larger than its file accepted"
    );
    // A region whose mmap offset is not page aligned.
    let unaligned = VhostUserMemoryRegionInfo {
        mmap_offset: 100,
        memory_size: 0x1000,
        ..base
    };
    ensure!(
        fe.add_mem_region(&unaligned).is_err(),
        "unaligned mmap offset accepted"
    );
    ensure!(server.status().memory_regions == 2);
    // The correct region is still accepted afterwards.
    vh(fe.add_mem_region(&base), "ADD_MEM_REG")?;
    ensure!(server.status().memory_regions == 3);
    ensure!(
        s.queues[1]
            .run_echo(&echo_requests(10, 2), 4, TIMEOUT)?
            .len()
            == 10
    );
    Ok(())
}

#[test]
fn set_mem_table_while_rings_run() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::event_idx(), 16)?;
    ensure!(
        s.queues[0]
            .run_echo(&echo_requests(10, 1), 4, TIMEOUT)?
            .len()
            == 10
    );
    // Memory hot-plug: a new table with one more region; the rings keep their addresses.
    vh(
        s.fe.set_mem_table(&guest.regions_info(&[0, 1, 2])),
        "SET_MEM_TABLE",
    )?;
    ensure!(server.status().memory_regions == 3);
    let (r2, _) = guest.region_range(2);
    guest.write(r2 + 0x100, b"hot-plugged")?;
    let dq = &mut s.queues[0];
    let head = dq.add(&[Buf::r(r2 + 0x100, 11), Buf::w(r2 + 0x200, 11)])?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32 && used[0].data == expected_response(0, b"hot-plugged", 11));
    // And back.
    vh(
        s.fe.set_mem_table(&guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    for dq in &mut s.queues {
        ensure!(dq.run_echo(&echo_requests(20, 2), 4, TIMEOUT)?.len() == 20);
    }
    Ok(())
}

#[test]
fn region_with_an_mmap_offset() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    // Guest physical 0x2000_0000.. is the second half of region 2's file.
    let r2 = guest.region_info(2);
    let half = r2.memory_size / 2;
    let alias = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0x2000_0000,
        memory_size: half,
        userspace_addr: r2.userspace_addr + half,
        mmap_offset: half,
        mmap_handle: r2.mmap_handle,
    };
    vh(s.fe.add_mem_region(&alias), "ADD_MEM_REG with offset")?;
    // The driver writes through region 2's own guest addresses.
    guest.write(r2.guest_phys_addr + half + 0x40, b"offset!")?;
    let dq = &mut s.queues[0];
    let head = dq.add(&[Buf::r(0x2000_0040, 7), Buf::w(0x2000_1000, 7)])?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32 && used[0].len == 7, "{used:?}");
    ensure!(
        guest.read(r2.guest_phys_addr + half + 0x1000, 7)? == expected_response(0, b"offset!", 7)
    );
    Ok(())
}

#[test]
fn many_regions_beyond_the_set_mem_table_limit() -> Result<()> {
    let guest = TestGuest::standard()?;
    let server = TestServer::start_default()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let slots = vh(s.fe.get_max_mem_slots(), "GET_MAX_MEM_SLOTS")?;
    let n = 24.min(slots as usize - 2);
    let mut extra = Vec::new();
    for i in 0..n {
        let small = TestGuest::new(&[(0x4000_0000 + i as u64 * 0x10_0000, 0x1_0000)])?;
        extra.push(small);
    }
    for g in &extra {
        vh(s.fe.add_mem_region(&g.region_info(0)), "ADD_MEM_REG").context("adding")?;
    }
    ensure!(server.status().memory_regions == 2 + n);
    // A buffer in the last small region.
    let last = extra.last().context("no regions")?;
    let (gpa, _) = last.region_range(0);
    last.write(gpa + 8, b"far away")?;
    let dq = &mut s.queues[1];
    let head = dq.add(&[Buf::r(gpa + 8, 8), Buf::w(gpa + 0x100, 8)])?;
    dq.kick()?;
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used[0].id == head as u32 && used[0].len == 8, "{used:?}");
    ensure!(last.read(gpa + 0x100, 8)? == expected_response(1, b"far away", 8));
    for g in &extra {
        vh(s.fe.remove_mem_region(&g.region_info(0)), "REM_MEM_REG")?;
    }
    ensure!(server.status().memory_regions == 2);
    drop(extra);
    ensure!(
        s.queues[1]
            .run_echo(&echo_requests(5, 1), 2, TIMEOUT)?
            .len()
            == 5
    );
    Ok(())
}
