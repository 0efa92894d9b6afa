//! A small device for conformance tests: "echo/xor".
//!
//! Each request's device-readable bytes are XORed with a per-queue key and written into its
//! device-writable bytes; the used length is the number of bytes written. The device has a
//! 16-byte config space (bytes 0..8 read-only, 8..16 writable), records every call the core
//! makes (features, queue start/stop, reset, sleep/wake, config writes), logs every completion,
//! and can *hold* requests: they are taken from the ring but not completed until released, to
//! have requests in flight at a chosen moment (drain, crash, inflight tracking).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vu_core::{DeviceError, Progress, QueueHandler, QueueIo, VhostUserDevice};

/// Device-specific feature bits the test device offers (bits 0 and 5, like a real device
/// would offer its own low bits).
pub const TEST_DEVICE_FEATURES: u64 = (1 << 0) | (1 << 5);
/// Size of the config space.
pub const CONFIG_SIZE: usize = 16;
/// Bytes `0..CONFIG_RO_LEN` of the config space are read-only.
pub const CONFIG_RO_LEN: usize = 8;
/// The read-only part of the config space.
pub const CONFIG_MAGIC: [u8; CONFIG_RO_LEN] = *b"vu-test\x01";
/// Name of the device (queue worker threads are called `echo-q<N>`).
pub const DEVICE_NAME: &str = "echo";
/// Largest request the device reads (bigger requests are truncated to this).
const MAX_REQUEST: usize = 1 << 16;

/// The XOR key of queue `queue`.
pub fn xor_key(queue: usize) -> u8 {
    0x5a ^ (queue as u8).wrapping_mul(0xff)
}

/// What the device answers to `request` on `queue`, given `writable` bytes of room.
pub fn expected_response(queue: usize, request: &[u8], writable: usize) -> Vec<u8> {
    request
        .iter()
        .take(writable)
        .map(|b| b ^ xor_key(queue))
        .collect()
}

/// A call the core made into the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `set_features(features)`.
    SetFeatures(u64),
    /// `start_queue(index)`.
    StartQueue(usize),
    /// `stop_queue(index)`.
    StopQueue(usize),
    /// `reset()`.
    Reset,
    /// `sleep()`.
    Sleep,
    /// `wake()`.
    Wake,
    /// A successful `write_config(offset, data)`.
    WriteConfig(usize, Vec<u8>),
}

/// What a queue does with held requests when the core drains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainMode {
    /// Complete them (a well-behaved device).
    Complete,
    /// Forget them without completing: simulates a device process that died with requests in
    /// flight (only the inflight area remembers them).
    Abandon,
}

/// One completed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Queue index.
    pub queue: usize,
    /// Head descriptor index.
    pub head: u16,
    /// The readable bytes of the request.
    pub request: Vec<u8>,
    /// Used length reported.
    pub len: u32,
}

#[derive(Debug)]
struct Inner {
    calls: Vec<Call>,
    config: [u8; CONFIG_SIZE],
    completions: Vec<Completion>,
    held: Vec<usize>,
    hold: bool,
    drain_mode: DrainMode,
    release: Vec<Option<Arc<EventFd>>>,
    /// Per queue: the heads the next release completes (empty: all).
    release_only: Vec<Vec<u16>>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.cond.notify_all();
    }
}

fn default_config() -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[..CONFIG_RO_LEN].copy_from_slice(&CONFIG_MAGIC);
    c
}

/// The echo/xor test device.
#[derive(Debug, Clone)]
pub struct TestDevice {
    num_queues: usize,
    max_queue_size: u16,
    shared: Arc<Shared>,
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new(2)
    }
}

impl TestDevice {
    /// A device with `num_queues` queues.
    pub fn new(num_queues: usize) -> Self {
        TestDevice {
            num_queues,
            max_queue_size: 1024,
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    calls: Vec::new(),
                    config: default_config(),
                    completions: Vec::new(),
                    held: vec![0; num_queues],
                    hold: false,
                    drain_mode: DrainMode::Complete,
                    release: vec![None; num_queues],
                    release_only: vec![Vec::new(); num_queues],
                }),
                cond: Condvar::new(),
            }),
        }
    }

    /// Sets the largest queue size the device accepts.
    pub fn with_max_queue_size(mut self, size: u16) -> Self {
        self.max_queue_size = size;
        self
    }

    /// Every call the core made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.shared.lock().calls.clear();
    }

    /// Every completion so far, in completion order.
    pub fn completions(&self) -> Vec<Completion> {
        self.shared.lock().completions.clone()
    }

    /// Number of completions so far.
    pub fn completion_count(&self) -> usize {
        self.shared.lock().completions.len()
    }

    /// The current config space.
    pub fn config(&self) -> [u8; CONFIG_SIZE] {
        self.shared.lock().config
    }

    /// While set, requests are taken from the ring but not completed until `release`.
    pub fn set_hold(&self, hold: bool) {
        self.shared.lock().hold = hold;
    }

    /// How held requests are treated when the core drains a queue.
    pub fn set_drain_mode(&self, mode: DrainMode) {
        self.shared.lock().drain_mode = mode;
    }

    /// Requests currently held on `queue`.
    pub fn held(&self, queue: usize) -> usize {
        self.shared.lock().held.get(queue).copied().unwrap_or(0)
    }

    /// Completes the requests held on `queue` (on the queue's worker thread). Returns false
    /// if the queue is not running.
    pub fn release(&self, queue: usize) -> bool {
        let fd = self.shared.lock().release.get(queue).cloned().flatten();
        match fd {
            Some(fd) => fd.write(1).is_ok(),
            None => false,
        }
    }

    /// Completes only the held requests with these heads on `queue` (out of order, if the
    /// driver looks at it that way). Returns false if the queue is not running.
    pub fn release_heads(&self, queue: usize, heads: &[u16]) -> bool {
        if let Some(r) = self.shared.lock().release_only.get_mut(queue) {
            *r = heads.to_vec();
        }
        self.release(queue)
    }

    /// Stops holding and completes everything held.
    pub fn release_all(&self) {
        self.set_hold(false);
        for q in 0..self.num_queues {
            self.release(q);
        }
    }

    /// Waits until `pred` holds for the device state, or `timeout` passes.
    fn wait(&self, timeout: Duration, what: &str, pred: impl Fn(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        loop {
            if pred(&g) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                eprintln!("timed out waiting for {what}; device state: {g:?}");
                return false;
            }
            g = self
                .shared
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until `n` requests are held on `queue`.
    pub fn wait_held(&self, queue: usize, n: usize, timeout: Duration) -> bool {
        self.wait(
            timeout,
            &format!("{n} held requests on queue {queue}"),
            |i| i.held.get(queue).copied() == Some(n),
        )
    }

    /// Waits until at least `n` completions were made.
    pub fn wait_completions(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, &format!("{n} completions"), |i| {
            i.completions.len() >= n
        })
    }

    /// Waits until a recorded call satisfies `pred`.
    pub fn wait_call(&self, timeout: Duration, pred: impl Fn(&Call) -> bool) -> bool {
        self.wait(timeout, "a device call", |i| i.calls.iter().any(&pred))
    }

    fn record(&self, call: Call) {
        self.shared.lock().calls.push(call);
        self.shared.changed();
    }
}

impl VhostUserDevice for TestDevice {
    fn name(&self) -> &str {
        DEVICE_NAME
    }

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> u16 {
        self.max_queue_size
    }

    fn device_features(&self) -> u64 {
        TEST_DEVICE_FEATURES
    }

    fn set_features(&self, features: u64) -> Result<(), DeviceError> {
        self.record(Call::SetFeatures(features));
        Ok(())
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let g = self.shared.lock();
        let end = (offset + buf.len()).min(CONFIG_SIZE);
        if offset < end {
            buf[..end - offset].copy_from_slice(&g.config[offset..end]);
        }
    }

    fn write_config(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        if offset < CONFIG_RO_LEN {
            return Err(DeviceError::InvalidArgument(format!(
                "config bytes {offset}..{CONFIG_RO_LEN} are read-only"
            )));
        }
        let end = offset
            .checked_add(data.len())
            .filter(|&e| e <= CONFIG_SIZE)
            .ok_or_else(|| DeviceError::InvalidArgument("config range".into()))?;
        let mut g = self.shared.lock();
        g.config[offset..end].copy_from_slice(data);
        g.calls.push(Call::WriteConfig(offset, data.to_vec()));
        drop(g);
        self.shared.changed();
        Ok(())
    }

    fn start_queue(&self, index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        if index >= self.num_queues {
            return Err(DeviceError::InvalidArgument(format!("queue {index}")));
        }
        let release = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(DeviceError::Io)?,
        );
        {
            let mut g = self.shared.lock();
            g.release[index] = Some(release.clone());
            g.held[index] = 0;
            g.calls.push(Call::StartQueue(index));
        }
        self.shared.changed();
        Ok(Box::new(EchoQueue {
            index,
            shared: self.shared.clone(),
            held: Vec::new(),
            release,
        }))
    }

    fn stop_queue(&self, index: usize) {
        {
            let mut g = self.shared.lock();
            if let Some(r) = g.release.get_mut(index) {
                *r = None;
            }
            g.calls.push(Call::StopQueue(index));
        }
        self.shared.changed();
    }

    fn reset(&self) {
        {
            let mut g = self.shared.lock();
            g.config = default_config();
            g.calls.push(Call::Reset);
        }
        self.shared.changed();
    }

    fn sleep(&self) -> Result<(), DeviceError> {
        self.record(Call::Sleep);
        Ok(())
    }

    fn wake(&self) -> Result<(), DeviceError> {
        self.record(Call::Wake);
        Ok(())
    }
}

/// Per-queue logic of the test device.
struct EchoQueue {
    index: usize,
    shared: Arc<Shared>,
    held: Vec<u16>,
    release: Arc<EventFd>,
}

impl EchoQueue {
    fn finish(&self, q: &mut QueueIo, head: u16) {
        let chain = q.chain(head);
        let n = (chain.readable_len() as usize).min(MAX_REQUEST);
        let mut request = vec![0u8; n];
        let got = chain.read_at(0, &mut request);
        request.truncate(got);
        let room = chain.writable_len() as usize;
        let response = expected_response(self.index, &request, room);
        let written = chain.write_at(0, &response) as u32;
        q.complete(head, written);
        self.shared.lock().completions.push(Completion {
            queue: self.index,
            head,
            request,
            len: written,
        });
        self.shared.changed();
    }

    fn publish_held(&self) {
        if let Some(h) = self.shared.lock().held.get_mut(self.index) {
            *h = self.held.len();
        }
        self.shared.changed();
    }
}

impl QueueHandler for EchoQueue {
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.release.as_raw_fd()]
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while let Some(head) = q.pop() {
            if self.shared.lock().hold {
                self.held.push(head);
                self.publish_held();
            } else {
                self.finish(q, head);
            }
        }
        Progress::Drained
    }

    fn handle_event(&mut self, _index: usize, q: &mut QueueIo) {
        let _ = self.release.read();
        let only = self
            .shared
            .lock()
            .release_only
            .get_mut(self.index)
            .map(std::mem::take)
            .unwrap_or_default();
        for head in std::mem::take(&mut self.held) {
            if only.is_empty() || only.contains(&head) {
                self.finish(q, head);
            } else {
                self.held.push(head);
            }
        }
        self.publish_held();
    }

    fn in_flight(&self) -> usize {
        self.held.len()
    }

    fn drain(&mut self, q: &mut QueueIo) {
        let mode = self.shared.lock().drain_mode;
        match mode {
            DrainMode::Complete => {
                for head in std::mem::take(&mut self.held) {
                    self.finish(q, head);
                }
            }
            DrainMode::Abandon => self.held.clear(),
        }
        self.publish_held();
    }
}
