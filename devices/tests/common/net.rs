//! Pieces shared by the net device tests: a socket pair standing in for a tap, virtio-net
//! headers, recognisable Ethernet frames, and the CPU time of queue worker threads (to tell a
//! waiting worker from a spinning one).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// virtio-net header flags and GSO types (virtio 1.2, 5.1.6).
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// An EtherType the kernel ignores (IEEE local experimental).
pub const ETH_TEST: u16 = 0x88b5;

/// A SOCK_SEQPACKET pair: (device end, test end). Each message is one frame with its header.
pub fn frame_pair() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new descriptors into `fds`.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: socketpair made this descriptor; nothing else owns it.
    let a = File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    // SAFETY: as above.
    let b = File::from(unsafe { OwnedFd::from_raw_fd(fds[1]) });
    (a, b)
}

/// Makes a descriptor non-blocking.
pub fn nonblocking(f: &File) {
    // SAFETY: F_GETFL only reads the status flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    assert!(flags >= 0);
    // SAFETY: F_SETFL only changes the status flags of a descriptor we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    assert_eq!(r, 0);
}

/// Sets SO_SNDBUF (SO_SNDBUFFORCE would need more than root's defaults; this is enough to
/// make a socket fill up quickly).
pub fn small_sndbuf(f: &File, bytes: i32) {
    // SAFETY: setsockopt reads one int from `bytes`.
    let r = unsafe {
        libc::setsockopt(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &bytes as *const i32 as *const libc::c_void,
            4,
        )
    };
    assert_eq!(r, 0);
}

/// A 12-byte virtio-net header.
pub fn hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, csum: (u16, u16)) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    h.extend_from_slice(&hdr_len.to_le_bytes());
    h.extend_from_slice(&gso_size.to_le_bytes());
    h.extend_from_slice(&csum.0.to_le_bytes());
    h.extend_from_slice(&csum.1.to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

/// The plain header: no checksum to finish, no GSO.
pub fn plain_hdr() -> Vec<u8> {
    hdr(0, GSO_NONE, 0, 0, (0, 0))
}

/// An Ethernet frame of `len` bytes (at least 14): broadcast, from 02:00:00:00:00:SEED,
/// EtherType ETH_TEST, then a pattern that depends on `seed`.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    assert!(len >= 14);
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, seed]);
    f.extend_from_slice(&ETH_TEST.to_be_bytes());
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7) ^ seed ^ (i >> 8) as u8));
    f
}

/// Largest TCP payload in one IPv4 packet (total length 65535): a 65549-byte frame.
pub const MAX_TCP4_PAYLOAD: usize = 65535 - 40;

/// A TCP/IPv4 segment of `payload` bytes in an Ethernet frame, with the checksum left to be
/// finished (csum_start 34, csum_offset 16), as a sender offloading TSO hands it over.
pub fn tcp4_frame(payload: usize, seed: u8) -> Vec<u8> {
    assert!(payload <= MAX_TCP4_PAYLOAD, "one IPv4 packet");
    let mut f = vec![2, 0, 0, 0, 0, 0xaa, 2, 0, 0, 0, 0, seed, 0x08, 0x00];
    let total = (20 + 20 + payload) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // Pseudo-header sum, as a sender leaves it for the offload to finish.
    let mut pseudo = 0u32;
    for w in [0x0a00u32, 0x0001, 0x0a00, 0x0002, 6, 20 + payload as u32] {
        pseudo += w;
    }
    while pseudo > 0xffff {
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    }
    tcp[16..18].copy_from_slice(&(pseudo as u16).to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| (i as u8) ^ seed));
    f
}

fn ip_checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Reads one message, waiting up to `timeout` for it; None on timeout.
pub fn recv_timeout(f: &mut File, timeout: Duration) -> Option<Vec<u8>> {
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if r <= 0 {
        return None;
    }
    let mut buf = vec![0u8; 128 << 10];
    let n = f.read(&mut buf).expect("read frame");
    buf.truncate(n);
    Some(buf)
}

/// Ids of this process's threads whose name starts with `prefix`.
pub fn threads(prefix: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            if let Ok(tid) = e.file_name().to_string_lossy().parse() {
                v.push(tid);
            }
        }
    }
    v.sort_unstable();
    v
}

/// The `n` threads named `prefix`... that are not in `before`, once they have taken their
/// names (a new thread names itself when it first runs).
pub fn new_threads(prefix: &str, before: &[u32], n: usize) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let new: Vec<u32> = threads(prefix)
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        if new.len() >= n {
            return new;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} new threads named {prefix}*: found {new:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CPU time (user + system) of thread `tid`, in clock ticks.
pub fn thread_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Asserts that none of `tids` burns CPU over a quiet half second (a waiting worker uses
/// none; a spinning one a full core, 50 ticks).
pub fn assert_idle(tids: &[u32], what: &str) {
    let before: Vec<u64> = tids.iter().map(|t| thread_ticks(*t)).collect();
    std::thread::sleep(Duration::from_millis(500));
    for (t, b) in tids.iter().zip(before) {
        let used = thread_ticks(*t) - b;
        assert!(
            used <= 10,
            "{what}: worker thread {t} used {used} ticks in 0.5 s"
        );
    }
}
