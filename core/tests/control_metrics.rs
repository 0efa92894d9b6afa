//! Device metrics on the control channel: a device's `metrics()` reach the supervisor in its
//! status report, and reports of another protocol version (the layout before
//! `DeviceReport::metrics`, or a later one) are refused by name, never misread.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vu_core::control::{
    decode, write_frame, ControlError, ControlTarget, DeviceReport, Envelope, QueueReport, Request,
    Response, CONTROL_VERSION,
};
use vu_core::device::{DeviceError, QueueHandler, VhostUserDevice};
use vu_core::handler::Handler;
use vu_core::{Metric, Unit};

struct Counting;

impl VhostUserDevice for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn num_queues(&self) -> usize {
        1
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn start_queue(&self, _index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        Err(DeviceError::Unsupported("no queues in this test"))
    }
    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::counter("counting_read", "Bytes read.", 42).unit(Unit::Bytes),
            Metric::gauge("counting_level", "A level.", -1.5).label("path", "a\"b\\c\nd"),
        ]
    }
}

#[test]
fn a_status_report_carries_the_device_metrics() {
    let target = ControlTarget {
        handler: Arc::new(Mutex::new(Handler::new(Arc::new(Counting)))),
        connected: Arc::new(AtomicBool::new(false)),
    };
    let Response::Status(report) = target.answer(Request::Status) else {
        panic!("no status report");
    };
    assert_eq!(report.metrics, Counting.metrics());
    // Through a frame and back, unchanged.
    let mut buf = Vec::new();
    write_frame(&mut buf, &Response::Status(report.clone())).expect("write");
    let back: Response = vu_core::control::read_frame(&mut buf.as_slice()).expect("read");
    assert_eq!(back, Response::Status(report));
}

/// `DeviceReport` as version 1 had it.
#[derive(Serialize, Deserialize)]
struct ReportV1 {
    device: String,
    frontend_connected: bool,
    asleep: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    memory_regions: usize,
    queues: Vec<QueueReport>,
    fields: Vec<(String, String)>,
}

/// `Response` as version 1 had it (same variants, the old report).
#[derive(Serialize, Deserialize)]
enum ResponseV1 {
    Ok,
    Pong,
    Status(ReportV1),
    Snapshot(Vec<u8>),
    Error(String),
}

fn report_v1() -> ReportV1 {
    ReportV1 {
        device: "block".into(),
        frontend_connected: true,
        asleep: false,
        acked_features: 1,
        acked_protocol_features: 2,
        memory_regions: 1,
        queues: vec![QueueReport::default()],
        fields: vec![("reads".into(), "7".into())],
    }
}

#[test]
fn an_older_report_is_refused_by_version() {
    let old = postcard::to_allocvec(&Envelope {
        version: 1,
        body: ResponseV1::Status(report_v1()),
    })
    .expect("encode");
    match decode::<Response>(&old) {
        Err(e @ ControlError::Version(1)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("version 1") && msg.contains(&format!("speaks {CONTROL_VERSION}")),
                "{msg}"
            );
        }
        other => panic!("an old report decoded as {other:?}"),
    }
    // The old layout under the new version number (a build that forgot to bump it) is a
    // decode error, not a report with made-up metrics.
    let mislabelled = postcard::to_allocvec(&Envelope {
        version: CONTROL_VERSION,
        body: ResponseV1::Status(report_v1()),
    })
    .expect("encode");
    assert!(matches!(
        decode::<Response>(&mislabelled),
        Err(ControlError::Decode(_))
    ));
}

#[test]
fn a_newer_report_is_not_misread_by_the_old_layout() {
    let report = DeviceReport {
        device: "block".into(),
        metrics: Counting.metrics(),
        ..DeviceReport::default()
    };
    let new = postcard::to_allocvec(&Envelope {
        version: CONTROL_VERSION,
        body: Response::Status(report),
    })
    .expect("encode");
    // A build of version 1 checks the version first...
    let (version, _) = postcard::take_from_bytes::<u16>(&new).expect("version");
    assert_ne!(version, 1);
    // ...and even without that check, the old layout leaves the metrics as trailing bytes,
    // which `decode` refuses.
    let (_, rest) =
        postcard::take_from_bytes::<Envelope<ResponseV1>>(&new).expect("old layout prefix");
    assert!(!rest.is_empty());
}

#[test]
fn truncated_or_garbled_metrics_are_decode_errors() {
    let report = DeviceReport {
        metrics: Counting.metrics(),
        ..DeviceReport::default()
    };
    let bytes = postcard::to_allocvec(&Envelope {
        version: CONTROL_VERSION,
        body: Response::Status(report),
    })
    .expect("encode");
    for cut in 1..bytes.len() {
        assert!(
            decode::<Response>(&bytes[..cut]).is_err(),
            "a frame cut at {cut} decoded"
        );
    }
    // An unknown metric type or unit (tag 9) is an error too.
    let mut tagged = bytes.clone();
    let needle = b"counting_level";
    let pos = tagged
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("name in frame");
    // After the name: the help (length byte + text), then the type tag.
    let help_len = usize::from(tagged[pos + needle.len()]);
    let type_at = pos + needle.len() + 1 + help_len;
    assert_eq!(tagged[type_at], 1, "gauge tag");
    tagged[type_at] = 9;
    assert!(matches!(
        decode::<Response>(&tagged),
        Err(ControlError::Decode(_))
    ));
}
