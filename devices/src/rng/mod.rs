//! virtio-rng (virtio 1.2, section 5.4; device id 4): one request queue whose buffers the
//! device fills with bytes from an entropy source. No feature bits, no config space.
//!
//! `source.rs` holds the source descriptor (opened by the launcher, never by the device),
//! `limiter.rs` the `--max-bytes`/`--period` rate limit, `queue.rs` the queue handler (how
//! requests are filled, and how it waits for the limit or the source without spinning) and
//! `stats.rs` the counters and the source's health.

mod error;
mod limiter;
mod metrics;
mod queue;
mod source;
mod stats;

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vu_core::{DeviceError, QueueHandler, VhostUserDevice};

pub use error::RngError;
pub use limiter::MAX_PERIOD;
pub use queue::MAX_REQUEST_BYTES;
pub use source::SourceKind;
pub use stats::{RngStats, SourceState};

use limiter::RateLimiter;
use source::Source;
use stats::Counters;

/// Name of the device (logs, snapshots; its queue worker is the thread `rng-q0`).
pub const DEVICE_NAME: &str = "rng";
/// The virtio device id of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// A sensible largest queue size (QEMU's vhost-user-rng-pci uses 4; rust-vmm's
/// vhost-device-rng accepts up to 1024).
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;

/// What to serve and how.
#[derive(Debug)]
pub struct RngConfig {
    /// The entropy source, opened by the caller for reading: a character device
    /// (/dev/urandom, /dev/hwrng), a regular file, a FIFO or a socket. Anything but a regular
    /// file is switched to O_NONBLOCK if it is not already.
    pub source: File,
    /// Largest queue size the front-end may set (a power of two, 1..=32768).
    pub queue_size: u16,
    /// Rate limit: at most this many bytes per `period` (> 0). Give both or neither.
    pub max_bytes: Option<u64>,
    /// Rate limit period (0 < period <= `MAX_PERIOD`). Give both or neither.
    pub period: Option<Duration>,
}

impl RngConfig {
    /// `source` with the default queue size and no rate limit.
    pub fn new(source: File) -> Self {
        RngConfig {
            source,
            queue_size: DEFAULT_QUEUE_SIZE,
            max_bytes: None,
            period: None,
        }
    }
}

/// What the device and its queue handler share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) source: Source,
    /// Kept here, not in the handler, so that a reconnect or a device reset does not hand
    /// out a fresh budget.
    pub(crate) limiter: Option<Mutex<RateLimiter>>,
    pub(crate) counters: Counters,
}

/// A virtio-rng device.
#[derive(Debug)]
pub struct RngDevice {
    shared: Arc<Shared>,
    queue_size: u16,
}

fn check_config(cfg: &RngConfig) -> Result<Option<RateLimiter>, RngError> {
    let qs = cfg.queue_size;
    if !qs.is_power_of_two() {
        return Err(RngError::BadQueueSize(qs));
    }
    match (cfg.max_bytes, cfg.period) {
        (None, None) => Ok(None),
        (Some(_), None) | (None, Some(_)) => Err(RngError::HalfRateLimit),
        (Some(0), Some(_)) => Err(RngError::ZeroMaxBytes),
        (Some(_), Some(p)) if p.is_zero() || p > MAX_PERIOD => Err(RngError::BadPeriod(p)),
        (Some(n), Some(p)) => Ok(Some(RateLimiter::new(n, p))),
    }
}

impl RngDevice {
    /// Validates the configuration and the source and builds the device.
    pub fn new(cfg: RngConfig) -> Result<Arc<Self>, RngError> {
        let limiter = check_config(&cfg)?;
        let source = Source::new(cfg.source)?;
        Ok(Arc::new(RngDevice {
            shared: Arc::new(Shared {
                source,
                limiter: limiter.map(Mutex::new),
                counters: Counters::default(),
            }),
            queue_size: cfg.queue_size,
        }))
    }

    /// Counters since the device was built.
    pub fn stats(&self) -> RngStats {
        self.shared.counters.snapshot()
    }

    /// The source's health as the last read found it.
    pub fn source_state(&self) -> SourceState {
        self.shared.counters.state()
    }

    /// What the source descriptor is.
    pub fn source_kind(&self) -> SourceKind {
        self.shared.source.kind()
    }

    /// The rate limit: (bytes, period), if any.
    pub fn rate_limit(&self) -> Option<(u64, Duration)> {
        self.shared.limiter.as_ref().map(|l| {
            let l = l.lock().unwrap_or_else(|e| e.into_inner());
            (l.max_bytes(), l.period())
        })
    }
}

impl VhostUserDevice for RngDevice {
    fn name(&self) -> &str {
        DEVICE_NAME
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn device_features(&self) -> u64 {
        0
    }

    /// QEMU's vhost-user-rng reconnects without negotiating again and never re-sends the
    /// memory regions it added with ADD_MEM_REG: without CONFIGURE_MEM_SLOTS it sends the
    /// whole table (SET_MEM_TABLE) every time the device starts, also after a reconnect.
    fn withheld_protocol_features(&self) -> u64 {
        vu_core::message::protocol::CONFIGURE_MEM_SLOTS
    }

    fn start_queue(&self, index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        if index != 0 {
            return Err(DeviceError::InvalidArgument(format!(
                "queue {index} (the rng device has one queue)"
            )));
        }
        Ok(Box::new(queue::RngQueue::new(self.shared.clone())?))
    }

    /// The device has no state beyond its queue: an empty blob.
    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        Ok(Vec::new())
    }

    /// Accepts only what `snapshot` writes. The rate limit starts a fresh period.
    fn restore(&self, data: &[u8]) -> Result<(), DeviceError> {
        if !data.is_empty() {
            return Err(DeviceError::Restore(format!(
                "rng device state should be empty, the snapshot has {} bytes",
                data.len()
            )));
        }
        if let Some(l) = &self.shared.limiter {
            l.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        Ok(())
    }

    fn metrics(&self) -> Vec<vu_core::Metric> {
        metrics::metrics(
            &self.stats(),
            &self.source_state(),
            self.source_kind(),
            self.rate_limit(),
        )
    }

    fn status_fields(&self) -> Vec<(String, String)> {
        let st = self.stats();
        let mut f = vec![
            ("source".to_string(), self.source_state().to_string()),
            (
                "source_kind".to_string(),
                self.source_kind().as_str().to_string(),
            ),
        ];
        if let Some((n, p)) = self.rate_limit() {
            f.push(("max_bytes".to_string(), n.to_string()));
            f.push(("period_ms".to_string(), p.as_millis().to_string()));
        }
        for (k, v) in [
            ("bytes_total", st.bytes_total),
            ("requests_total", st.requests_total),
            ("empty_requests_total", st.empty_requests_total),
            ("rate_limit_waits_total", st.rate_limit_waits_total),
            ("source_waits_total", st.source_waits_total),
            ("source_eof_total", st.source_eof_total),
            ("source_errors_total", st.source_errors_total),
        ] {
            f.push((k.to_string(), v.to_string()));
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(queue_size: u16, max_bytes: Option<u64>, period_ms: Option<u64>) -> RngConfig {
        RngConfig {
            source: File::open("/dev/urandom").expect("urandom"),
            queue_size,
            max_bytes,
            period: period_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn configuration_checks() {
        for qs in [1, 2, 4, 256, 1024, 32768] {
            assert!(
                RngDevice::new(cfg(qs, None, None)).is_ok(),
                "queue size {qs}"
            );
        }
        for qs in [0, 3, 100, 32767] {
            assert!(matches!(
                RngDevice::new(cfg(qs, None, None)),
                Err(RngError::BadQueueSize(_))
            ));
        }
        assert!(matches!(
            RngDevice::new(cfg(4, Some(10), None)),
            Err(RngError::HalfRateLimit)
        ));
        assert!(matches!(
            RngDevice::new(cfg(4, None, Some(10))),
            Err(RngError::HalfRateLimit)
        ));
        assert!(matches!(
            RngDevice::new(cfg(4, Some(0), Some(10))),
            Err(RngError::ZeroMaxBytes)
        ));
        assert!(matches!(
            RngDevice::new(cfg(4, Some(1), Some(0))),
            Err(RngError::BadPeriod(_))
        ));
        assert!(matches!(
            RngDevice::new(cfg(4, Some(1), Some(u64::from(u32::MAX) + 1))),
            Err(RngError::BadPeriod(_))
        ));
        let d = RngDevice::new(cfg(4, Some(5000), Some(1000))).expect("device");
        assert_eq!(d.rate_limit(), Some((5000, Duration::from_secs(1))));
        assert_eq!(d.max_queue_size(), 4);
        assert_eq!(
            (d.num_queues(), d.device_features(), d.config_size()),
            (1, 0, 0)
        );
        assert!(d.start_queue(1).is_err());
        assert_eq!(
            d.withheld_protocol_features(),
            vu_core::message::protocol::CONFIGURE_MEM_SLOTS
        );
    }

    #[test]
    fn snapshot_is_empty_and_restore_refuses_anything_else() {
        let d = RngDevice::new(cfg(4, Some(10), Some(10))).expect("device");
        let s = d.snapshot().expect("snapshot");
        assert!(s.is_empty());
        d.restore(&s).expect("restore");
        assert!(d.restore(&[1]).is_err());
    }

    #[test]
    fn status_names_the_counters() {
        let d = RngDevice::new(cfg(4, Some(10), Some(250))).expect("device");
        let f = d.status_fields();
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("source"), Some("ok"));
        assert_eq!(get("source_kind"), Some("character device"));
        assert_eq!(get("max_bytes"), Some("10"));
        assert_eq!(get("period_ms"), Some("250"));
        assert_eq!(get("bytes_total"), Some("0"));
        assert_eq!(get("rate_limit_waits_total"), Some("0"));
    }
}
