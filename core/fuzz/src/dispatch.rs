//! `message_dispatch`: message sequences for `Handler::handle`, and the device it serves.

use std::sync::{Arc, Mutex};

use vu_core::backend_client::ConfigNotifier;
use vu_core::{DeviceError, Progress, QueueHandler, QueueIo, VhostUserDevice};

use crate::{take, u16_at};

/// Largest payload the real connection hands to the handler.
pub const MAX_PAYLOAD: usize = vu_core::message::MAX_PAYLOAD;
/// Size of the guest-memory memfd of `message_dispatch`.
pub const DISPATCH_MEM_SIZE: usize = 0x10000;
/// At most this many messages per input.
pub const MAX_MESSAGES: usize = 64;

/// Kinds of file descriptor a fuzzed message can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// The guest-memory memfd (a duplicate of it; refilled before every input).
    Memfd = 0,
    /// An eventfd (a duplicate of one of a pool, each emptied before every input).
    EventFd = 1,
    /// One end of a fresh socketpair.
    Socket = 2,
    /// Alternating memfd, eventfd.
    Mixed = 3,
}

impl FdKind {
    fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => FdKind::Memfd,
            1 => FdKind::EventFd,
            2 => FdKind::Socket,
            _ => FdKind::Mixed,
        }
    }
}

/// One message of a `message_dispatch` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzMessage {
    /// Request code (0 and 44.. are unknown codes).
    pub request: u8,
    /// Set NEED_REPLY in the header.
    pub need_reply: bool,
    /// Number of fds (0..=7).
    pub nfds: u8,
    /// Their kind.
    pub fd_kind: FdKind,
    /// Payload (at most `MAX_PAYLOAD` bytes).
    pub payload: Vec<u8>,
}

/// A `message_dispatch` input: initial guest-memory contents and a message sequence.
///
/// Layout: `mem_len: u16 LE | mem_len bytes | messages`, each message
/// `request: u8 | ctl: u8 | len: u16 LE | len bytes`, where `ctl` bits 0-2 are the fd
/// count, bits 3-4 the fd kind and bit 7 NEED_REPLY. Lengths beyond the data are clamped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchInput {
    /// Written at offset 0 of the memfd before the first message.
    pub memory: Vec<u8>,
    /// The messages, in order.
    pub messages: Vec<FuzzMessage>,
}

/// Reads a `message_dispatch` input; never fails.
pub fn parse_dispatch(mut data: &[u8]) -> DispatchInput {
    let mem_len = (u16_at(&mut data) as usize).min(DISPATCH_MEM_SIZE);
    let memory = take(&mut data, mem_len).to_vec();
    let mut messages = Vec::new();
    while !data.is_empty() && messages.len() < MAX_MESSAGES {
        let request = take(&mut data, 1)[0];
        let ctl = take(&mut data, 1).first().copied().unwrap_or(0);
        let len = (u16_at(&mut data) as usize).min(MAX_PAYLOAD);
        let payload = take(&mut data, len).to_vec();
        messages.push(FuzzMessage {
            request,
            need_reply: ctl & 0x80 != 0,
            nfds: ctl & 7,
            fd_kind: FdKind::from_bits(ctl >> 3),
            payload,
        });
    }
    DispatchInput { memory, messages }
}

/// Writes a `message_dispatch` input.
pub fn encode_dispatch(input: &DispatchInput) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(input.memory.len() as u16).to_le_bytes());
    out.extend_from_slice(&input.memory);
    for m in &input.messages {
        out.push(m.request);
        out.push((m.nfds & 7) | (m.fd_kind as u8) << 3 | if m.need_reply { 0x80 } else { 0 });
        out.extend_from_slice(&(m.payload.len() as u16).to_le_bytes());
        out.extend_from_slice(&m.payload);
    }
    out
}

/// The device `message_dispatch` drives: two queues of up to 256, a 16-byte config space
/// whose bytes 8..16 are writable, and queues that write a few bytes into each request and
/// complete it.
#[derive(Debug)]
pub struct FuzzDevice {
    config: Mutex<[u8; 16]>,
    notifier: Mutex<Option<Arc<ConfigNotifier>>>,
}

impl FuzzDevice {
    /// A fresh device.
    pub fn new() -> Self {
        FuzzDevice {
            config: Mutex::new([0x5a; 16]),
            notifier: Mutex::new(None),
        }
    }
}

impl Default for FuzzDevice {
    fn default() -> Self {
        Self::new()
    }
}

struct FuzzQueue;

impl QueueHandler for FuzzQueue {
    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while let Some(head) = q.pop() {
            let mut buf = [0u8; 8];
            let n = q.chain(head).read_at(0, &mut buf);
            let w = q.chain(head).write_at(0, &buf[..n]);
            q.complete(head, w as u32);
        }
        Progress::Drained
    }
}

impl VhostUserDevice for FuzzDevice {
    fn name(&self) -> &str {
        "fuzz"
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> u16 {
        256
    }

    fn device_features(&self) -> u64 {
        1 << 5
    }

    fn config_size(&self) -> usize {
        16
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        // Bounds were checked by the core; an out-of-range call would panic here, which is
        // what the fuzzer wants to see.
        buf.copy_from_slice(&c[offset..offset + buf.len()]);
    }

    fn write_config(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        if offset < 8 {
            return Err(DeviceError::Unsupported("read-only"));
        }
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn start_queue(&self, _index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        Ok(Box::new(FuzzQueue))
    }

    fn set_config_notifier(&self, notifier: Arc<ConfigNotifier>) {
        *self.notifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_round_trip() {
        let input = DispatchInput {
            memory: vec![1, 2, 3],
            messages: vec![
                FuzzMessage {
                    request: 5,
                    need_reply: true,
                    nfds: 2,
                    fd_kind: FdKind::Mixed,
                    payload: vec![9; 40],
                },
                FuzzMessage {
                    request: 200,
                    need_reply: false,
                    nfds: 0,
                    fd_kind: FdKind::Memfd,
                    payload: vec![],
                },
            ],
        };
        assert_eq!(parse_dispatch(&encode_dispatch(&input)), input);
    }

    #[test]
    fn short_inputs_parse() {
        for n in 0..20 {
            let _ = parse_dispatch(&vec![0xffu8; n]);
        }
    }
}
