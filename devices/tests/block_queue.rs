//! virtio-blk through the core's real handler, queue runtime and worker threads, for both
//! engines: a driver writes split rings in shared guest memory and kicks.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::{block_chain, header, pattern, seg, Buf, Frontend};
use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::*;
use vu_devices::block::{BlockConfig, BlockDevice, Engine};

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const SIZE: u64 = 4 << 20;
const SECTORS: u64 = SIZE / 512;
const QSIZE: u16 = 256;

struct Setup {
    fe: Frontend,
    dev: Arc<BlockDevice>,
    image: NamedTempFile,
}

impl Setup {
    fn new(engine: Engine, queues: u16, tweak: impl FnOnce(&mut BlockConfig)) -> Option<Self> {
        let image = NamedTempFile::new().expect("image");
        image.as_file().set_len(SIZE).expect("size image");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image.path())
            .expect("open image");
        let mut cfg = BlockConfig {
            file,
            read_only: false,
            direct: false,
            num_queues: queues,
            queue_size: QSIZE,
            serial: Some("vu-test-disk".into()),
            logical_block_size: 512,
            engine,
            writeback: true,
            cpus: 0,
        };
        tweak(&mut cfg);
        let qsize = cfg.queue_size;
        let dev = match BlockDevice::new(cfg) {
            Ok(d) => d,
            Err(e) if engine == Engine::IoUring => {
                eprintln!("skipping io_uring test: {e}");
                return None;
            }
            Err(e) => panic!("device: {e}"),
        };
        let fe = Frontend::new(dev.clone(), usize::from(queues), qsize);
        Some(Setup { fe, dev, image })
    }

    fn file(&self) -> File {
        File::open(self.image.path()).expect("open image")
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.file()
            .read_exact_at(&mut v, offset)
            .expect("read image");
        v
    }
}

fn round_trip(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    for (i, len) in [512usize, 4096, 65536, 512 * 7].into_iter().enumerate() {
        let sector = 64 * i as u64;
        let data = pattern(len, i as u8);
        let w = s.fe.block(0, VIRTIO_BLK_T_OUT, sector, &data, 0);
        assert_eq!((w.status, w.used), (S_OK, 1));
        assert_eq!(s.file_bytes(sector * 512, len), data);
        let r = s.fe.block(0, VIRTIO_BLK_T_IN, sector, &[], len as u32);
        assert_eq!((r.status, r.used), (S_OK, len as u32 + 1));
        assert_eq!(r.data, data);
    }
    let st = s.dev.stats();
    assert_eq!((st.reads, st.writes, st.io_errors), (4, 4, 0));
}

fn many_in_flight(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    // 64 writes of 8 KiB made available at once, one kick.
    let n = 64usize;
    let subs: Vec<_> = (0..n)
        .map(|i| {
            let data = pattern(8192, i as u8);
            s.fe.submit(0, &block_chain(VIRTIO_BLK_T_OUT, 16 * i as u64, &data, 0))
        })
        .collect();
    s.fe.kick(0);
    let done = s.fe.wait(0, n);
    let mut heads: Vec<u32> = done.iter().map(|d| d.0).collect();
    heads.sort_unstable();
    let mut want: Vec<u32> = subs.iter().map(|x| u32::from(x.head)).collect();
    want.sort_unstable();
    assert_eq!(heads, want);
    for (sub, (_, used)) in subs.iter().zip(&done) {
        assert_eq!(s.fe.collect(sub, *used).status, S_OK);
    }
    // And read them all back at once.
    let subs: Vec<_> = (0..n)
        .map(|i| {
            s.fe.submit(0, &block_chain(VIRTIO_BLK_T_IN, 16 * i as u64, &[], 8192))
        })
        .collect();
    s.fe.kick(0);
    let done = s.fe.wait(0, n);
    for (id, used) in done {
        let i = subs
            .iter()
            .position(|x| u32::from(x.head) == id)
            .expect("known head");
        let r = s.fe.collect(&subs[i], used);
        assert_eq!((r.status, r.used), (S_OK, 8193));
        assert_eq!(r.data, pattern(8192, i as u8), "request {i}");
    }
}

fn flush_and_get_id(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    s.fe.block(0, VIRTIO_BLK_T_OUT, 0, &[9; 4096], 0);
    let f = s.fe.block(0, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!((f.status, f.used), (S_OK, 1));
    assert_eq!(s.dev.stats().flushes, 1);
    let id = s.fe.block(0, VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!((id.status, id.used), (S_OK, 21));
    assert_eq!(&id.data[..12], b"vu-test-disk");
    assert_eq!(&id.data[12..], &[0; 8]);
    let id = s.fe.block(0, VIRTIO_BLK_T_GET_ID, 0, &[], 5);
    assert_eq!((id.status, id.used, &id.data[..]), (S_OK, 6, &b"vu-te"[..]));
}

fn discard_and_write_zeroes(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    let data = pattern(32 * 1024, 5);
    s.fe.block(0, VIRTIO_BLK_T_OUT, 0, &data, 0);
    let r = s.fe.block(0, VIRTIO_BLK_T_DISCARD, 0, &seg(8, 8, 0), 0);
    assert_eq!(r.status, S_OK);
    let mut segs = seg(16, 8, 0);
    segs.extend(seg(32, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    let r = s.fe.block(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &segs, 0);
    assert_eq!((r.status, r.used), (S_OK, 1));
    let back = s.fe.block(0, VIRTIO_BLK_T_IN, 0, &[], 32 * 1024);
    for sector in 0..64usize {
        let got = &back.data[sector * 512..(sector + 1) * 512];
        if (16..24).contains(&sector) || (32..40).contains(&sector) {
            assert!(got.iter().all(|&b| b == 0), "sector {sector} not zero");
        } else if !(8..16).contains(&sector) {
            assert_eq!(
                got,
                &data[sector * 512..(sector + 1) * 512],
                "sector {sector}"
            );
        }
    }
    let r = s.fe.block(
        0,
        VIRTIO_BLK_T_DISCARD,
        0,
        &seg(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        0,
    );
    assert_eq!(r.status, S_UNSUPP);
    let r =
        s.fe.block(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg(SECTORS - 1, 2, 0), 0);
    assert_eq!(r.status, S_IOERR);
}

fn errors_do_not_stop_the_queue(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    // Past the end, straddling the end, overflowing, not whole sectors, unknown type.
    let bad = [
        (VIRTIO_BLK_T_IN, SECTORS, 512, S_IOERR),
        (VIRTIO_BLK_T_IN, SECTORS - 1, 1024, S_IOERR),
        (VIRTIO_BLK_T_IN, u64::MAX / 512, 512, S_IOERR),
        (VIRTIO_BLK_T_IN, 0, 100, S_IOERR),
        (99, 0, 512, S_UNSUPP),
    ];
    for (ty, sector, len, want) in bad {
        let r = s.fe.block(0, ty, sector, &[], len);
        assert_eq!((r.status, r.used), (want, 1), "type {ty} sector {sector}");
    }
    let r = s.fe.block(0, VIRTIO_BLK_T_OUT, SECTORS - 1, &[1; 1024], 0);
    assert_eq!(r.status, S_IOERR);
    // No status byte: completed with length 0.
    let r = s.fe.run(
        0,
        &[Buf::Out(header(VIRTIO_BLK_T_IN, 0)), Buf::Out(vec![0; 512])],
    );
    assert_eq!(r.used, 0);
    // Short header.
    let r = s.fe.run(0, &[Buf::Out(vec![0; 10]), Buf::In(1)]);
    assert_eq!((r.status, r.used), (S_IOERR, 1));
    // Data not a multiple of 512.
    let r = s.fe.block(0, VIRTIO_BLK_T_OUT, 0, &[3; 700], 0);
    assert_eq!(r.status, S_IOERR);
    // The queue still works.
    let w = s.fe.block(0, VIRTIO_BLK_T_OUT, SECTORS - 1, &[7; 512], 0);
    assert_eq!(w.status, S_OK);
    let r = s.fe.block(0, VIRTIO_BLK_T_IN, SECTORS - 1, &[], 512);
    assert_eq!((r.status, r.data), (S_OK, vec![7; 512]));
    assert_eq!(s.dev.stats().io_errors, 7);
}

fn read_only(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |c| c.read_only = true) else {
        return;
    };
    let features = s.fe.handler.status().acked_features;
    assert!(features & (1 << VIRTIO_BLK_F_RO) != 0);
    assert!(features & (1 << VIRTIO_BLK_F_DISCARD) == 0);
    assert_eq!(
        s.fe.block(0, VIRTIO_BLK_T_OUT, 0, &[1; 512], 0).status,
        S_IOERR
    );
    let r =
        s.fe.block(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &seg(0, 1, 0), 0);
    assert_eq!(r.status, S_IOERR);
    assert_eq!(s.file_bytes(0, 512), vec![0; 512]);
    let r = s.fe.block(0, VIRTIO_BLK_T_IN, 0, &[], 512);
    assert_eq!((r.status, r.data), (S_OK, vec![0; 512]));
}

fn write_through_after_config_write(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    assert_eq!(s.fe.get_config(32, 1), vec![1]);
    s.fe.block(0, VIRTIO_BLK_T_OUT, 0, &[1; 4096], 0);
    assert_eq!(s.dev.stats().durable_writes, 0);
    s.fe.set_config(32, &[0]).expect("writeback = 0");
    assert_eq!(s.fe.get_config(32, 1), vec![0]);
    for i in 0..3 {
        let w = s.fe.block(0, VIRTIO_BLK_T_OUT, 8 * i, &[2; 4096], 0);
        assert_eq!(w.status, S_OK);
    }
    assert_eq!(s.dev.stats().durable_writes, 3);
    // Other config bytes are read-only.
    assert!(s.fe.set_config(0, &[0; 8]).is_err());
    assert!(s.fe.set_config(32, &[0, 0]).is_err());
    s.fe.set_config(32, &[1]).expect("writeback = 1");
    s.fe.block(0, VIRTIO_BLK_T_OUT, 0, &[3; 4096], 0);
    assert_eq!(s.dev.stats().durable_writes, 3);
}

fn config_space(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 2, |c| c.logical_block_size = 4096) else {
        return;
    };
    let c = s.fe.get_config(0, 60);
    assert_eq!(&c[0..8], &SECTORS.to_le_bytes());
    assert_eq!(&c[12..16], &u32::from(QSIZE - 2).to_le_bytes());
    assert_eq!(&c[20..24], &4096u32.to_le_bytes());
    assert_eq!(c[32], 1);
    assert_eq!(&c[34..36], &2u16.to_le_bytes());
    assert_eq!(c[56], 1);
    // Resize shows up in the config space.
    s.dev.resize(SIZE * 2).expect("resize");
    assert_eq!(s.fe.get_config(0, 8), (2 * SECTORS).to_le_bytes());
    let w =
        s.fe.block(1, VIRTIO_BLK_T_OUT, 2 * SECTORS - 8, &[4; 4096], 0);
    assert_eq!(w.status, S_OK);
}

fn queues_run_in_parallel(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 2, |_| {}) else {
        return;
    };
    let a =
        s.fe.submit(0, &block_chain(VIRTIO_BLK_T_OUT, 0, &[0xa; 4096], 0));
    let b =
        s.fe.submit(1, &block_chain(VIRTIO_BLK_T_OUT, 8, &[0xb; 4096], 0));
    s.fe.kick(0);
    s.fe.kick(1);
    let da = s.fe.wait(0, 1);
    let db = s.fe.wait(1, 1);
    assert_eq!(s.fe.collect(&a, da[0].1).status, S_OK);
    assert_eq!(s.fe.collect(&b, db[0].1).status, S_OK);
    assert_eq!(s.file_bytes(0, 4096), vec![0xa; 4096]);
    assert_eq!(s.file_bytes(4096, 4096), vec![0xb; 4096]);
}

fn stop_drains_in_flight(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    let n = 48u64;
    for i in 0..n {
        s.fe.submit(
            0,
            &block_chain(VIRTIO_BLK_T_OUT, 128 * i, &[i as u8; 65536], 0),
        );
    }
    s.fe.kick(0);
    // Once the device has started, stopping the ring waits for every request it took.
    s.fe.wait(0, 1);
    let base = s.fe.stop_ring(0);
    let used = 1 + s.fe.pending_used(0);
    assert_eq!(u32::from(used), base, "every request taken was completed");
    // Requests still in the available ring when the stop arrived stay there.
    for i in 0..u64::from(base) {
        assert_eq!(s.file_bytes(128 * 512 * i, 65536), vec![i as u8; 65536]);
    }
    s.fe.handler.sleep().expect("sleep");
    s.fe.handler.wake().expect("wake");
}

fn ring_full_then_busy(engine: Engine) {
    // 4200 requests in a 16384-entry queue: more than the 4096-entry ring holds, so the
    // engine stops taking requests (Busy) and resumes as completions come in.
    let Some(mut s) = Setup::new(engine, 1, |c| c.queue_size = 16384) else {
        return;
    };
    let whole = pattern(SIZE as usize, 1);
    s.fe.block(0, VIRTIO_BLK_T_OUT, 0, &whole, 0);
    let n = 4200usize;
    let subs: Vec<_> = (0..n)
        .map(|i| {
            s.fe.submit(0, &block_chain(VIRTIO_BLK_T_IN, i as u64, &[], 512))
        })
        .collect();
    s.fe.kick(0);
    let done = s.fe.wait(0, n);
    for (id, used) in done {
        let i = subs
            .iter()
            .position(|x| u32::from(x.head) == id)
            .expect("head");
        let r = s.fe.collect(&subs[i], used);
        assert_eq!((r.status, r.used), (S_OK, 513), "request {i}");
        assert_eq!(r.data, &whole[i * 512..(i + 1) * 512], "request {i}");
    }
}

fn image_shrunk_underneath(engine: Engine) {
    let Some(mut s) = Setup::new(engine, 1, |_| {}) else {
        return;
    };
    s.fe.block(0, VIRTIO_BLK_T_OUT, SECTORS / 2 - 4, &[6; 4096], 0);
    s.image.as_file().set_len(SIZE / 2).expect("shrink");
    // Half inside the file, half past its end: a short read, then end of file.
    let r = s.fe.block(0, VIRTIO_BLK_T_IN, SECTORS / 2 - 4, &[], 4096);
    assert_eq!((r.status, r.used), (S_IOERR, 1));
    let r = s.fe.block(0, VIRTIO_BLK_T_IN, SECTORS / 2 + 8, &[], 512);
    assert_eq!(r.status, S_IOERR);
    let r = s.fe.block(0, VIRTIO_BLK_T_IN, SECTORS / 2 - 4, &[], 2048);
    assert_eq!((r.status, r.data), (S_OK, vec![6; 2048]));
}

fn direct_io(engine: Engine) {
    for lbs in [512u32, 4096] {
        let Some(mut s) = Setup::new(engine, 1, |c| {
            c.direct = true;
            c.logical_block_size = lbs;
        }) else {
            return;
        };
        let data = pattern(16384, lbs as u8);
        // Page-aligned buffers go straight to the kernel.
        let w = s.fe.block(0, VIRTIO_BLK_T_OUT, 8, &data, 0);
        assert_eq!(w.status, S_OK, "lbs {lbs}");
        let r = s.fe.block(0, VIRTIO_BLK_T_IN, 8, &[], 16384);
        assert_eq!((r.status, &r.data), (S_OK, &data), "lbs {lbs}");
        // Buffers O_DIRECT cannot take go through a bounce buffer.
        let bufs = [
            Buf::Out(header(VIRTIO_BLK_T_OUT, 64)),
            Buf::OutAt(data[..5000].to_vec(), 7),
            Buf::OutAt(data[5000..].to_vec(), 512),
            Buf::In(1),
        ];
        assert_eq!(s.fe.run(0, &bufs).status, S_OK, "lbs {lbs}");
        assert_eq!(s.file_bytes(64 * 512, 16384), data);
        let bufs = [
            Buf::Out(header(VIRTIO_BLK_T_IN, 64)),
            Buf::InAt(3000, 1),
            Buf::InAt(16384 - 3000, 3),
            Buf::In(1),
        ];
        let r = s.fe.run(0, &bufs);
        assert_eq!((r.status, r.used), (S_OK, 16385), "lbs {lbs}");
        assert_eq!(r.data, data);
    }
}

macro_rules! for_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sync_engine {
            $(#[test] fn $name() { super::$name(vu_devices::block::Engine::Sync) })*
        }
        mod io_uring_engine {
            $(#[test] fn $name() { super::$name(vu_devices::block::Engine::IoUring) })*
        }
    };
}

for_both_engines!(
    round_trip,
    many_in_flight,
    flush_and_get_id,
    discard_and_write_zeroes,
    errors_do_not_stop_the_queue,
    read_only,
    write_through_after_config_write,
    config_space,
    queues_run_in_parallel,
    stop_drains_in_flight,
    ring_full_then_busy,
    image_shrunk_underneath,
    direct_io,
);

/// Submits `n` requests of `len` bytes at sectors 0, len/512, ... (writes with `seed + i`
/// patterns, or reads checked against them) with one kick, and checks every status.
fn batch(s: &mut Setup, ty: u32, n: usize, len: usize, seed: u8) {
    let step = (len / 512) as u64;
    let chains: Vec<_> = (0..n)
        .map(|i| {
            if ty == VIRTIO_BLK_T_OUT {
                block_chain(ty, step * i as u64, &pattern(len, seed + i as u8), 0)
            } else {
                block_chain(ty, step * i as u64, &[], len as u32)
            }
        })
        .collect();
    // One index update: a worker still awake from the previous batch sees all of it.
    let subs = s.fe.submit_batch(0, &chains);
    s.fe.kick(0);
    for (id, used) in s.fe.wait(0, n) {
        let i = subs
            .iter()
            .position(|x| u32::from(x.head) == id)
            .expect("known head");
        let r = s.fe.collect(&subs[i], used);
        assert_eq!(r.status, S_OK, "request {i}");
        if ty == VIRTIO_BLK_T_IN {
            assert_eq!(r.used, len as u32 + 1);
            assert_eq!(r.data, pattern(len, seed + i as u8), "request {i}");
        }
    }
}

/// With more CPUs than queues, large buffered copies that arrive together go to io_uring's
/// kernel workers (counted), and the data is the same both ways.
#[test]
fn large_copies_with_company_go_to_the_kernel_workers() {
    let Some(mut s) = Setup::new(Engine::IoUring, 1, |c| c.cpus = 4) else {
        return;
    };
    batch(&mut s, VIRTIO_BLK_T_OUT, 8, 128 << 10, 1);
    assert_eq!(s.dev.stats().offloaded, 8, "8 writes of 128 KiB at once");
    for i in 0..8usize {
        assert_eq!(
            s.file_bytes((i * (128 << 10)) as u64, 128 << 10),
            pattern(128 << 10, 1 + i as u8)
        );
    }
    batch(&mut s, VIRTIO_BLK_T_IN, 8, 128 << 10, 1);
    assert_eq!(s.dev.stats().offloaded, 16, "and 8 reads");
    // A flush after offloaded writes in the same batch: every write is in the file first.
    let subs = s.fe.submit_batch(
        0,
        &[
            block_chain(VIRTIO_BLK_T_OUT, 0, &pattern(128 << 10, 77), 0),
            block_chain(VIRTIO_BLK_T_OUT, 256, &pattern(128 << 10, 78), 0),
            block_chain(VIRTIO_BLK_T_FLUSH, 0, &[], 0),
        ],
    );
    let (w, w2, f) = (&subs[0], &subs[1], &subs[2]);
    s.fe.kick(0);
    let done = s.fe.wait(0, 3);
    for sub in [w, w2, f] {
        let used = done
            .iter()
            .find(|d| d.0 == u32::from(sub.head))
            .expect("completed")
            .1;
        assert_eq!(s.fe.collect(sub, used).status, S_OK);
    }
    assert_eq!(s.file_bytes(0, 128 << 10), pattern(128 << 10, 77));
    assert_eq!(s.file_bytes(256 * 512, 128 << 10), pattern(128 << 10, 78));
    assert_eq!(s.dev.stats().offloaded, 18);
}

/// What stays on the queue thread: a lone large request (queue depth 1), small requests in a
/// batch, and everything when there are as many queues as CPUs.
#[test]
fn lone_small_or_no_spare_cpu_copies_stay_inline() {
    let Some(mut s) = Setup::new(Engine::IoUring, 1, |c| c.cpus = 4) else {
        return;
    };
    batch(&mut s, VIRTIO_BLK_T_OUT, 1, 128 << 10, 5);
    batch(&mut s, VIRTIO_BLK_T_IN, 1, 128 << 10, 5);
    batch(&mut s, VIRTIO_BLK_T_OUT, 16, 32 << 10, 6);
    batch(&mut s, VIRTIO_BLK_T_IN, 16, 32 << 10, 6);
    assert_eq!(s.dev.stats().offloaded, 0);

    let Some(mut s) = Setup::new(Engine::IoUring, 2, |c| c.cpus = 2) else {
        return;
    };
    batch(&mut s, VIRTIO_BLK_T_OUT, 8, 128 << 10, 9);
    batch(&mut s, VIRTIO_BLK_T_IN, 8, 128 << 10, 9);
    assert_eq!(s.dev.stats().offloaded, 0, "as many queues as CPUs");
}
