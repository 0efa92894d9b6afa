//! Unit tests: configuration checks, descriptors accepted or refused, feature bits, config
//! space, snapshot and status, the transmit ring kept across queue starts. Queue behaviour
//! is tested through the core's handler in `devices/tests/net_*.rs`.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use virtio_bindings::virtio_net::*;
use vu_core::VhostUserDevice;

use super::config::bit;
use super::*;

fn socket() -> File {
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
    assert_eq!(r, 0);
    // SAFETY: socketpair made this descriptor; nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fds[1]) });
    // SAFETY: as above.
    File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) })
}

fn cfg(taps: Vec<File>, queue_pairs: u16) -> NetConfig {
    NetConfig {
        taps,
        queue_pairs,
        queue_size: 256,
        mtu: None,
        mac: None,
    }
}

fn device(pairs: u16, tweak: impl FnOnce(&mut NetConfig)) -> Result<Arc<NetDevice>, NetError> {
    let mut c = cfg((0..pairs).map(|_| socket()).collect(), pairs);
    tweak(&mut c);
    NetDevice::new(c)
}

#[test]
fn configurations_are_checked() {
    let e = |pairs, tweak: fn(&mut NetConfig)| device(pairs, tweak).expect_err("refused");
    assert!(matches!(e(0, |_| {}), NetError::BadQueuePairs(0)));
    assert!(matches!(e(129, |_| {}), NetError::BadQueuePairs(129)));
    assert!(matches!(
        e(2, |c| {
            c.taps.pop();
        }),
        NetError::TapCount {
            taps: 1,
            queue_pairs: 2
        }
    ));
    for qs in [0, 2, 100, 65535] {
        let r = device(1, |c| c.queue_size = qs);
        assert!(
            matches!(r, Err(NetError::BadQueueSize(_))),
            "queue size {qs}"
        );
    }
    assert!(matches!(e(1, |c| c.mtu = Some(67)), NetError::BadMtu(67)));
    assert!(matches!(
        e(1, |c| c.mac = Some([0; 6])),
        NetError::BadMac(_)
    ));
    let e = e(1, |c| c.mac = Some([1, 2, 3, 4, 5, 6]));
    assert_eq!(
        e.to_string(),
        "\"01:02:03:04:05:06\" is not a unicast MAC address (aa:bb:cc:dd:ee:ff)"
    );
    assert!(device(128, |c| c.mtu = Some(9000)).is_ok());
}

#[test]
fn only_taps_and_sockets_are_accepted() {
    let file = tempfile::tempfile().expect("file");
    assert!(matches!(
        NetDevice::new(cfg(vec![file], 1)),
        Err(NetError::NotATap(0))
    ));
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(w);
    assert!(matches!(
        NetDevice::new(cfg(vec![File::from(r)], 1)),
        Err(NetError::NotATap(0))
    ));
    let null = File::open("/dev/null").expect("/dev/null");
    assert!(matches!(
        NetDevice::new(cfg(vec![null], 1)),
        Err(NetError::NotATap(0))
    ));
    // A socket is made non-blocking.
    let s = socket();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&s);
    let _dev = NetDevice::new(cfg(vec![s], 1)).expect("socket");
    // SAFETY: F_GETFL only reads the flags of a descriptor the device owns and keeps open.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    assert_ne!(flags & libc::O_NONBLOCK, 0);
}

#[test]
fn queues_features_and_config_space() {
    let dev = device(3, |c| {
        c.mtu = Some(9000);
        c.mac = Some([2, 0, 0, 0, 0, 7]);
    })
    .expect("device");
    assert_eq!(dev.num_queues(), 6);
    assert_eq!(dev.max_queue_size(), 256);
    let f = dev.device_features();
    for b in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(f & bit(b), 0, "feature {b}");
    }
    assert_eq!(f & bit(VIRTIO_NET_F_CTRL_VQ), 0);
    assert_eq!(f & bit(VIRTIO_NET_F_GUEST_ANNOUNCE), 0);
    assert_eq!(dev.config_size(), 12);
    // QEMU sends ADD_MEM_REG once per queue pair: the table must come with SET_MEM_TABLE.
    assert_eq!(
        dev.withheld_protocol_features(),
        vu_core::message::protocol::CONFIGURE_MEM_SLOTS
    );
    let mut c = [0u8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(c, [2, 0, 0, 0, 0, 7, 1, 0, 3, 0, 0x28, 0x23]);
    let mut mtu = [0u8; 2];
    dev.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
    // Out of range: left alone (the core bounds-checks before calling).
    let mut past = [0xaau8; 4];
    dev.read_config(10, &mut past);
    assert_eq!(past, [0xaa; 4]);
    assert!(dev.write_config(0, &[1]).is_err());
    assert!(dev.start_queue(6).is_err());
    assert!(dev.start_queue(5).is_ok());
    // Without a MAC, none is offered.
    let dev = device(1, |_| {}).expect("device");
    assert_eq!(dev.device_features() & bit(VIRTIO_NET_F_MAC), 0);
}

#[test]
fn snapshot_restore_and_status() {
    let dev = device(2, |_| {}).expect("device");
    let features = bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_NET_F_GUEST_CSUM);
    dev.set_features(features).expect("features");
    let snap = dev.snapshot().expect("snapshot");
    let other = device(2, |_| {}).expect("device");
    other.restore(&snap).expect("restore");
    assert_eq!(other.snapshot().expect("snapshot"), snap);
    let three = device(3, |_| {}).expect("device");
    assert!(
        three.restore(&snap).is_err(),
        "another number of queue pairs"
    );
    assert!(other.restore(&[0xff, 0xff, 0xff]).is_err(), "garbage");
    let status = dev.status_fields();
    let get = |k: &str| {
        status
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("queue_pairs"), "2");
    assert_eq!(get("mtu"), "1500");
    assert_eq!(get("mac"), "none");
    assert_eq!(get("offloads"), "none", "a socket takes no offloads");
    assert_eq!(get("header_bytes"), "12");
    assert_eq!(get("rx_packets"), "0");
    assert_eq!(get("tx_dropped_malformed"), "0");
    assert_eq!(dev.pair_stats(1), Some(NetStats::default()));
    assert_eq!(dev.pair_stats(2), None);
}

#[test]
fn mac_addresses_parse_and_print() {
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x0a];
    assert_eq!(parse_mac("52:54:00:12:34:0a").ok(), Some(mac));
    assert_eq!(parse_mac("2:0:0:0:0:1").ok(), Some([2, 0, 0, 0, 0, 1]));
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5g",
        "525:4:0:0:0:0",
        "52::00:12:34:56",
    ] {
        assert!(parse_mac(bad).is_err(), "{bad:?}");
    }
    assert_eq!(format_mac(&mac), "52:54:00:12:34:0a");
}

#[test]
fn a_stopped_transmit_queue_leaves_its_ring_to_the_next_start() {
    let tap = Arc::new(TapFd::probe(socket(), 0).expect("socket"));
    let counters = Arc::new(Counters::default());
    let mut first = TxHandler::new(tap.clone(), counters.clone(), 12);
    first.setup_ring();
    let ring = first.ring_fd().expect("a ring on this kernel");
    drop(first);
    // Were the ring closed, this would take its descriptor number.
    let other = File::open("/dev/null").expect("/dev/null");
    let mut second = TxHandler::new(tap.clone(), counters, 12);
    second.setup_ring();
    assert_eq!(second.ring_fd(), Some(ring), "the same ring");
    assert!(tap.take_ring().is_none(), "taken, not copied");
    drop(second);
    assert!(tap.take_ring().is_some(), "back on the tap");
    drop(other);
}
