//! Batches of virtio-blk requests into the block device's queue handler (both engines, a
//! read-only disk, io_uring with offloading), through vu-core's queue runtime on this thread:
//! never a panic; every request completed exactly once with a used length within its
//! writable bytes; a well-formed request gets the status and length the virtio spec gives it
//! (IN/OUT range and alignment checks, FLUSH, GET_ID, unsupported types, a read-only disk),
//! and a read or write no other request of the batch overlaps moves exactly its bytes.
//!
//! The devices (each on a memfd image), their queue handlers (an io_uring each) and guest
//! memory are made once per process; each input gets a fresh ring runtime (`QueueIo`) over
//! zeroed rings and an emptied image.

#![no_main]

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nix::fcntl::{fallocate, FallocateFlags};
use virtio_bindings::virtio_blk::*;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::{GuestMem, Progress, QueueHandler, QueueIo, VhostUserDevice};
use vu_core_fuzz::*;
use vu_devices::block::{BlockConfig, BlockDevice, Engine};

const IMAGE_SIZE: u64 = 512 << 10;
const CAPACITY: u64 = IMAGE_SIZE / 512;
const SERIAL: &str = "fuzz-serial";
const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// virtio_blk_config.wce.
const WRITEBACK_OFFSET: usize = 32;

/// One device with its queue handler and image.
struct Dev {
    device: Arc<BlockDevice>,
    queue: Box<dyn QueueHandler>,
    image: File,
    read_only: bool,
    /// The last batch had a request that may write the image.
    dirty: bool,
}

fn memfd() -> File {
    let fd = nix::sys::memfd::memfd_create("fuzz-image", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(IMAGE_SIZE).expect("size image");
    f
}

fn device(variant: BlockVariant) -> Dev {
    let image = memfd();
    let (engine, read_only, cpus) = match variant {
        BlockVariant::Sync => (Engine::Sync, false, 0),
        BlockVariant::ReadOnly => (Engine::Sync, true, 0),
        BlockVariant::Uring => (Engine::IoUring, false, 0),
        BlockVariant::UringOffload => (Engine::IoUring, false, 4),
    };
    let cfg = |engine| BlockConfig {
        file: image.try_clone().expect("dup image"),
        read_only,
        direct: false,
        num_queues: 1,
        queue_size: BLOCK_QUEUE_SIZE,
        serial: Some(SERIAL.into()),
        logical_block_size: 512,
        engine,
        writeback: true,
        cpus,
    };
    let device = BlockDevice::new(cfg(engine)).unwrap_or_else(|e| {
        eprintln!("{variant:?}: {e}; the synchronous engine serves it instead");
        BlockDevice::new(cfg(Engine::Sync)).expect("block device")
    });
    let queue = device.start_queue(0).expect("queue handler");
    Dev {
        device,
        queue,
        image,
        read_only,
        dirty: false,
    }
}

/// Everything made once per process.
struct State {
    mem: Arc<GuestMem>,
    log: Arc<DirtyLog>,
    devs: Vec<Dev>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        mem: Arc::new(
            GuestMemoryMmap::<LogBitmap>::from_ranges(
                &BLOCK_REGIONS.map(|(a, l)| (GuestAddress(a), l)),
            )
            .expect("guest memory"),
        ),
        log: DirtyLog::new(),
        devs: [
            BlockVariant::Sync,
            BlockVariant::ReadOnly,
            BlockVariant::Uring,
            BlockVariant::UringOffload,
        ]
        .map(device)
        .into(),
    });
}

/// The driver's features and cache mode for this input, on a device back in its initial
/// state.
fn configure(dev: &Dev, input: &BlockInput) {
    let d = &dev.device;
    d.reset();
    let mut features = 1u64 << 32 | 1 << VIRTIO_BLK_F_CONFIG_WCE;
    if input.flush {
        features |= 1 << VIRTIO_BLK_F_FLUSH;
    }
    d.set_features(features).expect("features");
    d.write_config(WRITEBACK_OFFSET, &[input.writeback as u8])
        .expect("cache mode");
}

/// Runs the batch as a worker would, to the end.
fn run_queue(dev: &mut Dev, q: &mut QueueIo) {
    for _ in 0..8 {
        let p = dev.queue.process(q);
        dev.queue.drain(q);
        if p == Progress::Drained {
            break;
        }
    }
    q.flush();
    assert_eq!(
        dev.queue.in_flight(),
        0,
        "requests left in flight after drain"
    );
}

fn image_bytes(image: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    image.read_exact_at(&mut v, offset).expect("read image");
    v
}

/// The byte range a request may write on the image (a superset), if it writes at all.
fn write_range(r: &BlockRequest, p: &Placed) -> Option<(u64, u64)> {
    match r.ty {
        VIRTIO_BLK_T_OUT => {
            let start = r.sector.saturating_mul(512);
            Some((
                start,
                start.saturating_add(u64::from(p.readable + p.writable)),
            ))
        }
        // Their ranges are in their payload: anywhere.
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => Some((0, u64::MAX)),
        _ => None,
    }
}

/// Whether no other request of the batch may write where request `i` reads or writes.
fn alone(batch: &[(BlockRequest, Placed)], i: usize, start: u64, end: u64) -> bool {
    batch
        .iter()
        .enumerate()
        .all(|(j, (r, p))| j == i || write_range(r, p).is_none_or(|(s, e)| e <= start || end <= s))
}

/// What a well-formed request must get: (status, used length); `None` for the status of a
/// DISCARD or WRITE_ZEROES, whose segments decide it.
fn expected(r: &BlockRequest, p: &Placed, read_only: bool) -> (Option<u8>, u32) {
    let data_ok = |len: u32| {
        len.is_multiple_of(512)
            && r.sector
                .checked_mul(512)
                .and_then(|o| o.checked_add(u64::from(len)))
                .is_some_and(|end| end <= CAPACITY * 512)
    };
    let w = p.writable;
    match r.ty {
        VIRTIO_BLK_T_IN if data_ok(w - 1) => (Some(S_OK), w),
        VIRTIO_BLK_T_OUT if !read_only && data_ok(p.readable - 16) => (Some(S_OK), 1),
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => (Some(S_IOERR), 1),
        VIRTIO_BLK_T_FLUSH => (Some(S_OK), 1),
        VIRTIO_BLK_T_GET_ID => (Some(S_OK), (w - 1).min(20) + 1),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if read_only => (Some(S_IOERR), 1),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => (None, 1),
        _ => (Some(S_UNSUPP), 1),
    }
}

/// Checks one completed request of a well-formed layout.
fn check_proper(dev: &Dev, batch: &[(BlockRequest, Placed)], i: usize, used: u32, mem: HostMem) {
    let (r, p) = &batch[i];
    if p.writable == 0 {
        assert_eq!(used, 0, "no status byte: used length 0");
        return;
    }
    let status = {
        let mut b = [0u8; 1];
        mem.read(p.status_addr().expect("a writable byte"), &mut b);
        b[0]
    };
    let (want, want_used) = expected(r, p, dev.read_only);
    match want {
        Some(s) => assert_eq!((status, used), (s, want_used), "{r:?}: status, used length"),
        None => {
            assert!(
                matches!(status, S_OK | S_IOERR | S_UNSUPP),
                "{r:?}: status {status:#x}"
            );
            assert_eq!(used, want_used, "{r:?}: used length");
        }
    }
    if status != S_OK {
        return;
    }
    let offset = r.sector.wrapping_mul(512);
    match r.ty {
        VIRTIO_BLK_T_IN if alone(batch, i, offset, offset + u64::from(p.writable - 1)) => {
            let got = p.written(mem);
            assert!(
                got == image_bytes(&dev.image, offset, got.len()),
                "{r:?}: data read"
            );
        }
        VIRTIO_BLK_T_OUT if alone(batch, i, offset, offset + p.sent.len() as u64) => {
            let on_disk = image_bytes(&dev.image, offset, p.sent.len());
            assert!(on_disk == p.sent, "{r:?}: data written");
        }
        VIRTIO_BLK_T_GET_ID => {
            let mut id = [0u8; 20];
            id[..SERIAL.len()].copy_from_slice(SERIAL.as_bytes());
            let got = p.written(mem);
            let n = got.len().min(20);
            assert_eq!(&got[..n], &id[..n], "GET_ID bytes");
        }
        _ => {}
    }
}

fn run(s: &mut State, data: &[u8]) {
    let input = parse_block(data);
    let mem = s.mem.clone();
    let host = HostMem::new(&mem);
    clear_rings(host);
    let dev = &mut s.devs[input.variant as usize];
    if std::mem::take(&mut dev.dirty) {
        // Zeroes: the pages go, holes read as zeros.
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(&dev.image, punch, 0, IMAGE_SIZE as i64).expect("empty image");
    }
    configure(dev, &input);

    let mut ring = BlockRing::new(host, input.indirect, input.straddle);
    let mut batch = Vec::new();
    for r in &input.requests {
        let Some(p) = ring.place(r) else { break };
        batch.push((r.clone(), p));
    }
    ring.publish();
    dev.dirty = batch.iter().any(|(r, p)| write_range(r, p).is_some());

    let setup = QueueSetup {
        index: 0,
        size: BLOCK_QUEUE_SIZE,
        desc: BLOCK_DESC,
        avail: BLOCK_AVAIL,
        used: BLOCK_USED,
        base: 0,
        event_idx: input.event_idx,
        indirect: input.indirect,
    };
    let atomic = GuestMemoryAtomic::from(mem.clone());
    let shared = Arc::new(VringShared::default());
    let mut q = QueueIo::new(&setup, atomic, None, s.log.clone(), shared).expect("queue");
    run_queue(dev, &mut q);
    drop(q);

    let (idx, used) = used_ring(host, batch.len() as u16);
    assert_eq!(idx as usize, batch.len(), "every request is completed");
    let mut seen = vec![false; batch.len()];
    for &(id, len) in &used {
        let i = batch
            .iter()
            .position(|(_, p)| u32::from(p.head) == id)
            .unwrap_or_else(|| panic!("used id {id} is no request's head"));
        assert!(!seen[i], "request {i} completed twice");
        seen[i] = true;
        assert!(
            len <= batch[i].1.writable,
            "used length beyond the writable bytes"
        );
        if batch[i].1.proper {
            check_proper(dev, &batch, i, len, host);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|s| run(&mut s.borrow_mut(), data));
});
