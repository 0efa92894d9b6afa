//! The wire format as the specification writes it: header flags, request codes, feature
//! bits, payload builders (native byte order) and readers.

/// Header flag bits (spec: "Message Specification").
pub const VERSION: u32 = 0x1;
pub const FLAG_REPLY: u32 = 1 << 2;
pub const FLAG_NEED_REPLY: u32 = 1 << 3;

/// Front-end request codes, from the specification.
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const RESET_DEVICE: u32 = 34;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    pub const SET_STATUS: u32 = 39;
    pub const GET_STATUS: u32 = 40;
}

/// Virtio / vhost feature bits.
pub mod feat {
    pub const DEVICE_BIT: u64 = 1 << 5;
    pub const LOG_ALL: u64 = 1 << 26;
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
    /// Everything the test device plus the core offer.
    pub const OFFERED: u64 =
        DEVICE_BIT | LOG_ALL | INDIRECT_DESC | EVENT_IDX | PROTOCOL_FEATURES | VERSION_1;
}

/// Protocol feature bits.
pub mod proto {
    pub const MQ: u64 = 1 << 0;
    pub const LOG_SHMFD: u64 = 1 << 1;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const BACKEND_REQ: u64 = 1 << 5;
    pub const CONFIG: u64 = 1 << 9;
    pub const INFLIGHT_SHMFD: u64 = 1 << 12;
    pub const RESET_DEVICE: u64 = 1 << 13;
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    /// What the core offers for a device with a config space.
    pub const OFFERED: u64 = MQ
        | LOG_SHMFD
        | REPLY_ACK
        | BACKEND_REQ
        | CONFIG
        | INFLIGHT_SHMFD
        | RESET_DEVICE
        | CONFIGURE_MEM_SLOTS
        | STATUS;
}

pub fn u64_payload(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut p = index.to_ne_bytes().to_vec();
    p.extend_from_slice(&num.to_ne_bytes());
    p
}

pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64) -> Vec<u8> {
    let mut p = index.to_ne_bytes().to_vec();
    p.extend_from_slice(&flags.to_ne_bytes());
    for v in [desc, used, avail, log] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

/// One memory region description: guest address, size, user address, mmap offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub gpa: u64,
    pub size: u64,
    pub uva: u64,
    pub offset: u64,
}

impl Region {
    pub fn bytes(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(32);
        for v in [self.gpa, self.size, self.uva, self.offset] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        p
    }
}

/// SET_MEM_TABLE payload; `pad_to_8` adds room for 8 regions as QEMU does.
pub fn mem_table(regions: &[Region], pad_to_8: bool) -> Vec<u8> {
    let mut p = (regions.len() as u32).to_ne_bytes().to_vec();
    p.extend_from_slice(&0u32.to_ne_bytes());
    for r in regions {
        p.extend_from_slice(&r.bytes());
    }
    if pad_to_8 {
        p.resize(8 + 8 * 32, 0);
    }
    p
}

/// ADD_MEM_REG / REM_MEM_REG payload.
pub fn single_region(r: &Region) -> Vec<u8> {
    let mut p = 0u64.to_ne_bytes().to_vec();
    p.extend_from_slice(&r.bytes());
    p
}

/// GET/SET_CONFIG payload.
pub fn config_msg(offset: u32, size: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut p = offset.to_ne_bytes().to_vec();
    p.extend_from_slice(&size.to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(data);
    p
}

/// SET_LOG_BASE payload.
pub fn log_description(size: u64, offset: u64) -> Vec<u8> {
    let mut p = size.to_ne_bytes().to_vec();
    p.extend_from_slice(&offset.to_ne_bytes());
    p
}

/// GET/SET_INFLIGHT_FD payload (24 bytes, padded as QEMU sends it).
pub fn inflight_description(size: u64, offset: u64, num_queues: u16, queue_size: u16) -> Vec<u8> {
    let mut p = size.to_ne_bytes().to_vec();
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&num_queues.to_ne_bytes());
    p.extend_from_slice(&queue_size.to_ne_bytes());
    p.extend_from_slice(&[0u8; 4]);
    p
}

pub fn read_u64(b: &[u8]) -> u64 {
    u64::from_ne_bytes(b[..8].try_into().expect("8 bytes"))
}

pub fn read_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes(b[..4].try_into().expect("4 bytes"))
}

pub fn read_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes(b[..2].try_into().expect("2 bytes"))
}
