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

/// Light load: a fixed rate (open loop) and bursts with think time run exactly the requests
/// asked for, against the null device and our block device (1 and 2 queues, batches).
#[test]
fn light_load_modes() {
    use vu_tests::bench::Pace;
    let paces = [
        Pace::Rate {
            rate: 20_000.0,
            batch: 1,
        },
        Pace::Rate {
            rate: 40_000.0,
            batch: 4,
        },
        Pace::Think {
            batch: 8,
            think: std::time::Duration::from_micros(200),
        },
    ];
    let server = block_server(Engine::IoUring, 2, None, 0);
    for pace in paces {
        for (socket, queues) in [(None, 1), (Some(server.path().to_path_buf()), 2)] {
            let cfg = Config {
                socket,
                rw: Rw::RandRead,
                queues,
                iodepth: 8,
                pace,
                requests: Some(1000),
                null_size: DISK,
                ..Config::default()
            };
            let r = run(&cfg).expect("light run");
            sane(&r, 1000);
            assert_eq!(r.pace, pace.as_str());
            if let Pace::Rate { .. } = pace {
                assert_eq!(r.lag.count(), 1000, "every send's lag");
                assert_eq!(r.service.count(), 1000);
                // From the intended time: never shorter than from the send.
                assert!(r.latency.percentile(0.5) >= r.service.percentile(0.5));
                assert!(r.json().contains("\"lag_p50_us\""));
            }
        }
    }
    server.stop().expect("stop");
}

/// Two queues of lone O_DIRECT reads (io_uring), the front-end asleep on its call eventfd
/// between completions: no completion is ever left unseen. One the kernel posts (as task
/// work, at any return to user space) after a queue worker last looked and before it waits
/// must still wake it; a version that relied on looking before the wait lost one about every
/// other run of this shape.
#[test]
fn o_direct_two_queues_at_queue_depth_one_lose_nothing() {
    let file = tempfile::tempfile().expect("tempfile");
    file.set_len(DISK).expect("size the image");
    let dev = match BlockDevice::new(BlockConfig {
        file,
        read_only: false,
        direct: true,
        num_queues: 2,
        queue_size: 256,
        serial: None,
        logical_block_size: 512,
        engine: Engine::IoUring,
        writeback: true,
        cpus: 0,
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping: no O_DIRECT io_uring image here: {e}");
            return;
        }
    };
    let server = LocalServer::start(dev as Arc<_>).expect("serve the block device");
    for _ in 0..2 {
        let r = run(&Config {
            socket: Some(server.path().to_path_buf()),
            rw: Rw::RandRead,
            queues: 2,
            iodepth: 1,
            runtime: std::time::Duration::from_secs(1),
            stall_timeout: std::time::Duration::from_secs(5),
            ..Config::default()
        })
        .expect("no completion lost");
        assert_eq!(r.errors, 0);
    }
    server.stop().expect("stop");
}
