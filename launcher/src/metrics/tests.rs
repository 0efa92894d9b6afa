//! The supervisor's exposition: names, types, labels and escaping, devices up and down, and
//! hostile device reports. (promtool and a real Prometheus check real output in
//! `launcher/tests/metrics_*.rs`.)

use std::collections::HashMap;

use vu_core::control::{DeviceReport, QueueReport};
use vu_core::{Metric, Unit};

use super::collect::{render, MAX_DEVICE_METRICS, STATES};
use crate::supervisor::protocol::DeviceStatus;
use crate::supervisor::State;

/// One parsed sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the text format: HELP then TYPE then the family's samples, each
/// family once; label values unescaped. Panics on anything else.
fn parse(text: &str) -> (HashMap<String, (String, String)>, Vec<Sample>) {
    let mut families: HashMap<String, (String, String)> = HashMap::new();
    let mut samples = Vec::new();
    let mut current: Option<String> = None;
    let mut lines = text.lines().peekable();
    assert!(text.ends_with('\n'), "no final newline");
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("help text");
            let ty = lines.next().expect("TYPE after HELP");
            let ty = ty
                .strip_prefix(&format!("# TYPE {name} "))
                .unwrap_or_else(|| panic!("TYPE of {name}: {ty}"));
            assert!(["counter", "gauge"].contains(&ty), "{ty}");
            assert!(
                families
                    .insert(name.to_string(), (help.to_string(), ty.to_string()))
                    .is_none(),
                "family {name} twice"
            );
            if ty == "counter" {
                assert!(name.ends_with("_total"), "counter {name}");
            } else {
                assert!(!name.ends_with("_total"), "gauge {name}");
            }
            current = Some(name.to_string());
            continue;
        }
        let fam = current.as_deref().expect("a sample before any family");
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value: {line}"),
        };
        assert_eq!(name, fam, "sample outside its family: {line}");
        let (labels, value) = if let Some(body) = rest.strip_prefix('{') {
            parse_labels(body)
        } else {
            (Vec::new(), rest)
        };
        let value = value.strip_prefix(' ').expect("space before value");
        let v = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value {v:?}")),
        };
        samples.push((name.to_string(), labels, v));
    }
    (families, samples)
}

/// `a="x",b="y"} rest` -> labels and rest.
fn parse_labels(s: &str) -> (Vec<(String, String)>, &str) {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        let start = chars.peek().expect("label").0;
        let eq = s[start..].find('=').expect("=") + start;
        let name = &s[start..eq];
        assert!(super::render::is_label_name(name), "label {name:?}");
        for _ in start..=eq {
            chars.next();
        }
        assert_eq!(chars.next().map(|c| c.1), Some('"'));
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated value").1 {
                '\\' => match chars.next().expect("escape").1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => panic!("bad escape \\{c}"),
                },
                '"' => break,
                '\n' => panic!("raw newline in a label value"),
                c => value.push(c),
            }
        }
        labels.push((name.to_string(), value));
        match chars.next().expect("after value") {
            (_, ',') => continue,
            (i, '}') => return (labels, &s[i + 1..]),
            (_, c) => panic!("unexpected {c:?}"),
        }
    }
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|(n, l, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
    })
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .2
}

fn running_block() -> DeviceStatus {
    DeviceStatus {
        name: "disk0".into(),
        kind: "block".into(),
        socket: "/run/vm \"0\"/disk0\\.sock\nx".into(),
        state: "running".into(),
        pid: Some(42),
        uptime_ms: Some(2500),
        restarts: 2,
        crashes: 1,
        report: Some(DeviceReport {
            device: "block".into(),
            frontend_connected: true,
            queues: vec![
                QueueReport {
                    started: true,
                    enabled: true,
                    completed: 10,
                    bytes_from_driver: 4096,
                    bytes_to_driver: 8192,
                    chain_errors: 1,
                    kicks: 7,
                    notifications: 6,
                    in_flight: 2,
                },
                QueueReport::default(),
            ],
            metrics: vec![
                Metric::counter("block_reads", "Read requests.", 5),
                Metric::counter("block_read", "Read.", 1 << 20).unit(Unit::Bytes),
                Metric::counter("block_errors", "Errors.", 1).label("status", "ioerr"),
                Metric::counter("block_errors", "Errors.", 2).label("status", "unsupp"),
            ],
            ..DeviceReport::default()
        }),
        ..DeviceStatus::default()
    }
}

fn failed_rng() -> DeviceStatus {
    DeviceStatus {
        name: "rng0".into(),
        kind: "rng".into(),
        socket: "/run/rng0.sock".into(),
        state: "failed".into(),
        crashes: 6,
        restarts: 5,
        failure: Some("crashed".into()),
        ..DeviceStatus::default()
    }
}

#[test]
fn supervisor_queue_and_kind_metrics_are_exposed() {
    let text = render(&[running_block(), failed_rng()]);
    let (families, s) = parse(&text);
    let disk = [("device", "disk0"), ("kind", "block")];
    assert_eq!(value(&s, "vu_device_crashes_total", &disk), 1.0);
    assert_eq!(value(&s, "vu_device_restarts_total", &disk), 2.0);
    assert_eq!(value(&s, "vu_device_uptime_seconds", &disk), 2.5);
    assert_eq!(value(&s, "vu_device_frontend_connected", &disk), 1.0);
    assert_eq!(
        value(&s, "vu_device_state", &[disk[0], ("state", "running")]),
        1.0
    );
    assert_eq!(
        value(&s, "vu_device_state", &[disk[0], ("state", "failed")]),
        0.0
    );
    // The socket path with quotes, backslashes and a newline comes back intact.
    assert_eq!(
        value(
            &s,
            "vu_device_info",
            &[disk[0], ("socket", "/run/vm \"0\"/disk0\\.sock\nx")]
        ),
        1.0
    );
    let q0 = [disk[0], disk[1], ("queue", "0")];
    assert_eq!(value(&s, "vu_queue_requests_total", &q0), 10.0);
    assert_eq!(value(&s, "vu_queue_from_driver_bytes_total", &q0), 4096.0);
    assert_eq!(value(&s, "vu_queue_to_driver_bytes_total", &q0), 8192.0);
    assert_eq!(value(&s, "vu_queue_chain_errors_total", &q0), 1.0);
    assert_eq!(value(&s, "vu_queue_kicks_total", &q0), 7.0);
    assert_eq!(value(&s, "vu_queue_notifications_total", &q0), 6.0);
    assert_eq!(value(&s, "vu_queue_started", &q0), 1.0);
    assert_eq!(
        value(&s, "vu_queue_enabled", &[disk[0], ("queue", "1")]),
        0.0
    );
    // Kind metrics: prefixed, labelled, grouped.
    assert_eq!(value(&s, "vu_block_reads_total", &disk), 5.0);
    assert_eq!(value(&s, "vu_block_read_bytes_total", &disk), 1048576.0);
    assert_eq!(
        value(
            &s,
            "vu_block_errors_total",
            &[disk[0], ("status", "unsupp")]
        ),
        2.0
    );
    assert_eq!(families["vu_block_errors_total"].1, "counter");
    assert_eq!(families["vu_device_state"].1, "gauge");
    assert!(value(&s, "vu_build_info", &[]) == 1.0);
    // Labels come in the order device, kind, then the rest.
    let (_, labels, _) = find(&s, "vu_queue_kicks_total", &q0).expect("sample");
    let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["device", "kind", "queue"]);
}

#[test]
fn a_device_that_is_down_keeps_its_supervisor_metrics() {
    let (_, s) = parse(&render(&[failed_rng()]));
    let rng = [("device", "rng0"), ("kind", "rng")];
    assert_eq!(value(&s, "vu_device_crashes_total", &rng), 6.0);
    assert_eq!(value(&s, "vu_device_restarts_total", &rng), 5.0);
    assert_eq!(value(&s, "vu_device_uptime_seconds", &rng), 0.0);
    assert_eq!(value(&s, "vu_device_frontend_connected", &rng), 0.0);
    for st in STATES {
        let want = if st == State::Failed { 1.0 } else { 0.0 };
        assert_eq!(
            value(&s, "vu_device_state", &[rng[0], ("state", st.as_str())]),
            want
        );
    }
    assert!(find(&s, "vu_queue_requests_total", &rng).is_none());
    // A live device that did not answer: its front-end is unknown, not "disconnected".
    let mut silent = running_block();
    silent.report = None;
    silent.report_error = Some("timed out".into());
    let (_, s) = parse(&render(&[silent]));
    assert!(find(&s, "vu_device_frontend_connected", &[]).is_none());
    assert_eq!(value(&s, "vu_device_state", &[("state", "running")]), 1.0);
}

#[test]
fn hostile_device_metrics_are_dropped_without_breaking_the_output() {
    let mut d = running_block();
    let r = d.report.as_mut().expect("report");
    r.metrics = vec![
        Metric::counter("block_good", "Good.", 1).label("path", "a\"}\n{b\\"),
        // Not its kind's prefix, or posing as a supervisor metric.
        Metric::counter("rng_reads", "Wrong kind.", 1),
        Metric::counter("device_crashes", "Forged.", 0),
        // Reserved or malformed labels, malformed names, forbidden suffixes.
        Metric::counter("block_x", "Forged.", 1).label("device", "other"),
        Metric::counter("block_y", "Bad label.", 1).label("a b", "v"),
        Metric::counter("block_z\n# TYPE x counter", "Injected.", 1),
        Metric::counter("block_w_total", "Suffix.", 1),
        // The same name as a gauge after a counter; the same labels twice.
        Metric::gauge("block_good_total", "Clash.", 1.0),
        Metric::counter("block_good", "Good.", 9).label("path", "a\"}\n{b\\"),
        // Negative counter; NaN gauge is fine.
        Metric::counter("block_neg", "Neg.", 0),
        Metric::gauge("block_nan", "NaN.", f64::NAN),
    ];
    r.metrics[9].value = -1.0;
    let text = render(&[d.clone()]);
    let (families, s) = parse(&text);
    let block: Vec<&String> = families
        .keys()
        .filter(|k| k.starts_with("vu_block"))
        .collect();
    let mut block = block.into_iter().cloned().collect::<Vec<_>>();
    block.sort();
    assert_eq!(block, ["vu_block_good_total", "vu_block_nan"], "{text}");
    assert_eq!(
        value(&s, "vu_block_good_total", &[("path", "a\"}\n{b\\")]),
        1.0
    );
    assert!(value(&s, "vu_block_nan", &[]).is_nan());
    assert!(!text.contains("Forged") && !text.contains("Injected"));
    // Supervisor metrics are untouched.
    assert_eq!(
        value(&s, "vu_device_crashes_total", &[("device", "disk0")]),
        1.0
    );

    // A flood is capped.
    let r = d.report.as_mut().expect("report");
    r.metrics = (0..MAX_DEVICE_METRICS + 100)
        .map(|i| Metric::counter("block_many", "Many.", 1).label("i", &i.to_string()))
        .collect();
    let (_, s) = parse(&render(&[d]));
    let n = s.iter().filter(|x| x.0 == "vu_block_many_total").count();
    assert_eq!(n, MAX_DEVICE_METRICS);
}

#[test]
fn every_state_is_exposed() {
    // Fails to compile when a state is added: add it to STATES too.
    fn listed(s: State) -> bool {
        match s {
            State::Starting
            | State::Running
            | State::Asleep
            | State::Stopping
            | State::Stopped
            | State::Restarting
            | State::Failed => STATES.contains(&s),
        }
    }
    for s in STATES {
        assert!(listed(s));
    }
    assert_eq!(STATES.len(), 7);
}

#[test]
fn two_devices_of_a_kind_share_families() {
    let mut b = running_block();
    b.name = "disk1".into();
    let (families, s) = parse(&render(&[running_block(), b]));
    assert_eq!(families["vu_block_reads_total"].1, "counter");
    assert_eq!(
        s.iter().filter(|x| x.0 == "vu_block_reads_total").count(),
        2
    );
    assert_eq!(
        s.iter()
            .filter(|x| x.0 == "vu_queue_requests_total")
            .count(),
        4
    );
}
