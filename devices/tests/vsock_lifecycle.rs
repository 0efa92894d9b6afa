//! The device's life around its connections: config space, QEMU's two queues and crosvm's
//! three, TRANSPORT_RESET on the event queue when connections were lost (a fresh device, a
//! reset or reconnect, a restore), sleep and wake, snapshots, status.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::vsock::{host_line, host_write, Guest, Stream, HOST};
use common::Buf;
use vu_core::VhostUserDevice;
use vu_devices::vsock::packet::op;
use vu_devices::vsock::{VsockConfig, VsockDevice, VsockError};

fn device(path: &Path) -> Arc<VsockDevice> {
    let mut cfg = VsockConfig::new(42);
    cfg.listener = Some(UnixListener::bind(path).expect("bind"));
    VsockDevice::new(cfg).expect("device")
}

/// Posts one event buffer and returns the event the device wrote, if any within `wait`.
fn event(g: &mut Guest, wait: Duration) -> Option<u32> {
    let sub = g.fe.submit(2, &[Buf::In(8)]);
    g.fe.kick(2);
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(&(id, len)) = g.fe.used_now(2).first() {
            assert_eq!((id, len), (u32::from(sub.head), 4));
            let b = g.fe.read(sub.writable[0].0, 4);
            return Some(u32::from_le_bytes(b.try_into().expect("4 bytes")));
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn host_connection(g: &mut Guest, path: &Path, port: u32) -> (UnixStream, Stream) {
    let mut host = UnixStream::connect(path).expect("connect");
    host_write(&mut host, format!("CONNECT {port}\n").as_bytes());
    let req = g.recv();
    let mut st = Stream::new(port, HOST, req.h.src_port, 65536);
    st.absorb(&req.h);
    let h = st.header(g, op::RESPONSE);
    g.send1(h, &[]);
    assert!(host_line(&mut host).is_some());
    (host, st)
}

#[test]
fn config_space_holds_the_cid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = device(&dir.path().join("v.sock"));
    assert_eq!(dev.device_features(), 1 << vu_devices::vsock::F_SEQPACKET);
    assert_eq!(dev.num_queues(), 3);
    let mut g = Guest::new(dev, 2);
    assert_eq!(g.fe.get_config(0, 8), 42u64.to_le_bytes());
    assert_eq!(g.fe.get_config(0, 4), 42u32.to_le_bytes());
    assert_eq!(g.fe.get_config(4, 4), [0; 4]);
    assert!(g.fe.set_config(0, &[1]).is_err(), "read-only");
    let st = g.dev.status_fields();
    assert!(st.contains(&("guest_cid".to_string(), "42".to_string())));
    assert!(st.iter().any(|(k, _)| k == "dropped_spoofed"));
}

#[test]
fn bad_configurations_are_refused() {
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32] {
        assert!(matches!(
            VsockDevice::new(VsockConfig::new(cid)),
            Err(VsockError::BadCid(_))
        ));
    }
    let mut c = VsockConfig::new(3);
    c.queue_size = 100;
    assert!(matches!(
        VsockDevice::new(c),
        Err(VsockError::BadQueueSize(100))
    ));
    let mut c = VsockConfig::new(3);
    c.tx_buffer_size = 0;
    assert!(VsockDevice::new(c).is_err());
    let mut c = VsockConfig::new(3);
    c.max_connections = 0;
    assert!(VsockDevice::new(c).is_err());
}

#[test]
fn with_three_queues_a_fresh_device_sends_one_transport_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = Guest::new(device(&dir.path().join("v.sock")), 3);
    assert_eq!(
        event(&mut g, Duration::from_secs(10)),
        Some(0),
        "TRANSPORT_RESET"
    );
    assert_eq!(event(&mut g, Duration::from_millis(200)), None, "only once");
    assert_eq!(g.dev.stats().transport_resets, 1);
}

#[test]
fn a_restore_drops_connections_and_resets_the_transport() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.sock");
    let mut g = Guest::new(device(&path), 3);
    assert_eq!(event(&mut g, Duration::from_secs(10)), Some(0));
    let (mut host, _st) = host_connection(&mut g, &path, 9);

    g.fe.handler.sleep().expect("sleep");
    let snap = g.fe.handler.snapshot().expect("snapshot");
    // A snapshot that does not decode changes nothing.
    assert!(g.fe.handler.restore(&snap[..snap.len() - 3]).is_err());
    assert_eq!(g.dev.stats().active_connections, 1);
    g.fe.handler.restore(&snap).expect("restore");
    g.fe.handler.wake().expect("wake");
    assert_eq!(host_line(&mut host), None, "the host stream closed");
    assert_eq!(g.dev.stats().active_connections, 0);
    assert_eq!(event(&mut g, Duration::from_secs(10)), Some(0));
    // New connections work.
    let _ = host_connection(&mut g, &path, 10);
}

#[test]
fn a_reconnecting_front_end_finds_a_clean_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.sock");
    let dev = device(&path);
    let mut g = Guest::new(dev.clone(), 3);
    assert_eq!(event(&mut g, Duration::from_secs(10)), Some(0));
    let (mut host, _st) = host_connection(&mut g, &path, 9);
    g.fe.handler.disconnect();
    drop(g);
    assert_eq!(host_line(&mut host), None, "the host stream closed");
    let mut g = Guest::new(dev, 3);
    assert_eq!(event(&mut g, Duration::from_secs(10)), Some(0));
    let _ = host_connection(&mut g, &path, 11);
}

#[test]
fn connections_survive_sleep_and_wake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.sock");
    let mut g = Guest::new(device(&path), 2);
    let (mut host, mut st) = host_connection(&mut g, &path, 12);
    g.fe.handler.sleep().expect("sleep");
    host_write(&mut host, b"zzz");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(g.poll(), 0);
    g.fe.handler.wake().expect("wake");
    assert_eq!(st.read_exact(&mut g, 3, |p| panic!("{:?}", p.h)), b"zzz");
    assert_eq!(g.dev.stats().active_connections, 1);
}
