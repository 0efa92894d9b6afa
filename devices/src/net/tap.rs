//! Opening a tap for a net device, in the parent before the jail: one /dev/net/tun
//! descriptor per queue pair, attached to an existing tap with IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR (plus IFF_MULTI_QUEUE for more than one pair), the 12-byte virtio-net header
//! and no offloads yet (the device sets them once the driver's features are known). The
//! descriptors are non-blocking and close-on-exec; the jailed device needs nothing else.
//!
//! The kernel sets the header flags of a tap when the first queue attaches, so a tap created
//! without `vnet_hdr` works; it is refused only when another process holds queues of it
//! without the header (the flags then stay theirs).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use super::config::HDR_LEN;
use super::tun;

/// Most queues a tap can have (the kernel's MAX_TAP_QUEUES).
pub const MAX_TAP_QUEUES: u16 = 256;

/// Why a tap could not be opened for a device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not a usable interface name.
    #[error("{0:?} is not a valid interface name (1 to 15 bytes)")]
    BadName(String),
    /// Zero queue pairs, or more than a tap has queues.
    #[error("{0} queue pairs requested; a tap has 1 to 256 queues")]
    BadQueuePairs(u16),
    /// No interface of that name in this network namespace.
    #[error("no tap named {0:?} in this network namespace (create it first: `ip tuntap add dev {0} mode tap multi_queue vnet_hdr`)")]
    Missing(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun (is the tun module loaded?)")]
    Open(#[source] io::Error),
    /// The kernel's tun driver lacks a flag we need.
    #[error("the kernel's tun driver does not support {0}")]
    Unsupported(&'static str),
    /// The interface exists but is a tun device or another kind of interface.
    #[error("{0:?} exists but is not a tap (it is a tun device or another kind of interface)")]
    NotATap(String),
    /// A single-queue tap for more than one queue pair.
    #[error("tap {name:?} was created without multi_queue; {queue_pairs} queue pairs need a queue each (`ip tuntap add dev {name} mode tap multi_queue vnet_hdr`)")]
    NotMultiQueue {
        /// Interface name.
        name: String,
        /// Queue pairs requested.
        queue_pairs: u16,
    },
    /// A single-queue tap another process holds.
    #[error("tap {0:?} is single-queue and another process has it open")]
    Busy(String),
    /// More queues than the tap can take alongside those others hold.
    #[error("tap {0:?} has no room for more queues")]
    TooManyQueues(String),
    /// Attaching was refused for want of permission.
    #[error("no permission to attach to tap {name:?} (it belongs to another user or group, or CAP_NET_ADMIN is missing)")]
    Permission {
        /// Interface name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The tap does not carry what the device needs after attaching: other processes hold
    /// queues of it with other flags.
    #[error("tap {name:?} is attached without {missing} (another process holds its queues with other flags)")]
    WrongFlags {
        /// Interface name.
        name: String,
        /// The flag that is missing ("vnet_hdr", "no_pi", "multi_queue").
        missing: &'static str,
    },
    /// Any other failure of an ioctl on the tap.
    #[error("cannot {what} on tap {name:?}")]
    Ioctl {
        /// Interface name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Reading the interface statistics failed.
    #[error("cannot read the statistics of {0:?}")]
    Stats(String, #[source] io::Error),
}

fn open_tun() -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::Open)
}

/// Attaches one new descriptor to `name` with `flags`. Outer error: /dev/net/tun cannot be
/// opened; inner: TUNSETIFF refused.
fn attach(name: &str, flags: libc::c_int) -> Result<Result<File, io::Error>, TapError> {
    let file = open_tun()?;
    let Some(mut req) = tun::ifreq(name, flags) else {
        return Err(TapError::BadName(name.to_string()));
    };
    Ok(tun::set_iff(file.as_fd(), &mut req).map(|()| file))
}

fn base_flags() -> libc::c_int {
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR
}

/// Opens `queue_pairs` queues of the existing tap `name` in the caller's network namespace
/// (the calling thread's), ready for a net device: see the module documentation.
pub fn open_tap(name: &str, queue_pairs: u16) -> Result<Vec<File>, TapError> {
    if tun::ifreq(name, 0).is_none() {
        return Err(TapError::BadName(name.to_string()));
    }
    if queue_pairs == 0 || queue_pairs > MAX_TAP_QUEUES {
        return Err(TapError::BadQueuePairs(queue_pairs));
    }
    let probe = open_tun()?;
    let supported = tun::get_features(probe.as_fd()).map_err(|source| TapError::Ioctl {
        name: name.to_string(),
        what: "read the tun driver's features",
        source,
    })? as libc::c_int;
    drop(probe);
    if supported & libc::IFF_VNET_HDR == 0 {
        return Err(TapError::Unsupported("IFF_VNET_HDR"));
    }
    if queue_pairs > 1 && supported & libc::IFF_MULTI_QUEUE == 0 {
        return Err(TapError::Unsupported("IFF_MULTI_QUEUE"));
    }
    let c_name = std::ffi::CString::new(name).map_err(|_| TapError::BadName(name.to_string()))?;
    // SAFETY: `c_name` is a NUL-terminated string that lives across the call.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
        return Err(TapError::Missing(name.to_string()));
    }
    let first = attach_first(name, queue_pairs)?;
    let multi = first.1;
    let flags = if multi {
        base_flags() | libc::IFF_MULTI_QUEUE
    } else {
        base_flags()
    };
    let mut files = vec![first.0];
    for queue in 1..queue_pairs {
        let f = attach(name, flags)?.map_err(|e| classify(name, queue, e))?;
        files.push(f);
    }
    for f in &files {
        check_flags(name, f, multi)?;
    }
    let ioctl_err = |what| {
        let name = name.to_string();
        move |source| TapError::Ioctl { name, what, source }
    };
    tun::set_vnet_hdr_sz(files[0].as_fd(), HDR_LEN)
        .map_err(ioctl_err("set the virtio-net header size"))?;
    tun::set_offload(files[0].as_fd(), 0).map_err(ioctl_err("clear the offloads"))?;
    Ok(files)
}

/// Attaches the first queue. With one pair, a multi-queue tap is accepted too. Returns the
/// descriptor and whether the tap is multi-queue.
fn attach_first(name: &str, queue_pairs: u16) -> Result<(File, bool), TapError> {
    let want_multi = queue_pairs > 1;
    let flags = |multi: bool| {
        if multi {
            base_flags() | libc::IFF_MULTI_QUEUE
        } else {
            base_flags()
        }
    };
    match attach(name, flags(want_multi))? {
        Ok(f) => return Ok((f, want_multi)),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(classify(name, 0, e)),
        Err(_) => {}
    }
    // EINVAL: the tap's multi_queue setting differs from what we asked, or it is not a tap.
    match attach(name, flags(!want_multi))? {
        Ok(f) if !want_multi => Ok((f, true)),
        Ok(_) => Err(TapError::NotMultiQueue {
            name: name.to_string(),
            queue_pairs,
        }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Err(TapError::NotATap(name.to_string()))
        }
        Err(e) => Err(classify(name, 0, e)),
    }
}

fn classify(name: &str, queue: u16, e: io::Error) -> TapError {
    let name = name.to_string();
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission { name, source: e },
        Some(libc::EBUSY) => TapError::Busy(name),
        Some(libc::E2BIG) => TapError::TooManyQueues(name),
        _ => TapError::Ioctl {
            name,
            what: if queue == 0 {
                "attach the first queue"
            } else {
                "attach another queue"
            },
            source: e,
        },
    }
}

fn check_flags(name: &str, f: &File, multi: bool) -> Result<(), TapError> {
    let (_, flags) = tun::get_iff(f.as_fd()).map_err(|source| TapError::Ioctl {
        name: name.to_string(),
        what: "read the flags",
        source,
    })?;
    let missing = if flags & libc::IFF_TAP == 0 {
        Some("tap mode")
    } else if flags & libc::IFF_VNET_HDR == 0 {
        Some("vnet_hdr")
    } else if flags & libc::IFF_NO_PI == 0 {
        Some("no_pi")
    } else if multi && flags & libc::IFF_MULTI_QUEUE == 0 {
        Some("multi_queue")
    } else {
        None
    };
    match missing {
        Some(missing) => Err(TapError::WrongFlags {
            name: name.to_string(),
            missing,
        }),
        None => Ok(()),
    }
}

/// Interface counters of a tap, as the kernel sees them (32-bit, they wrap). For a tap the
/// kernel's "transmit" side is what it hands to the device (frames for the guest) and its
/// "receive" side what the device writes (frames from the guest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Frames the device wrote into the tap.
    pub rx_packets: u64,
    /// Frames the kernel queued for the device to read.
    pub tx_packets: u64,
    /// Bytes the device wrote.
    pub rx_bytes: u64,
    /// Bytes the kernel queued for the device.
    pub tx_bytes: u64,
    /// Frames from the device the kernel dropped.
    pub rx_dropped: u64,
    /// Frames for the device the kernel dropped, mostly because the tap's queue was full:
    /// the device was not reading (the driver posted no receive buffers) or was not running.
    pub tx_dropped: u64,
}

/// The head of the kernel's `struct rtnl_link_stats` (what getifaddrs puts in `ifa_data` for
/// AF_PACKET entries).
#[repr(C)]
struct LinkStatsHead {
    rx_packets: u32,
    tx_packets: u32,
    rx_bytes: u32,
    tx_bytes: u32,
    _rx_errors: u32,
    _tx_errors: u32,
    rx_dropped: u32,
    tx_dropped: u32,
}

/// Counters of the interface `name` in the calling thread's network namespace (for status
/// reports: the frames a tap dropped while the device could not take them show here).
pub fn tap_stats(name: &str) -> Result<TapStats, TapError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a list it allocated in `head`; freed below.
    if unsafe { libc::getifaddrs(&mut head) } < 0 {
        return Err(TapError::Stats(
            name.to_string(),
            io::Error::last_os_error(),
        ));
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_data.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null `ifa_addr` points to a sockaddr of the list.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        // SAFETY: `ifa_name` is a NUL-terminated string of the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if i32::from(family) != libc::AF_PACKET || ifname.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: for AF_PACKET entries glibc points `ifa_data` at a `struct rtnl_link_stats`
        // it copied into the list, which starts with these eight u32 counters; it may be
        // unaligned for u32 in principle, hence the unaligned read.
        let s = unsafe { std::ptr::read_unaligned(ifa.ifa_data as *const LinkStatsHead) };
        found = Some(TapStats {
            rx_packets: s.rx_packets.into(),
            tx_packets: s.tx_packets.into(),
            rx_bytes: s.rx_bytes.into(),
            tx_bytes: s.tx_bytes.into(),
            rx_dropped: s.rx_dropped.into(),
            tx_dropped: s.tx_dropped.into(),
        });
        break;
    }
    // SAFETY: `head` came from getifaddrs and is freed once; nothing points into it after.
    unsafe { libc::freeifaddrs(head) };
    found.ok_or_else(|| TapError::Missing(name.to_string()))
}
