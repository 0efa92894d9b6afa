//! The rate limit (`max_bytes` per `period`): requests are filled partly with what is left of
//! the period's budget, wait for the next period without spinning (the worker sleeps until
//! its timer), and the device never serves more than the limit.
//!
//! The tests measure the worker thread `rng-q0` through /proc, so they run one at a time.

mod common;

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{thread_activity, Buf, Frontend};
use vu_devices::rng::{RngConfig, RngDevice};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn rng(queue_size: u16, max_bytes: u64, period_ms: u64) -> (Frontend, Arc<RngDevice>) {
    let cfg = RngConfig {
        source: File::open("/dev/urandom").expect("urandom"),
        queue_size,
        max_bytes: Some(max_bytes),
        period: Some(Duration::from_millis(period_ms)),
    };
    let dev = RngDevice::new(cfg).expect("device");
    (Frontend::new(dev.clone(), 1, queue_size), dev)
}

#[test]
fn requests_are_filled_partly_then_wait_for_the_next_period() {
    let _g = serial();
    let period = Duration::from_millis(400);
    let (mut fe, dev) = rng(8, 1000, 400);
    let chains: Vec<Vec<Buf>> = (0..3).map(|_| vec![Buf::In(600)]).collect();
    let start = Instant::now();
    let subs = fe.submit_batch(0, &chains);
    fe.kick(0);
    // The first period's 1000 bytes: 600, then 400 of the second request.
    let first = fe.wait(0, 2);
    assert_eq!(first[0], (u32::from(subs[0].head), 600));
    assert_eq!(first[1], (u32::from(subs[1].head), 400));
    let partial = fe.written(&subs[1], 400);
    assert!(partial.iter().filter(|&&b| b == 0xee).count() < 8);
    assert!(
        fe.read(subs[1].writable[0].0 + 400, 200)
            .iter()
            .all(|&b| b == 0xee),
        "nothing past the budget"
    );
    // The third waits for the next period.
    let third = fe.wait(0, 1);
    let waited = start.elapsed();
    assert_eq!(third[0], (u32::from(subs[2].head), 600));
    assert!(
        waited >= period - Duration::from_millis(20),
        "served after {waited:?}, before the period of {period:?} ended"
    );
    let st = dev.stats();
    assert_eq!((st.bytes_total, st.requests_total), (1600, 3));
    assert!(st.rate_limit_waits_total >= 1);
}

#[test]
fn waiting_for_the_budget_does_not_spin() {
    let _g = serial();
    // 1000 bytes per 200 ms; eight requests of 1000 bytes need eight periods (1.4 s after
    // the first).
    let (mut fe, dev) = rng(16, 1000, 200);
    let chains: Vec<Vec<Buf>> = (0..8).map(|_| vec![Buf::In(1000)]).collect();
    let (sw0, cpu0) = thread_activity("rng-q0");
    let start = Instant::now();
    fe.submit_batch(0, &chains);
    fe.kick(0);
    let done = fe.try_wait(0, 8, Duration::from_secs(30));
    let elapsed = start.elapsed();
    let (sw1, cpu1) = thread_activity("rng-q0");
    assert_eq!(done.len(), 8);
    assert!(done.iter().all(|d| d.1 == 1000));
    assert!(
        elapsed >= Duration::from_millis(1380),
        "8 periods' worth in {elapsed:?}"
    );
    // One wake-up per period (the timer), plus the kick and a little slack for preemption
    // on a loaded machine; a worker that polled would switch or burn CPU far more.
    let periods = elapsed.as_millis() as u64 / 200 + 1;
    eprintln!(
        "{periods} periods: {} context switches, {} CPU ticks",
        sw1 - sw0,
        cpu1 - cpu0
    );
    assert!(
        sw1 - sw0 <= 3 * periods + 10,
        "{} context switches over {periods} periods",
        sw1 - sw0
    );
    assert!(
        cpu1 - cpu0 <= 20,
        "{} ticks of CPU while waiting",
        cpu1 - cpu0
    );
    assert_eq!(dev.stats().rate_limit_waits_total, 7);
}

#[test]
fn a_steady_stream_never_exceeds_the_limit() {
    let _g = serial();
    // 4 KiB per 100 ms, a driver that keeps four 512-byte requests outstanding.
    let (max, period) = (4096u64, Duration::from_millis(100));
    let (mut fe, dev) = rng(4, max, 100);
    let start = Instant::now();
    let mut bytes = 0u64;
    for _ in 0..4 {
        fe.submit(0, &[Buf::In(512)]);
    }
    fe.kick(0);
    while start.elapsed() < Duration::from_millis(1000) {
        let got = fe.try_wait(0, 1, Duration::from_millis(50));
        for (_, used) in &got {
            bytes += u64::from(*used);
            fe.submit(0, &[Buf::In(512)]);
        }
        if !got.is_empty() {
            fe.kick(0);
        }
    }
    // Everything the device served since it was built, over a time that covers it.
    let served = dev.stats().bytes_total;
    let elapsed = start.elapsed();
    let windows = (elapsed.as_nanos() / period.as_nanos()) as u64 + 1;
    assert!(
        served <= windows * max,
        "{served} bytes in {elapsed:?}: more than {max} per {period:?}"
    );
    assert!(bytes >= 3 * max, "only {bytes} bytes in {elapsed:?}");
}

#[test]
fn requests_waiting_for_the_budget_stay_in_the_ring_across_sleep() {
    let _g = serial();
    let (mut fe, dev) = rng(8, 100, 60_000);
    let chains: Vec<Vec<Buf>> = (0..3).map(|_| vec![Buf::In(100)]).collect();
    fe.submit_batch(0, &chains);
    fe.kick(0);
    let first = fe.wait(0, 1);
    assert_eq!(first[0].1, 100);
    // The budget is spent for a minute: the other two are not taken from the ring.
    assert!(fe.try_wait(0, 1, Duration::from_millis(200)).is_empty());
    fe.handler.sleep().expect("sleep");
    assert!(fe.try_wait(0, 1, Duration::from_millis(100)).is_empty());
    fe.handler.wake().expect("wake");
    assert!(fe.try_wait(0, 1, Duration::from_millis(200)).is_empty());
    // The ring stops where the device stopped taking: right after the first request.
    assert_eq!(fe.stop_ring(0), 1);
    let st = dev.stats();
    assert_eq!((st.bytes_total, st.requests_total), (100, 1));
}
