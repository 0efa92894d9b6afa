//! A network namespace for one test: a thread that unshares its network namespace (the
//! namespace is per thread) and runs closures there, so that taps, packet sockets and `ip`
//! commands the test needs live in a namespace of its own, which disappears with the last
//! descriptor into it. Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in a fresh network namespace.
pub struct Netns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Netns {
    /// A new namespace (IPv6 off, so the kernel sends nothing of its own on the taps), or
    /// None if this process may not create one (the test is then skipped).
    pub fn new() -> Option<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let res = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = res.is_ok();
            if ok {
                for knob in ["all", "default"] {
                    let _ =
                        std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1");
                }
            }
            let _ = ready_tx.send(res);
            if ok {
                for job in rx {
                    job();
                }
            }
        });
        match ready_rx.recv().expect("netns thread") {
            Ok(()) => Some(Netns {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Err(e) => {
                eprintln!("skipping: cannot create a network namespace: {e}");
                None
            }
        }
    }

    /// Runs `f` on the namespace's thread and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("netns alive")
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("netns thread");
        rx.recv().expect("netns job")
    }

    /// Runs `ip ARGS` in the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self.run(move || Command::new("ip").args(&args).output());
        let out = out.expect("run ip");
        assert!(
            out.status.success(),
            "ip failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until interface `name` is operationally up: a tap gets its carrier when a queue
    /// attaches, and the kernel activates its queueing a moment later (until then, frames
    /// sent to it are dropped).
    pub fn wait_up(&self, name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let name = name.to_string();
        loop {
            let n = name.clone();
            let out = self
                .run(move || Command::new("ip").args(["-o", "link", "show", &n]).output())
                .expect("run ip");
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} is not up: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A packet socket bound to interface `name`: sends whole Ethernet frames out of it and
    /// receives those arriving on it. With `vnet_hdr`, each frame is preceded by a 10-byte
    /// virtio-net header both ways (PACKET_VNET_HDR).
    pub fn packet_socket(&self, name: &str, vnet_hdr: bool) -> File {
        let name = name.to_string();
        self.run(move || packet_socket(&name, vnet_hdr))
    }

    /// An AF_INET datagram socket in the namespace, for interface ioctls.
    pub fn inet_socket(&self) -> File {
        self.run(|| {
            // SAFETY: socket() returns a new descriptor or -1.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is a new descriptor nothing else owns.
            File::from(unsafe { OwnedFd::from_raw_fd(fd) })
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const ETH_P_ALL: u16 = 0x0003;

fn packet_socket(name: &str, vnet_hdr: bool) -> File {
    let cname = std::ffi::CString::new(name).expect("name");
    // SAFETY: `cname` is NUL-terminated and lives across the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(index > 0, "no interface {name}");
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if vnet_hdr {
        let one: libc::c_int = 1;
        // SAFETY: PACKET_VNET_HDR reads one int from `one`.
        let r = unsafe {
            libc::setsockopt(
                file.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
    }
    // SAFETY: all zeroes is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: bind reads a sockaddr_ll of the given size from `sll`.
    let r = unsafe {
        libc::bind(
            file.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    file
}
