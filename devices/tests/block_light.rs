//! The io_uring engine at light load, through the core's real worker: lone requests and
//! small bursts whose completions no eventfd announces (O_DIRECT reads and writes finished by
//! an interrupt are posted by task work on the queue thread, which collects them before it
//! sleeps), buffered writes the image refuses to try with RWF_NOWAIT (ext4: the first
//! refusal is remembered, and the writes then go to io_uring's workers, whose completions do
//! signal the eventfd), and buffered reads of data that is not cached (RWF_NOWAIT would
//! block: the queue backs off trying). Every request completes with the right data.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::{block_chain, pattern, Frontend};
use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::*;
use vu_core::message::features;
use vu_devices::block::{BlockConfig, BlockDevice, Engine};

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const SIZE: u64 = 8 << 20;
const QSIZE: u16 = 64;

fn setup(direct: bool) -> Option<(Frontend, Arc<BlockDevice>, NamedTempFile)> {
    setup_queues(direct, 1)
}

fn setup_queues(direct: bool, queues: u16) -> Option<(Frontend, Arc<BlockDevice>, NamedTempFile)> {
    // In the temporary directory (not tmpfs, which takes neither O_DIRECT nor RWF_NOWAIT;
    // on this project's machines an ext4 directory).
    let image = NamedTempFile::new_in(std::env::temp_dir()).expect("image");
    image.as_file().set_len(SIZE).expect("size image");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image.path())
        .expect("open image");
    let dev = match BlockDevice::new(BlockConfig {
        file,
        read_only: false,
        direct,
        num_queues: queues,
        queue_size: QSIZE,
        serial: None,
        logical_block_size: 512,
        engine: Engine::IoUring,
        writeback: true,
        cpus: 0,
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    // EVENT_IDX on, as QEMU and Linux negotiate it.
    let fe = Frontend::with_features(dev.clone(), usize::from(queues), QSIZE, |o| {
        o & !features::LOG_ALL
    });
    Some((fe, dev, image))
}

/// Lone 4 KiB writes then lone reads of them, at scattered sectors, then bursts of 1..=16
/// reads with one kick each.
fn lone_requests_and_bursts(direct: bool) {
    let Some((mut fe, dev, image)) = setup(direct) else {
        return;
    };
    let sector = |i: usize| ((i * 37) % 2000) as u64 * 8;
    let n = 150;
    for i in 0..n {
        let d = fe.block(0, VIRTIO_BLK_T_OUT, sector(i), &pattern(4096, i as u8), 0);
        assert_eq!(d.status, S_OK, "write {i}");
    }
    for i in 0..n {
        let d = fe.block(0, VIRTIO_BLK_T_IN, sector(i), &[], 4096);
        assert_eq!((d.status, d.used), (S_OK, 4097), "read {i}");
        assert_eq!(d.data, pattern(4096, i as u8), "read {i}");
    }
    for burst in 1..=16usize {
        let subs: Vec<_> = (0..burst)
            .map(|i| fe.submit(0, &block_chain(VIRTIO_BLK_T_IN, sector(i * 5), &[], 4096)))
            .collect();
        fe.kick(0);
        let done = fe.wait(0, burst);
        for (id, used) in done {
            let i = subs
                .iter()
                .position(|s| u32::from(s.head) == id)
                .expect("a request of the burst");
            let r = fe.collect(&subs[i], used);
            assert_eq!(r.status, S_OK);
            assert_eq!(
                r.data,
                pattern(4096, (i * 5) as u8),
                "burst {burst}, read {i}"
            );
        }
    }
    let st = dev.stats();
    assert_eq!(st.io_errors, 0);
    assert_eq!(st.writes, n as u64);
    // What the device wrote is in the file.
    let mut b = vec![0u8; 4096];
    image
        .as_file()
        .read_exact_at(&mut b, sector(7) * 512)
        .expect("read image");
    assert_eq!(b, pattern(4096, 7));
}

#[test]
fn lone_o_direct_requests_complete_without_an_eventfd() {
    lone_requests_and_bursts(true);
}

#[test]
fn lone_buffered_requests_complete_when_nowait_is_refused_or_would_block() {
    lone_requests_and_bursts(false);
}

#[test]
fn uncached_buffered_reads_complete_through_the_ring() {
    let Some((mut fe, _dev, image)) = setup(false) else {
        return;
    };
    // Data written behind the device's back, then dropped from the page cache where the
    // kernel lets us: RWF_NOWAIT reads of it would block.
    let data = pattern(1 << 20, 9);
    image.as_file().write_all_at(&data, 0).expect("fill");
    image.as_file().sync_all().expect("sync");
    // SAFETY: posix_fadvise only takes an open descriptor and a range.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(image.as_file()),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    for i in 0..64usize {
        let d = fe.block(0, VIRTIO_BLK_T_IN, (i * 32) as u64, &[], 4096);
        assert_eq!(d.status, S_OK, "read {i}");
        let at = i * 32 * 512;
        assert_eq!(d.data, data[at..at + 4096], "read {i}");
    }
}

/// Two queues, one O_DIRECT read in flight on each, for a few thousand rounds: the two
/// workers sleep and wake all the time, and interrupts reach them anywhere. A completion the
/// kernel posts (as task work, at any return to user space) after a worker last looked and
/// before it waits must still wake it (once lost 1 run in 2 of this shape).
#[test]
fn two_queues_of_lone_o_direct_reads_never_lose_a_completion() {
    let Some((mut fe, _dev, _image)) = setup_queues(true, 2) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut rounds = 0u64;
    while std::time::Instant::now() < deadline || rounds < 200 {
        for q in 0..2 {
            fe.submit(
                q,
                &block_chain(VIRTIO_BLK_T_IN, rounds % 1000 * 8, &[], 4096),
            );
            fe.kick(q);
        }
        for q in 0..2 {
            let done = fe.wait(q, 1);
            assert_eq!(done.len(), 1, "queue {q}, round {rounds}");
        }
        rounds += 1;
    }
}
