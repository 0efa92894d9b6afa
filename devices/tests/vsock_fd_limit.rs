//! Out of descriptors: host programs waiting on the listener while the device cannot accept
//! them (EMFILE) do not make it spin, and are served once descriptors are free again. One
//! test per binary: it lowers the process's descriptor limit.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use common::stat_ticks;
use common::vsock::Hybrid;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vu_devices::vsock::packet::op;

/// The queue thread's stat file (the device's queues share one, `vsock-g0`), opened ahead (reading it later needs no descriptor). The
/// worker names itself once it runs: wait for it.
fn rx_thread_stat() -> std::fs::File {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for t in std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
        {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == "vsock-g0" {
                return std::fs::File::open(t.path().join("stat")).expect("stat");
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no vsock-g0 thread after 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// CPU ticks (user + system) the thread used so far.
fn ticks(stat: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 1024];
    let n = stat.read_at(&mut buf, 0).expect("read stat");
    stat_ticks(&String::from_utf8_lossy(&buf[..n]))
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64
}

#[test]
fn running_out_of_descriptors_does_not_spin_and_recovers() {
    let Hybrid {
        mut g,
        path,
        dir: _dir,
    } = Hybrid::start();
    let clients: Vec<OwnedFd> = (0..8)
        .map(|_| {
            socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket")
        })
        .collect();
    let stat = rx_thread_stat();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    // No descriptor to spare (read_dir's own is counted, and closed again).
    let limit = open_fds() - 1;
    setrlimit(Resource::RLIMIT_NOFILE, limit, hard).expect("setrlimit");
    let addr = UnixAddr::new(&path).expect("addr");
    for c in &clients {
        connect(c.as_raw_fd(), &addr).expect("connect");
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = ticks(&stat);
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks(&stat) - before;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("restore limit");
    assert!(
        used <= 10,
        "the queue thread used {used} ticks in a second while it could not accept"
    );

    // Descriptors again: the waiting programs are accepted and heard.
    for (i, c) in clients.iter().enumerate() {
        let line = format!("CONNECT {}\n", 100 + i);
        nix::unistd::write(c, line.as_bytes()).expect("write");
    }
    let mut ports: Vec<u32> = (0..clients.len())
        .map(|_| {
            let p = g.recv();
            assert_eq!(p.h.op, op::REQUEST);
            p.h.dst_port
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, (100..108).collect::<Vec<u32>>());
}
