//! `vsock_tx`: a script of guest packets for the vsock device's TX queue (virtio 1.2,
//! 5.10.6), with what the rest of the world does between them: the guest posts receive
//! buffers and reads what the device sends, host programs connect through the listener,
//! write, read, shut down or close their streams, and the broker (the device's parent)
//! answers connection requests at once, later, or with a failure.
//!
//! Packets are written compactly: addresses and credit by selectors (the guest's CID, the
//! host, a linked sibling, or raw values; ports from a small set, or the ports of a
//! connection a host program opened), lengths by class, and the chain layout by flags, so
//! that mutations move between meaningful packets.

use crate::{take, u16_at, u32_at, u64_at};

/// At most this many steps per input.
pub const MAX_VSOCK_STEPS: usize = 16;
/// The guest's CID.
pub const GUEST_CID: u64 = 3;
/// The CID of the linked sibling guest.
pub const SIBLING_CID: u64 = 5;
/// Guest ports by selector (2: a host program's connection, 3: raw).
pub const GUEST_PORTS: [u32; 2] = [1024, 1025];
/// Host ports by selector (2: a host program's connection, 3: raw).
pub const HOST_PORTS: [u32; 2] = [1234, 80];
/// Payload lengths by class (7: raw).
pub const PAYLOAD_CLASSES: [u32; 7] = [0, 1, 17, 300, 4096, 16 << 10, 64 << 10];
/// Largest raw payload (more than a sibling packet may carry).
pub const MAX_VSOCK_PAYLOAD: u32 = 80 << 10;
/// Largest write of a host program in one step.
pub const MAX_HOST_WRITE: u16 = 32 << 10;

/// A CID selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cid {
    /// The guest (3).
    Guest,
    /// The host (2).
    Host,
    /// The linked sibling (5).
    Sibling,
    /// Any value.
    Raw(u64),
}

/// A port selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `GUEST_PORTS[i]` or `HOST_PORTS[i]`.
    Fixed(u8),
    /// The ports of the k-th connection a host program opened in this input (guest side:
    /// the port it asked for; host side: the port the device gave it).
    HostConn(u8),
    /// Any value.
    Raw(u32),
}

/// How a credit field is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditSel {
    /// buf_alloc: 256 KiB; fwd_cnt: what the guest received on the connection (honest).
    Honest,
    /// Zero.
    Zero,
    /// buf_alloc: 4096; fwd_cnt: honest + 2^31 (a lie).
    Odd,
    /// Any value.
    Raw(u32),
}

/// Bits of `Pkt::layout`: how the chain is built.
pub mod layout {
    /// Bits 0-1: 0 header and payload in one descriptor, 1 header then payload, 2 the
    /// header in two (20 + 24 bytes) then payload, 3 header then payload in three.
    pub const SPLIT: u8 = 3;
    /// The chain in an indirect table.
    pub const INDIRECT: u8 = 1 << 2;
    /// Only the header's first 20 bytes, no payload.
    pub const SHORT_HEADER: u8 = 1 << 3;
    /// A payload descriptor outside guest memory (the chain is refused).
    pub const OUTSIDE: u8 = 1 << 4;
    /// A device-writable descriptor at the end.
    pub const WRITABLE_TAIL: u8 = 1 << 5;
    /// One payload byte fewer in the buffers than the payload.
    pub const CUT: u8 = 1 << 6;
    /// An empty descriptor between header and payload.
    pub const EMPTY: u8 = 1 << 7;
}

/// One guest packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    /// Source CID.
    pub src: Cid,
    /// Destination CID.
    pub dst: Cid,
    /// Source (guest) port.
    pub src_port: Port,
    /// Destination (host or sibling) port.
    pub dst_port: Port,
    /// Operation.
    pub op: u8,
    /// Socket type.
    pub ty: u16,
    /// Flags.
    pub flags: u32,
    /// The header's `len`: `None` for the payload's length, else this value.
    pub len: Option<u32>,
    /// Payload bytes in the buffers (before `CUT`).
    pub payload: u32,
    /// buf_alloc.
    pub buf_alloc: CreditSel,
    /// fwd_cnt.
    pub fwd_cnt: CreditSel,
    /// `layout` bits.
    pub layout: u8,
}

/// Receive buffers the guest posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxShape {
    /// One 4140-byte buffer (Linux's).
    Normal,
    /// A 44-byte header buffer and a 4096-byte one.
    Split,
    /// One buffer of 40 bytes (too small for a header).
    Small,
    /// One device-readable buffer.
    Readable,
}

/// What a host program does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAct {
    /// Writes this many bytes to the guest.
    Write(u16),
    /// Reads what has arrived.
    Read,
    /// Shuts its write side.
    ShutWrite,
    /// Closes its stream (after reading what has arrived).
    Close,
}

/// How the broker answers connection requests from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Connected at once.
    Connect,
    /// Refused (ECONNREFUSED) at once.
    Refuse,
    /// Not yet: answered at the next policy step that flushes, or at the end.
    Defer,
    /// Connected, to a program that has already gone.
    Gone,
}

/// The first line a host program writes after connecting to the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// `CONNECT <port>\n`.
    Connect,
    /// `connect <port>\r\n` (as Kata writes it).
    Lower,
    /// Not a CONNECT line.
    Garbage,
    /// Nothing (yet).
    Silent,
}

/// One step of a `vsock_tx` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A packet on the TX queue.
    Packet(Pkt),
    /// The guest posts `count` receive buffers and the device's RX queue runs.
    Rx(RxShape, u8),
    /// Host program `stream` (in the order they appeared) acts.
    Host(u8, HostAct),
    /// A host program connects through the listener with a line.
    HostConnect(Line),
    /// The broker's policy changes; `flush`: deferred requests are answered now.
    Broker(Policy, bool),
}

/// A `vsock_tx` input.
///
/// Layout: `flags: u8` (bit 0 SEQPACKET negotiated, bit 1 INDIRECT_DESC, bit 2 EVENT_IDX),
/// then steps, each a kind byte and its fields (see `parse_step`), all LE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockInput {
    /// VIRTIO_VSOCK_F_SEQPACKET.
    pub seqpacket: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub indirect: bool,
    /// VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// The script.
    pub steps: Vec<Step>,
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fn cid(sel: u8, data: &mut &[u8]) -> Cid {
    match sel & 3 {
        0 => Cid::Guest,
        1 => Cid::Host,
        2 => Cid::Sibling,
        _ => Cid::Raw(u64_at(data)),
    }
}

fn port(sel: u8, fixed: usize, data: &mut &[u8]) -> Port {
    let s = usize::from(sel & 3);
    if s < fixed {
        Port::Fixed(s as u8)
    } else if s == 3 {
        Port::Raw(u32_at(data))
    } else {
        Port::HostConn(0)
    }
}

fn credit(sel: u8, data: &mut &[u8]) -> CreditSel {
    match sel & 3 {
        0 => CreditSel::Honest,
        1 => CreditSel::Zero,
        2 => CreditSel::Odd,
        _ => CreditSel::Raw(u32_at(data)),
    }
}

/// A packet: `addr: u8` (bits 0-1 src, 2-3 dst, 4-5 guest port, 6-7 host port selectors;
/// raw values follow in that order), `op: u8`, `tyfl: u8` (bits 0-2 type, 7 meaning 0xffff;
/// bits 3-4 SHUTDOWN flags; bit 5: a raw u32 flags follows), `lens: u8` (bits 0-1 the len
/// field: payload, payload + 1, payload - 1, raw u32; bits 2-4 payload class, 7: raw u32),
/// `credit: u8` (bits 0-1 buf_alloc, 2-3 fwd_cnt selectors; bits 4-5 which host program
/// connection `HostConn` ports name), `layout: u8`.
fn parse_packet(data: &mut &[u8]) -> Pkt {
    let addr = byte(data);
    let src = cid(addr, data);
    let dst = cid(addr >> 2, data);
    let mut src_port = port(addr >> 4, 2, data);
    let mut dst_port = port(addr >> 6, 2, data);
    let op = byte(data);
    let tyfl = byte(data);
    let ty = match tyfl & 7 {
        7 => 0xffff,
        t => u16::from(t),
    };
    let mut flags = u32::from(tyfl >> 3 & 3);
    if tyfl & 1 << 5 != 0 {
        flags = u32_at(data);
    }
    let lens = byte(data);
    let mut len_raw = None;
    if lens & 3 == 3 {
        len_raw = Some(u32_at(data));
    }
    let payload = match usize::from(lens >> 2 & 7) {
        7 => u32_at(data) % (MAX_VSOCK_PAYLOAD + 1),
        c => PAYLOAD_CLASSES[c],
    };
    let len = match lens & 3 {
        0 => None,
        1 => Some(payload.wrapping_add(1)),
        2 => Some(payload.wrapping_sub(1)),
        _ => len_raw,
    };
    let cr = byte(data);
    let buf_alloc = credit(cr, data);
    let fwd_cnt = credit(cr >> 2, data);
    let k = cr >> 4 & 3;
    for p in [&mut src_port, &mut dst_port] {
        if let Port::HostConn(_) = p {
            *p = Port::HostConn(k);
        }
    }
    Pkt {
        src,
        dst,
        src_port,
        dst_port,
        op,
        ty,
        flags,
        len,
        payload,
        buf_alloc,
        fwd_cnt,
        layout: byte(data),
    }
}

/// One step after its kind byte (`kind % 16`: 0-9 packet, 10-11 rx, 12-13 host, 14 host
/// connect, 15 broker; the costly steps are the rare ones): a packet (above); rx
/// `shape_count: u8` (bits 0-1 shape, 2-7 count - 1); host `act: u8` (bits 0-1
/// write/read/shut/close, 2-4 stream; a write's u16 length follows, modulo `MAX_HOST_WRITE`
/// + 1); host connect `line: u8`; broker `policy: u8` (bits 0-1 policy, bit 2 flush).
fn parse_step(kind: u8, data: &mut &[u8]) -> Step {
    match kind % 16 {
        0..=9 => Step::Packet(parse_packet(data)),
        10 | 11 => {
            let b = byte(data);
            let shape = [
                RxShape::Normal,
                RxShape::Split,
                RxShape::Small,
                RxShape::Readable,
            ][usize::from(b & 3)];
            Step::Rx(shape, (b >> 2) + 1)
        }
        12 | 13 => {
            let b = byte(data);
            let act = match b & 3 {
                0 => HostAct::Write(u16_at(data) % (MAX_HOST_WRITE + 1)),
                1 => HostAct::Read,
                2 => HostAct::ShutWrite,
                _ => HostAct::Close,
            };
            Step::Host(b >> 2 & 7, act)
        }
        14 => Step::HostConnect(
            [Line::Connect, Line::Lower, Line::Garbage, Line::Silent][usize::from(byte(data) & 3)],
        ),
        _ => {
            let b = byte(data);
            let p = [Policy::Connect, Policy::Refuse, Policy::Defer, Policy::Gone];
            Step::Broker(p[usize::from(b & 3)], b & 4 != 0)
        }
    }
}

/// The most bytes `parse_vsock` reads: a flags byte and `MAX_VSOCK_STEPS` packets with every
/// raw field present (kind, addr, two u64 CIDs, two u32 ports, op, tyfl, u32 flags, lens,
/// u32 len, u32 payload, credit, two u32 credits, layout: 51 bytes). Bytes after it are
/// never read, so `.ci/fuzz.sh` gives libFuzzer this as `-max_len`.
pub const MAX_VSOCK_INPUT: usize = 1 + MAX_VSOCK_STEPS * 51;

/// Reads a `vsock_tx` input; never fails.
pub fn parse_vsock(mut data: &[u8]) -> VsockInput {
    let flags = byte(&mut data);
    let mut steps = Vec::new();
    while !data.is_empty() && steps.len() < MAX_VSOCK_STEPS {
        let kind = byte(&mut data);
        steps.push(parse_step(kind, &mut data));
    }
    VsockInput {
        seqpacket: flags & 1 != 0,
        indirect: flags & 2 != 0,
        event_idx: flags & 4 != 0,
        steps,
    }
}

fn cid_sel(c: Cid, raw: &mut Vec<u8>) -> u8 {
    match c {
        Cid::Guest => 0,
        Cid::Host => 1,
        Cid::Sibling => 2,
        Cid::Raw(v) => {
            raw.extend_from_slice(&v.to_le_bytes());
            3
        }
    }
}

fn port_sel(p: Port, raw: &mut Vec<u8>) -> (u8, u8) {
    match p {
        Port::Fixed(i) => (i & 1, 0),
        Port::HostConn(k) => (2, k & 3),
        Port::Raw(v) => {
            raw.extend_from_slice(&v.to_le_bytes());
            (3, 0)
        }
    }
}

fn credit_sel(c: CreditSel, raw: &mut Vec<u8>) -> u8 {
    match c {
        CreditSel::Honest => 0,
        CreditSel::Zero => 1,
        CreditSel::Odd => 2,
        CreditSel::Raw(v) => {
            raw.extend_from_slice(&v.to_le_bytes());
            3
        }
    }
}

/// The payload class of a length and the raw value that must follow, if any.
fn payload_class(payload: u32) -> (u8, Option<u32>) {
    match PAYLOAD_CLASSES.iter().position(|&c| c == payload) {
        Some(i) => (i as u8, None),
        None => (7, Some(payload)),
    }
}

fn encode_packet(p: &Pkt, out: &mut Vec<u8>) {
    let mut raw = Vec::new();
    let s = cid_sel(p.src, &mut raw);
    let d = cid_sel(p.dst, &mut raw);
    let (sp, k1) = port_sel(p.src_port, &mut raw);
    let (dp, k2) = port_sel(p.dst_port, &mut raw);
    out.push(s | d << 2 | sp << 4 | dp << 6);
    out.extend_from_slice(&raw);
    out.push(p.op);
    let t = if p.ty == 0xffff { 7 } else { (p.ty & 7) as u8 };
    let small_flags = p.flags & !3 == 0;
    let f = if small_flags { p.flags as u8 } else { 0 };
    out.push(t | f << 3 | u8::from(!small_flags) << 5);
    if !small_flags {
        out.extend_from_slice(&p.flags.to_le_bytes());
    }
    let (class, raw_payload) = payload_class(p.payload);
    let (mode, raw_len) = match p.len {
        None => (0, None),
        Some(l) if l == p.payload.wrapping_add(1) => (1, None),
        Some(l) if l == p.payload.wrapping_sub(1) => (2, None),
        Some(l) => (3, Some(l)),
    };
    out.push(mode | class << 2);
    if let Some(l) = raw_len {
        out.extend_from_slice(&l.to_le_bytes());
    }
    if let Some(v) = raw_payload {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut raw = Vec::new();
    let b = credit_sel(p.buf_alloc, &mut raw);
    let w = credit_sel(p.fwd_cnt, &mut raw);
    out.push(b | w << 2 | (k1 | k2) << 4);
    out.extend_from_slice(&raw);
    out.push(p.layout);
}

/// Writes a `vsock_tx` input.
pub fn encode_vsock(input: &VsockInput) -> Vec<u8> {
    let mut out = vec![
        u8::from(input.seqpacket) | u8::from(input.indirect) << 1 | u8::from(input.event_idx) << 2,
    ];
    for s in &input.steps {
        match s {
            Step::Packet(p) => {
                out.push(0);
                encode_packet(p, &mut out);
            }
            Step::Rx(shape, n) => {
                out.push(10);
                out.push(*shape as u8 | ((*n).clamp(1, 64) - 1) << 2);
            }
            Step::Host(i, act) => {
                out.push(12);
                let (a, len) = match act {
                    HostAct::Write(n) => (0, Some(*n)),
                    HostAct::Read => (1, None),
                    HostAct::ShutWrite => (2, None),
                    HostAct::Close => (3, None),
                };
                out.push(a | (i & 7) << 2);
                if let Some(n) = len {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            Step::HostConnect(l) => {
                out.push(14);
                out.push(*l as u8);
            }
            Step::Broker(p, flush) => {
                out.push(15);
                out.push(*p as u8 | u8::from(*flush) << 2);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt() -> Pkt {
        Pkt {
            src: Cid::Guest,
            dst: Cid::Host,
            src_port: Port::Fixed(1),
            dst_port: Port::Fixed(0),
            op: 5,
            ty: 1,
            flags: 0,
            len: None,
            payload: 300,
            buf_alloc: CreditSel::Honest,
            fwd_cnt: CreditSel::Honest,
            layout: layout::SPLIT & 1,
        }
    }

    #[test]
    fn vsock_round_trip() {
        let odd = Pkt {
            src: Cid::Raw(1 << 40),
            dst: Cid::Raw(7),
            src_port: Port::Raw(9),
            dst_port: Port::HostConn(2),
            op: 200,
            ty: 0xffff,
            flags: 0x1234_5678,
            len: Some(u32::MAX),
            payload: 70_000,
            buf_alloc: CreditSel::Raw(5),
            fwd_cnt: CreditSel::Odd,
            layout: 0xff,
        };
        let input = VsockInput {
            seqpacket: true,
            indirect: false,
            event_idx: true,
            steps: vec![
                Step::Packet(pkt()),
                Step::Packet(Pkt {
                    len: Some(301),
                    ..pkt()
                }),
                Step::Packet(odd),
                Step::Rx(RxShape::Split, 64),
                Step::Host(3, HostAct::Write(100)),
                Step::Host(0, HostAct::Close),
                Step::HostConnect(Line::Lower),
                Step::Broker(Policy::Defer, true),
            ],
        };
        assert_eq!(parse_vsock(&encode_vsock(&input)), input);
    }

    #[test]
    fn nothing_after_max_input_is_read() {
        // The longest steps: packets (kind 0) with every raw field, 51 bytes each.
        let mut longest = vec![0u8];
        while longest.len() < MAX_VSOCK_INPUT {
            let at = longest.len();
            longest.extend_from_slice(&[0u8; 51]);
            // kind 0, addr (4 raw selectors), 8 + 8 + 4 + 4 raw, op, tyfl (raw flags),
            // 4, lens (raw len and payload), 4 + 4, credit (2 raw), 4 + 4, layout.
            longest[at + 1] = 0xff;
            longest[at + 27] = 0x20;
            longest[at + 32] = 0x1f;
            longest[at + 41] = 0x0f;
        }
        assert_eq!(longest.len(), MAX_VSOCK_INPUT);
        let full = parse_vsock(&longest);
        assert_eq!(full.steps.len(), MAX_VSOCK_STEPS);
        // Its last byte (the last packet's layout) is read; anything after it is not.
        let mut changed = longest.clone();
        *changed.last_mut().unwrap() = 9;
        assert_ne!(parse_vsock(&changed), full);
        longest.extend_from_slice(&[0xff; 100]);
        assert_eq!(parse_vsock(&longest), full);
        // Random inputs of libFuzzer's default maximum read as their prefix.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let data: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(parse_vsock(&data), parse_vsock(&data[..MAX_VSOCK_INPUT]));
        }
    }

    #[test]
    fn short_inputs_parse() {
        for n in 0..40 {
            let _ = parse_vsock(&vec![0xffu8; n]);
            let _ = parse_vsock(&vec![0x03u8; n]);
        }
    }
}
