//! What `vsock_tx` expects of a guest packet, by the device's own rules (tx.rs,
//! packet.rs): how the packet is classified (the checks of `packet::check`, then routing by
//! destination), which counters move and by how much, and whether an RST reply is owed.
//! Packets for the host on a well-formed stream depend on the connection table: for them
//! only the counters that may move are named, and the reply is optional.

use vu_devices::vsock::packet::{check, op, ty, Header, PacketError, HOST_CID, MAX_PAYLOAD};
use vu_devices::vsock::VsockStats;

use crate::vsock::{GUEST_CID, SIBLING_CID};

/// How the device treats a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The core refuses the chain (it never reaches the device).
    Refused,
    /// Fewer readable bytes than a header.
    Short,
    /// The header's checks fail.
    Bad(PacketError),
    /// For the host, not a stream: host programs speak streams only.
    HostNotStream,
    /// For the host, a stream: what happens depends on the connection table.
    Host,
    /// For the linked sibling, at most `MAX_PAYLOAD` bytes: forwarded as it is.
    Sibling,
    /// For the linked sibling, more than `MAX_PAYLOAD` bytes.
    SiblingTooLong,
    /// For a CID that is neither the host nor a linked sibling (the guest's own included).
    UnknownCid,
}

/// Classifies a packet with header `h` (None: fewer than 44 readable bytes) and `readable`
/// bytes in its chain.
pub fn classify(h: Option<&Header>, readable: u32, seqpacket: bool) -> Class {
    let Some(h) = h else {
        return Class::Short;
    };
    let avail = readable - vu_devices::vsock::packet::HEADER_LEN as u32;
    if let Err(e) = check(h, avail, GUEST_CID, seqpacket, false) {
        return Class::Bad(e);
    }
    match h.dst_cid {
        HOST_CID if h.ty != ty::STREAM => Class::HostNotStream,
        HOST_CID => Class::Host,
        SIBLING_CID if h.len > MAX_PAYLOAD => Class::SiblingTooLong,
        SIBLING_CID => Class::Sibling,
        _ => Class::UnknownCid,
    }
}

/// The RST reply a packet is owed: (reply, certain). `maybe_conn`: a connection for the
/// packet's ports may exist (a bad length then resets the connection instead).
pub fn expected_reply(class: Class, h: &Header, maybe_conn: bool) -> Option<(Header, bool)> {
    if h.op == op::RST {
        return None;
    }
    let certain = match class {
        Class::Refused | Class::Short | Class::Sibling => return None,
        Class::Bad(PacketError::Spoofed(_)) => return None,
        Class::Bad(PacketError::BadLen { .. }) => !(h.dst_cid == HOST_CID && maybe_conn),
        Class::Bad(_) | Class::HostNotStream | Class::SiblingTooLong | Class::UnknownCid => true,
        Class::Host => false,
    };
    Some((h.rst_reply(), certain))
}

/// The counters the oracle names, by their position in this list (`C_*`).
const NAMED: [&str; 16] = [
    "dropped_bad_len",
    "dropped_spoofed",
    "dropped_bad_type",
    "dropped_bad_op",
    "connect_failures",
    "unknown_connection",
    "credit_overruns",
    "connection_limit",
    "bytes_from_guest",
    "host_connections",
    "handshake_failures",
    "active_connections",
    "guest_connections",
    "unknown_cid",
    "resets_received",
    "sibling_packets_out",
];
const C_BAD_LEN: usize = 0;
const C_SPOOFED: usize = 1;
const C_BAD_TYPE: usize = 2;
const C_BAD_OP: usize = 3;
const C_CONNECT_FAILURES: usize = 4;
const C_UNKNOWN_CONNECTION: usize = 5;
/// Counters a packet of the host class may move (`resets_received` is checked exactly).
const HOST_MAY_MOVE: std::ops::Range<usize> = 4..13;
const C_UNKNOWN_CID: usize = 13;
const C_RESETS_RECEIVED: usize = 14;
const C_SIBLING_OUT: usize = 15;

/// Where each of `NAMED` sits in `VsockStats::fields()` (looked up once: no names are
/// compared per packet).
fn positions() -> &'static [usize; 16] {
    static P: std::sync::OnceLock<[usize; 16]> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let names: Vec<&str> = VsockStats::default()
            .fields()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            names.len() <= MAX_COUNTERS,
            "the device has {} counters; MAX_COUNTERS is {MAX_COUNTERS}",
            names.len()
        );
        NAMED.map(|want| {
            names
                .iter()
                .position(|n| *n == want)
                .unwrap_or_else(|| panic!("no counter {want}"))
        })
    })
}

/// The device's counters (`VsockStats::fields`) fit in this many.
const MAX_COUNTERS: usize = 64;

/// For each counter: `Some(n)` it must move by exactly n (0 by default), `None` it may
/// move (the host class's, and sibling packets, accounted for over the whole input: a
/// packet waiting for a full link goes out, and is counted, with a later one).
/// (An array, not a vector: this runs for every packet.)
fn expected_moves(class: Class, h: Option<&Header>) -> [Option<u64>; MAX_COUNTERS] {
    let pos = positions();
    let mut want = [Some(0u64); MAX_COUNTERS];
    let mut set = |c: usize, v: Option<u64>| want[pos[c]] = v;
    set(C_SIBLING_OUT, None);
    match class {
        Class::Refused | Class::Sibling => {}
        Class::Short | Class::SiblingTooLong => set(C_BAD_LEN, Some(1)),
        Class::Bad(PacketError::Spoofed(_)) => set(C_SPOOFED, Some(1)),
        Class::Bad(PacketError::BadType(_)) => set(C_BAD_TYPE, Some(1)),
        Class::Bad(PacketError::BadOp(_)) => set(C_BAD_OP, Some(1)),
        Class::Bad(_) => set(C_BAD_LEN, Some(1)),
        Class::HostNotStream => {
            let is_request = h.is_some_and(|h| h.op == op::REQUEST);
            let c = if is_request {
                C_CONNECT_FAILURES
            } else {
                C_UNKNOWN_CONNECTION
            };
            set(c, Some(1));
        }
        Class::Host => HOST_MAY_MOVE.for_each(|c| set(c, None)),
        Class::UnknownCid => set(C_UNKNOWN_CID, Some(1)),
    }
    let valid = !matches!(class, Class::Refused | Class::Short | Class::Bad(_));
    if valid && h.is_some_and(|h| h.op == op::RST) {
        set(C_RESETS_RECEIVED, Some(1));
    }
    want
}

/// Checks the counters a packet moved against its class.
pub fn check_counters(
    class: Class,
    h: Option<&Header>,
    before: &VsockStats,
    after: &VsockStats,
) -> Result<(), String> {
    let want = expected_moves(class, h);
    let (b, a) = (before.fields(), after.fields());
    for (((name, x), (_, y)), w) in b.iter().zip(&a).zip(&want) {
        let moved = y.wrapping_sub(*x);
        if let Some(w) = *w {
            if moved != w {
                return Err(format!(
                    "{class:?}: counter {name} moved by {}, expected {w}",
                    moved as i64
                ));
            }
        }
    }
    Ok(())
}

/// The RST replies owed, in the order the packets came; matched against the replies the
/// guest receives (which come in that order, ahead of anything else the device sends).
/// Replies only maybe owed may be missing, so the match keeps every position in the list
/// the replies seen so far can have reached.
#[derive(Debug)]
pub struct Replies {
    owed: Vec<(Header, bool)>,
    /// Where in `owed` the next reply may start matching.
    at: Vec<usize>,
}

impl Default for Replies {
    fn default() -> Self {
        Replies {
            owed: Vec::new(),
            at: vec![0],
        }
    }
}

impl Replies {
    /// A packet owes `reply` (for sure, or maybe).
    pub fn expect(&mut self, reply: Header, certain: bool) {
        self.owed.push((reply, certain));
    }

    /// The guest received reply `r`.
    pub fn got(&mut self, r: &Header) -> Result<(), String> {
        let mut next = Vec::new();
        for &s in &self.at {
            for (j, (h, certain)) in self.owed.iter().enumerate().skip(s) {
                if h == r && !next.contains(&(j + 1)) {
                    next.push(j + 1);
                }
                if *certain {
                    break;
                }
            }
        }
        if next.is_empty() {
            let owed = self.at.iter().filter_map(|&s| self.owed.get(s)).next();
            return Err(format!("reply {r:?} was not owed (next owed: {owed:?})"));
        }
        self.at = next;
        Ok(())
    }

    /// Every reply owed for sure has come.
    pub fn finish(&mut self) -> Result<(), String> {
        let done = |s: usize| self.owed[s..].iter().all(|(_, certain)| !certain);
        if self.at.iter().any(|&s| done(s)) {
            return Ok(());
        }
        let s = self.at.iter().copied().min().unwrap_or(0);
        let missing = self.owed[s..].iter().find(|(_, c)| *c);
        Err(format!("reply {missing:?} never came"))
    }
}

/// Whether a packet the guest received is an RST reply (no connection behind it: no
/// credit), as opposed to a connection's packet (which carries the device's buf_alloc).
pub fn is_reply(h: &Header) -> bool {
    h.op == op::RST && h.buf_alloc == 0 && h.fwd_cnt == 0
}
