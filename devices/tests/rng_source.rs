//! The entropy source's ups and downs: a regular file that ends gives exactly its bytes (none
//! made up), status says "eof", the requests wait and are served when the file grows; a pipe
//! with nothing to read makes requests wait for it without spinning; `drain` (sleep, stop)
//! completes held requests empty.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{thread_activity, Buf, Frontend};
use vu_devices::rng::{RngConfig, RngDevice, SourceKind, SourceState};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn rng(source: File, queue_size: u16) -> (Frontend, Arc<RngDevice>) {
    let mut cfg = RngConfig::new(source);
    cfg.queue_size = queue_size;
    let dev = RngDevice::new(cfg).expect("device");
    (Frontend::new(dev.clone(), 1, queue_size), dev)
}

fn wait_state(dev: &RngDevice, want: &SourceState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.source_state() != *want {
        assert!(
            Instant::now() < deadline,
            "source state {} never became {want}",
            dev.source_state()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn status(dev: &RngDevice, key: &str) -> String {
    use vu_core::VhostUserDevice;
    dev.status_fields()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

#[test]
fn a_file_that_ends_gives_exactly_its_bytes_then_waits_until_it_grows() {
    let _g = serial();
    let tmp = tempfile::NamedTempFile::new().expect("tempfile");
    let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    std::fs::write(tmp.path(), &content).expect("write");
    let (mut fe, dev) = rng(File::open(tmp.path()).expect("open"), 4);
    assert_eq!(dev.source_kind(), SourceKind::File);
    let chains: Vec<Vec<Buf>> = (0..4).map(|_| vec![Buf::In(4096)]).collect();
    let subs = fe.submit_batch(0, &chains);
    fe.kick(0);
    let done = fe.wait(0, 3);
    let lens: Vec<u32> = done.iter().map(|d| d.1).collect();
    assert_eq!(lens, vec![4096, 4096, 10_000 - 8192]);
    let mut served = Vec::new();
    for (s, (_, used)) in subs.iter().zip(&done) {
        served.extend(fe.written(s, *used));
    }
    assert_eq!(
        served, content,
        "the file's bytes, in order, and nothing else"
    );
    // The fourth request waits: no bytes are made up.
    wait_state(&dev, &SourceState::Eof);
    assert_eq!(status(&dev, "source"), "eof");
    assert!(fe.try_wait(0, 1, Duration::from_millis(300)).is_empty());
    assert!(
        fe.read(subs[3].writable[0].0, 4096)
            .iter()
            .all(|&b| b == 0xee),
        "nothing written into the waiting request"
    );
    // The file grows: the retry finds the new bytes (retries back off to at most 5 s).
    let more = b"appended entropy";
    OpenOptions::new()
        .append(true)
        .open(tmp.path())
        .expect("reopen")
        .write_all(more)
        .expect("append");
    let last = fe.try_wait(0, 1, Duration::from_secs(20));
    assert_eq!(last, vec![(u32::from(subs[3].head), more.len() as u32)]);
    assert_eq!(fe.written(&subs[3], more.len() as u32), more);
    wait_state(&dev, &SourceState::Ok);
    let st = dev.stats();
    assert_eq!(st.bytes_total, 10_000 + more.len() as u64);
    assert!(st.source_eof_total >= 1);
    assert_eq!(st.source_errors_total, 0);
}

#[test]
fn a_pipe_with_nothing_to_read_makes_requests_wait_without_spinning() {
    let _g = serial();
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let (mut fe, dev) = rng(File::from(r), 8);
    assert_eq!(dev.source_kind(), SourceKind::Fifo);
    let mut w = File::from(w);
    let subs = fe.submit_batch(0, &[vec![Buf::In(64)], vec![Buf::In(64)]]);
    let (sw0, cpu0) = thread_activity("rng-q0");
    fe.kick(0);
    assert!(fe.try_wait(0, 1, Duration::from_millis(500)).is_empty());
    let (sw1, cpu1) = thread_activity("rng-q0");
    assert!(
        sw1 - sw0 <= 10,
        "{} context switches while waiting",
        sw1 - sw0
    );
    assert!(cpu1 - cpu0 <= 5, "{} CPU ticks while waiting", cpu1 - cpu0);
    assert!(dev.stats().source_waits_total >= 1);
    assert_eq!(dev.source_state(), SourceState::Ok, "EAGAIN is no failure");
    // 100 bytes arrive: one read fills the first request and 36 bytes of the second.
    let data: Vec<u8> = (0..100u8).collect();
    w.write_all(&data).expect("write pipe");
    let done = fe.wait(0, 2);
    assert_eq!(done[0], (u32::from(subs[0].head), 64));
    assert_eq!(done[1], (u32::from(subs[1].head), 36));
    let mut got = fe.written(&subs[0], 64);
    got.extend(fe.written(&subs[1], 36));
    assert_eq!(got, data);
    // The writer goes away: end of file.
    let s = fe.submit(0, &[Buf::In(64)]);
    fe.kick(0);
    drop(w);
    wait_state(&dev, &SourceState::Eof);
    // Sleep drains: the held request completes empty.
    fe.handler.sleep().expect("sleep");
    let drained = fe.try_wait(0, 1, Duration::from_secs(5));
    assert_eq!(drained, vec![(u32::from(s.head), 0)]);
    fe.handler.wake().expect("wake");
    assert_eq!(dev.stats().bytes_total, 100);
}

#[test]
fn stopping_the_ring_completes_held_requests_empty() {
    let _g = serial();
    let (r, _w) = nix::unistd::pipe().expect("pipe");
    let (mut fe, dev) = rng(File::from(r), 8);
    let subs = fe.submit_batch(0, &[vec![Buf::In(64)], vec![Buf::In(64)]]);
    fe.kick(0);
    // Both are taken and held, waiting for the pipe.
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.stats().source_waits_total == 0 {
        assert!(Instant::now() < deadline, "the device never read the pipe");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(fe.stop_ring(0), 2, "GET_VRING_BASE after both were taken");
    let done = fe.try_wait(0, 2, Duration::from_secs(5));
    assert_eq!(
        done,
        vec![(u32::from(subs[0].head), 0), (u32::from(subs[1].head), 0)]
    );
    assert_eq!(dev.stats().requests_total, 2);
}
