//! Keeps `vu-bench rng` working: its library code against our rng device served in-process,
//! for a small number of requests. Checks counts, never timing.

use vu_tests::bench::rng::{run_rng, RngBenchConfig};
use vu_tests::bench::Notify;

#[test]
fn local_rng_device() {
    for (notify, event_idx, queue_size, iodepth, bs) in [
        (Notify::Call, true, 4, 4, 512),
        (Notify::Call, false, 64, 32, 4096),
        (Notify::Poll, true, 16, 8, 65536),
    ] {
        let cfg = RngBenchConfig {
            notify,
            event_idx,
            queue_size,
            iodepth,
            bs,
            check: true,
            requests: Some(2000),
            ..RngBenchConfig::default()
        };
        let r = run_rng(&cfg).expect("rng run");
        let t = r.table();
        assert_eq!(r.completed, 2000, "{t}");
        assert_eq!(r.bytes, 2000 * u64::from(bs), "{t}");
        assert_eq!((r.short, r.empty, r.unfilled), (0, 0, 0), "{t}");
        assert_eq!(r.event_idx, event_idx, "{t}");
        assert_eq!(r.latency.count(), 2000);
        assert!(r.server_cpu_s.is_some_and(|c| c >= 0.0));
        let j = r.json();
        assert!(j.starts_with('{') && j.ends_with('}'));
        assert!(j.contains("\"completed\":2000"), "{j}");
    }
}
