//! Keeps `vu-bench` working: its library code against the in-process null device and
//! against our block device (in-process, on a temporary file), for a small number of
//! requests. Checks counts and data, never timing.

use std::sync::Arc;

use vu_devices::block::{BlockConfig, BlockDevice, Engine};
use vu_tests::bench::{run, Config, LocalServer, Notify, NullDevice, Report, Rw};

const DISK: u64 = 4 << 20;

fn sane(r: &Report, requests: u64) {
    assert_eq!(r.completed, requests, "{}", r.table());
    assert_eq!(r.errors, 0, "{}", r.table());
    assert_eq!(r.verify_failures, 0, "{}", r.table());
    assert_eq!(r.reads + r.writes, requests);
    assert_eq!(r.latency.count(), requests);
    assert!(r.elapsed_s > 0.0 && r.iops() > 0.0);
    assert!(r.latency.percentile(0.5) <= r.latency.percentile(0.99));
    assert!(r.latency.percentile(0.99) <= r.latency.max());
    assert_eq!(r.bytes, requests * u64::from(r.bs));
    let j = r.json();
    assert!(j.starts_with('{') && j.ends_with('}'));
    assert!(j.contains(&format!("\"completed\":{requests}")), "{j}");
}

#[test]
fn null_device() {
    for (notify, queues, iodepth) in [
        (Notify::Call, 1, 1),
        (Notify::Call, 2, 16),
        (Notify::Poll, 2, 4),
    ] {
        let cfg = Config {
            rw: Rw::Mixed,
            rwmix_read: 50,
            queues,
            iodepth,
            notify,
            requests: Some(2000),
            null_size: DISK,
            ..Config::default()
        };
        let r = run(&cfg).expect("null run");
        sane(&r, 2000);
        assert!(r.reads > 0 && r.writes > 0);
        assert!(r.event_idx, "the core offers EVENT_IDX");
        let s = r.server.as_ref().expect("null server figures");
        assert!(s.pids.is_empty() && s.cpu_s >= 0.0);
    }
}

fn block_server(engine: Engine, queues: u16, dir: Option<&str>, poll_us: u32) -> LocalServer {
    let file = match dir {
        Some(d) => tempfile::tempfile_in(d).expect("tempfile"),
        None => tempfile::tempfile().expect("tempfile"),
    };
    file.set_len(DISK).expect("size the image");
    let dev = BlockDevice::new(BlockConfig {
        file,
        read_only: false,
        direct: false,
        num_queues: queues,
        queue_size: 256,
        serial: None,
        logical_block_size: 512,
        engine,
        writeback: true,
        // More CPUs than queues: large copies with company go to io_uring's workers.
        cpus: 4,
    })
    .expect("block device");
    LocalServer::start_with_poll_us(dev as Arc<_>, poll_us).expect("serve the block device")
}

fn write_then_read(engine: Engine) {
    write_then_read_with(engine, None, 0);
}

fn write_then_read_with(engine: Engine, dir: Option<&str>, poll_us: u32) {
    let server = block_server(engine, 2, dir, poll_us);
    let bs = 16 << 10;
    let blocks = DISK / bs;
    let base = Config {
        socket: Some(server.path().to_path_buf()),
        bs: bs as u32,
        queues: 2,
        iodepth: 8,
        verify: true,
        requests: Some(blocks),
        ..Config::default()
    };
    // Every block once, sequentially (each queue its own stripe), stamped.
    let w = run(&Config {
        rw: Rw::Write,
        ..base.clone()
    })
    .expect("write run");
    sane(&w, blocks);
    assert_eq!(w.writes, blocks);
    assert_eq!(w.size, DISK, "the size comes from the config space");
    // Read it all back and check the stamps, sequentially and at random, both notify modes.
    let r = run(&Config {
        rw: Rw::Read,
        ..base.clone()
    })
    .expect("read run");
    sane(&r, blocks);
    assert_eq!(r.reads, blocks);
    let rr = run(&Config {
        rw: Rw::RandRead,
        bs: 4096,
        requests: Some(3000),
        notify: Notify::Poll,
        ..base.clone()
    })
    .expect("random read run");
    sane(&rr, 3000);
    // A stamp check that can fail: a second pass written with another seed does not match.
    let other = run(&Config {
        rw: Rw::RandRead,
        bs: 4096,
        requests: Some(100),
        seed: base.seed + 1,
        ..base
    })
    .expect("mismatched read run");
    assert_eq!(other.errors, 0);
    assert_eq!(
        other.verify_failures, 100,
        "reads with the wrong stamp must not verify"
    );
    server.stop().expect("stop");
}

#[test]
fn block_device_io_uring() {
    write_then_read(Engine::IoUring);
}

#[test]
fn block_device_sync() {
    write_then_read(Engine::Sync);
}

/// A buffered image on tmpfs: no RWF_NOWAIT there, so the io_uring engine runs reads and
/// writes inline.
#[test]
fn block_device_io_uring_on_tmpfs() {
    if std::path::Path::new("/dev/shm").is_dir() {
        write_then_read_with(Engine::IoUring, Some("/dev/shm"), 0);
    }
}

/// Queue workers that busy-poll (`--poll-us`) before sleeping lose no request.
#[test]
fn block_device_polling() {
    write_then_read_with(Engine::IoUring, None, 200);
    write_then_read_with(Engine::Sync, None, 30);
}

#[test]
fn against_a_null_server_socket_with_the_cli() {
    let server = LocalServer::start(NullDevice::new(1, DISK)).expect("null server");
    let args = [
        "--socket",
        server.path().to_str().expect("utf-8 path"),
        "--rw",
        "randwrite",
        "--requests",
        "500",
        "--iodepth",
        "4",
        "--no-event-idx",
        "--json",
        "--server-pid",
        &std::process::id().to_string(),
    ]
    .map(String::from);
    let vu_tests::bench::Invocation::Run { config, json } =
        vu_tests::bench::parse_args(args).expect("parse")
    else {
        panic!("not a run");
    };
    assert!(json);
    let r = run(&config).expect("run");
    sane(&r, 500);
    assert!(!r.event_idx);
    let s = r.server.as_ref().expect("server figures");
    assert!(s.pids.contains(&std::process::id()));
    assert!(s.rss_anon_idle_kib > 0 && s.rss_anon_end_kib > 0);
}
