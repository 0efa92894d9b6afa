//! Input formats shared by the fuzz targets and the seed generator, and the minimal device
//! the `message_dispatch` target drives.
//!
//! Each format is a plain byte layout that `parse_*` reads leniently (any byte string is an
//! input) and `encode_*` writes, so seeds can be built from realistic values.

use std::sync::{Arc, Mutex};

use vu_core::backend_client::ConfigNotifier;
use vu_core::{DeviceError, Progress, QueueHandler, QueueIo, VhostUserDevice};

/// Largest payload the real connection hands to the handler.
pub const MAX_PAYLOAD: usize = vu_core::message::MAX_PAYLOAD;
/// Size of the guest-memory memfd of `message_dispatch`.
pub const DISPATCH_MEM_SIZE: usize = 0x10000;
/// At most this many messages per input.
pub const MAX_MESSAGES: usize = 64;

/// Kinds of file descriptor a fuzzed message can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// The input's guest-memory memfd (a dup of it).
    Memfd = 0,
    /// A fresh eventfd.
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

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (a, b) = data.split_at(n);
    *data = b;
    a
}

fn u16_at(data: &mut &[u8]) -> u16 {
    let b = take(data, 2);
    let mut v = [0u8; 2];
    v[..b.len()].copy_from_slice(b);
    u16::from_le_bytes(v)
}

fn u32_at(data: &mut &[u8]) -> u32 {
    let b = take(data, 4);
    let mut v = [0u8; 4];
    v[..b.len()].copy_from_slice(b);
    u32::from_le_bytes(v)
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

/// Guest memory of `descriptor_chain`: two 16 KiB regions with a hole between them (small,
/// so that resetting and comparing all of guest memory on every run stays cheap).
pub const CHAIN_REGIONS: [(u64, usize); 2] = [(0, 0x4000), (0x8000, 0x4000)];
/// Descriptor table addresses are masked to this (region 0, hole, region 1, beyond).
pub const CHAIN_TABLE_MASK: u32 = 0xffff;

/// A `descriptor_chain` input.
///
/// Layout: `queue_size: u16 | head: u16 | flags: u8 (bit 0: indirect allowed) |
/// table: u32 (masked with `CHAIN_TABLE_MASK`) | offset: u32 | len: u16 | memory`, all LE. `memory` is
/// written at guest address 0 (region 0) and what does not fit continues in region 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainInput {
    /// Queue size handed to `Chain::walk` (any value, even 0 or not a power of two).
    pub queue_size: u16,
    /// Head index.
    pub head: u16,
    /// INDIRECT_DESC negotiated.
    pub indirect_ok: bool,
    /// Descriptor table guest address (masked with `CHAIN_TABLE_MASK`).
    pub table: u32,
    /// Offset for `read_at` / `write_at`.
    pub offset: u32,
    /// Length for `read_at` / `write_at`.
    pub len: u16,
    /// Guest memory contents.
    pub memory: Vec<u8>,
}

/// Reads a `descriptor_chain` input; never fails.
pub fn parse_chain(mut data: &[u8]) -> ChainInput {
    ChainInput {
        queue_size: u16_at(&mut data),
        head: u16_at(&mut data),
        indirect_ok: take(&mut data, 1).first().is_some_and(|b| b & 1 != 0),
        table: u32_at(&mut data) & CHAIN_TABLE_MASK,
        offset: u32_at(&mut data),
        len: u16_at(&mut data),
        memory: data.to_vec(),
    }
}

/// Writes a `descriptor_chain` input.
pub fn encode_chain(c: &ChainInput) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&c.queue_size.to_le_bytes());
    out.extend_from_slice(&c.head.to_le_bytes());
    out.push(c.indirect_ok as u8);
    out.extend_from_slice(&c.table.to_le_bytes());
    out.extend_from_slice(&c.offset.to_le_bytes());
    out.extend_from_slice(&c.len.to_le_bytes());
    out.extend_from_slice(&c.memory);
    out
}

/// A split-ring descriptor as the guest writes it (little endian).
pub fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
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
    fn chain_round_trip() {
        let c = ChainInput {
            queue_size: 8,
            head: 3,
            indirect_ok: true,
            table: 0x1000,
            offset: 4,
            len: 100,
            memory: vec![7; 32],
        };
        assert_eq!(parse_chain(&encode_chain(&c)), c);
    }

    #[test]
    fn short_inputs_parse() {
        for n in 0..20 {
            let d = vec![0xffu8; n];
            let _ = parse_dispatch(&d);
            let _ = parse_chain(&d);
        }
    }
}
