//! `launcher start --metrics`: the real exposition of a launcher serving a block and an rng
//! device passes `promtool check metrics` (syntax and Prometheus' naming lints), over HTTP and
//! through `launcher ctl metrics`, while the devices run, after one is stopped and after one
//! crashed; a bad address or one in use fails the start early and says why.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::metrics::{promtool_check, rig_config, sample, MetricsRig};
use common::{assert_fails, ctl_json, ctl_ok, launcher, output};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn assert_promtool_clean(text: &str, what: &str) {
    let (ok, said) = promtool_check(text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics on {what}: {said}\n{text}"
    );
}

/// Scrapes until `pred` holds (the supervisor has no event stream to wait on).
fn scrape_until(rig: &MetricsRig, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = rig.scrape();
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn real_output_passes_promtool_up_stopped_and_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = MetricsRig::start(dir.path());
    let disk = [("device", "disk0"), ("kind", "block")];
    let rng = [("device", "rng0"), ("kind", "rng")];

    let text = rig.scrape();
    assert_promtool_clean(&text, "a fresh launcher");
    let state = |t: &str, dev: &str, st: &str| {
        sample(t, "vu_device_state", &[("device", dev), ("state", st)])
    };
    assert_eq!(state(&text, "disk0", "running"), Some(1.0));
    assert_eq!(state(&text, "rng0", "running"), Some(1.0));
    assert_eq!(state(&text, "rng0", "failed"), Some(0.0));
    assert_eq!(
        sample(&text, "vu_block_capacity_bytes", &disk),
        Some((8u64 << 20) as f64)
    );
    assert_eq!(
        sample(&text, "vu_rng_source_state", &[rng[0], ("state", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "vu_queue_requests_total", &[disk[0], ("queue", "0")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "vu_device_frontend_connected", &disk),
        Some(0.0)
    );
    assert!(sample(&text, "vu_device_uptime_seconds", &disk).is_some_and(|s| s >= 0.0));

    // The same text through the control socket.
    let via_ctl = ctl_ok(&rig.control, &["metrics"]);
    assert_promtool_clean(&via_ctl, "`launcher ctl metrics`");
    let families = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("# TYPE"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(families(&via_ctl), families(&text));
    let json = ctl_json(&rig.control, &["metrics"]);
    assert!(json["metrics"]
        .as_str()
        .is_some_and(|m| m.contains("vu_device_state")));

    // A stopped device keeps its supervisor metrics; its own are gone.
    ctl_ok(&rig.control, &["stop", "rng0"]);
    let text = rig.scrape();
    assert_promtool_clean(&text, "a launcher with a stopped device");
    assert_eq!(state(&text, "rng0", "stopped"), Some(1.0));
    assert_eq!(state(&text, "rng0", "running"), Some(0.0));
    assert_eq!(sample(&text, "vu_device_crashes_total", &rng), Some(0.0));
    assert_eq!(sample(&text, "vu_device_uptime_seconds", &rng), Some(0.0));
    assert_eq!(
        sample(&text, "vu_device_frontend_connected", &rng),
        Some(0.0)
    );
    assert_eq!(sample(&text, "vu_rng_bytes_total", &rng), None);
    assert_eq!(sample(&text, "vu_queue_requests_total", &rng), None);
    assert!(sample(&text, "vu_block_reads_total", &disk).is_some());

    // A crash is counted, and the device is back.
    let st = ctl_json(&rig.control, &["status", "disk0"]);
    let pid = st["pid"].as_i64().expect("disk0 pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill the device");
    let text = scrape_until(&rig, "a counted crash with disk0 running again", |t| {
        sample(t, "vu_device_crashes_total", &disk) == Some(1.0)
            && state(t, "disk0", "running") == Some(1.0)
            && sample(t, "vu_block_reads_total", &disk).is_some()
    });
    assert_promtool_clean(&text, "a launcher after a crash");
    assert_eq!(sample(&text, "vu_device_restarts_total", &disk), Some(1.0));
}

#[test]
fn a_bad_or_busy_metrics_address_fails_the_start_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = rig_config(dir.path(), "");
    let start = |extra: &[&str]| {
        let mut c = launcher();
        c.args(["start", "--config"]).arg(&cfg).args(extra);
        c
    };
    let out = output(start(&["--metrics", "localhost"]));
    assert_fails(&out, 2, &["is not an ADDR:PORT address"]);

    // An address in use: exit 1 naming it, before any device process starts.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = output(start(&["--metrics", &addr]));
    let stderr = assert_fails(&out, 1, &[&format!("cannot listen for metrics on {addr}")]);
    assert!(
        stderr.to_ascii_lowercase().contains("in use"),
        "no cause: {stderr}"
    );
    assert!(!stderr.contains("device process started"), "{stderr}");
    assert!(!dir.path().join("disk0.sock").exists());

    // The config file's key, named in its error.
    let bad = rig_config(dir.path(), "metrics = \"127.0.0.1\"");
    let mut c = launcher();
    c.args(["start", "--config"]).arg(&bad);
    let out = output(c);
    assert_fails(&out, 1, &["key `metrics`", "is not an ADDR:PORT address"]);
}
