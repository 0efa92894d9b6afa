//! The test device: two queues, a 16-byte config space, counters of what the core asked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vu_core::backend_client::ConfigNotifier;
use vu_core::{DeviceError, Progress, QueueHandler, QueueIo, VhostUserDevice};

use super::feat;

/// Initial config space: bytes 0x10..0x20. Bytes 0..8 are read-only, 8..16 writable.
pub const CONFIG_INIT: [u8; 16] = [
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
pub const MAX_QUEUE_SIZE: u16 = 256;
pub const NUM_QUEUES: usize = 2;

/// Two queues, a 16-byte config space, and a queue handler that completes every request
/// with length 0 (or, with `pattern`, writes the pattern into the writable buffers first and
/// completes with the bytes written).
#[derive(Debug)]
pub struct TestDevice {
    config: Mutex<[u8; 16]>,
    pattern: Option<Vec<u8>>,
    /// Core protocol features the device withholds.
    pub withheld: u64,
    notifier: Mutex<Option<Arc<ConfigNotifier>>>,
    pub features: Mutex<Vec<u64>>,
    pub resets: AtomicUsize,
    pub starts: AtomicUsize,
    pub stops: AtomicUsize,
}

impl TestDevice {
    pub fn new() -> Self {
        TestDevice {
            config: Mutex::new(CONFIG_INIT),
            pattern: None,
            withheld: 0,
            notifier: Mutex::new(None),
            features: Mutex::new(Vec::new()),
            resets: AtomicUsize::new(0),
            starts: AtomicUsize::new(0),
            stops: AtomicUsize::new(0),
        }
    }

    pub fn with_pattern(pattern: &[u8]) -> Self {
        TestDevice {
            pattern: Some(pattern.to_vec()),
            ..TestDevice::new()
        }
    }

    pub fn config(&self) -> [u8; 16] {
        *self.config.lock().expect("config lock")
    }

    pub fn has_notifier(&self) -> bool {
        self.notifier.lock().expect("notifier lock").is_some()
    }
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new()
    }
}

struct TestQueue {
    pattern: Option<Vec<u8>>,
}

impl QueueHandler for TestQueue {
    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while let Some(head) = q.pop() {
            let len = match &self.pattern {
                Some(p) => q.chain(head).write_at(0, p) as u32,
                None => 0,
            };
            q.complete(head, len);
        }
        Progress::Drained
    }
}

impl VhostUserDevice for TestDevice {
    fn name(&self) -> &str {
        "test"
    }

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn device_features(&self) -> u64 {
        feat::DEVICE_BIT
    }

    fn withheld_protocol_features(&self) -> u64 {
        self.withheld
    }

    fn set_features(&self, features: u64) -> Result<(), DeviceError> {
        self.features.lock().expect("features lock").push(features);
        Ok(())
    }

    fn config_size(&self) -> usize {
        16
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let c = self.config.lock().expect("config lock");
        buf.copy_from_slice(&c[offset..offset + buf.len()]);
    }

    fn write_config(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        if offset < 8 {
            return Err(DeviceError::Unsupported("bytes 0..8 are read-only"));
        }
        let mut c = self.config.lock().expect("config lock");
        c[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn start_queue(&self, _index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(TestQueue {
            pattern: self.pattern.clone(),
        }))
    }

    fn stop_queue(&self, _index: usize) {
        self.stops.fetch_add(1, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
        *self.config.lock().expect("config lock") = CONFIG_INIT;
    }

    fn set_config_notifier(&self, notifier: Arc<ConfigNotifier>) {
        *self.notifier.lock().expect("notifier lock") = Some(notifier);
    }
}
