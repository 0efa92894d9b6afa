//! Seeds of `message_dispatch`: realistic message sequences, and a few malformed ones.

use vu_core_fuzz::{descriptor, DispatchInput, FdKind, FuzzMessage};

// Request codes (vhost-user specification).
const GET_FEATURES: u8 = 1;
const SET_FEATURES: u8 = 2;
const SET_OWNER: u8 = 3;
const RESET_OWNER: u8 = 4;
const SET_MEM_TABLE: u8 = 5;
const SET_LOG_BASE: u8 = 6;
const SET_LOG_FD: u8 = 7;
const SET_VRING_NUM: u8 = 8;
const SET_VRING_ADDR: u8 = 9;
const SET_VRING_BASE: u8 = 10;
const GET_VRING_BASE: u8 = 11;
const SET_VRING_KICK: u8 = 12;
const SET_VRING_CALL: u8 = 13;
const SET_VRING_ERR: u8 = 14;
const GET_PROTOCOL_FEATURES: u8 = 15;
const SET_PROTOCOL_FEATURES: u8 = 16;
const GET_QUEUE_NUM: u8 = 17;
const SET_VRING_ENABLE: u8 = 18;
const SET_BACKEND_REQ_FD: u8 = 21;
const GET_CONFIG: u8 = 24;
const SET_CONFIG: u8 = 25;
const GET_INFLIGHT_FD: u8 = 31;
const SET_INFLIGHT_FD: u8 = 32;
const RESET_DEVICE: u8 = 34;
const GET_MAX_MEM_SLOTS: u8 = 36;
const ADD_MEM_REG: u8 = 37;
const REM_MEM_REG: u8 = 38;
const SET_STATUS: u8 = 39;
const GET_STATUS: u8 = 40;

pub(crate) const VERSION_1: u64 = 1 << 32;
pub(crate) const PROTOCOL_FEATURES: u64 = 1 << 30;
pub(crate) const EVENT_IDX: u64 = 1 << 29;
const INDIRECT_DESC: u64 = 1 << 28;
const LOG_ALL: u64 = 1 << 26;
/// MQ, LOG_SHMFD, REPLY_ACK, BACKEND_REQ, CONFIG, INFLIGHT_SHMFD, RESET_DEVICE,
/// CONFIGURE_MEM_SLOTS, STATUS.
pub(crate) const PROTOCOL_ALL: u64 = 0x1_b22b;

const UVA: u64 = 0x7f00_0000_0000;
const MEM_SIZE: u64 = 0x10000;
// A small ring layout (queue size 8) low in guest memory, after a 1-queue inflight area.
const DESC: u64 = 0x100;
const AVAIL: u64 = 0x180;
const USED: u64 = 0x200;
const BUF_R: u64 = 0x280;
const BUF_W: u64 = 0x300;

fn m(request: u8, payload: Vec<u8>) -> FuzzMessage {
    FuzzMessage {
        request,
        need_reply: true,
        nfds: 0,
        fd_kind: FdKind::Memfd,
        payload,
    }
}

fn with_fds(request: u8, payload: Vec<u8>, nfds: u8, fd_kind: FdKind) -> FuzzMessage {
    FuzzMessage {
        nfds,
        fd_kind,
        ..m(request, payload)
    }
}

fn u64p(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn state(index: u32, num: u32) -> Vec<u8> {
    [index.to_ne_bytes(), num.to_ne_bytes()].concat()
}

fn region(gpa: u64, size: u64, uva: u64, offset: u64) -> Vec<u8> {
    [gpa, size, uva, offset]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

fn mem_table(regions: &[Vec<u8>], pad: bool) -> Vec<u8> {
    let mut p = [(regions.len() as u32).to_ne_bytes(), 0u32.to_ne_bytes()].concat();
    for r in regions {
        p.extend_from_slice(r);
    }
    if pad {
        p.resize(8 + 8 * 32, 0);
    }
    p
}

fn vring_addr(index: u32, flags: u32, log: u64) -> Vec<u8> {
    let mut p = [index.to_ne_bytes(), flags.to_ne_bytes()].concat();
    for v in [UVA + DESC, UVA + USED, UVA + AVAIL, log] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

fn config(offset: u32, size: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut p = [
        offset.to_ne_bytes(),
        size.to_ne_bytes(),
        flags.to_ne_bytes(),
    ]
    .concat();
    p.extend_from_slice(data);
    p
}

fn inflight(size: u64, offset: u64, num_queues: u16, queue_size: u16) -> Vec<u8> {
    let mut p = [size.to_ne_bytes(), offset.to_ne_bytes()].concat();
    p.extend_from_slice(&num_queues.to_ne_bytes());
    p.extend_from_slice(&queue_size.to_ne_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

fn negotiate(features: u64) -> Vec<FuzzMessage> {
    vec![
        m(GET_FEATURES, vec![]),
        m(SET_FEATURES, u64p(features)),
        m(GET_PROTOCOL_FEATURES, vec![]),
        m(SET_PROTOCOL_FEATURES, u64p(PROTOCOL_ALL)),
        m(SET_OWNER, vec![]),
    ]
}

fn set_mem_table() -> FuzzMessage {
    with_fds(
        SET_MEM_TABLE,
        mem_table(&[region(0, MEM_SIZE, UVA, 0)], false),
        1,
        FdKind::Memfd,
    )
}

fn vring_setup(q: u32, addr_flags: u32, log: u64) -> Vec<FuzzMessage> {
    vec![
        m(SET_VRING_NUM, state(q, 8)),
        m(SET_VRING_BASE, state(q, 0)),
        m(SET_VRING_ADDR, vring_addr(q, addr_flags, log)),
        with_fds(SET_VRING_CALL, u64p(q as u64), 1, FdKind::EventFd),
        with_fds(SET_VRING_ERR, u64p(q as u64), 1, FdKind::EventFd),
        with_fds(SET_VRING_KICK, u64p(q as u64), 1, FdKind::EventFd),
        m(SET_VRING_ENABLE, state(q, 1)),
    ]
}

/// Guest memory holding one request: readable + writable descriptor, offered at avail 0.
fn ring_memory() -> Vec<u8> {
    let mut mem = vec![0u8; (BUF_R + 16) as usize];
    mem[DESC as usize..DESC as usize + 16].copy_from_slice(&descriptor(BUF_R, 16, 1, 1));
    mem[DESC as usize + 16..DESC as usize + 32].copy_from_slice(&descriptor(BUF_W, 64, 2, 0));
    mem[BUF_R as usize..BUF_R as usize + 8].copy_from_slice(b"request!");
    mem[AVAIL as usize + 2..AVAIL as usize + 4].copy_from_slice(&1u16.to_le_bytes());
    mem
}

/// An inflight area for one queue of 8 at offset 0 with head 0 in flight.
fn inflight_memory(mut mem: Vec<u8>) -> Vec<u8> {
    if mem.len() < 0x90 {
        mem.resize(0x90, 0);
    }
    mem[8..10].copy_from_slice(&1u16.to_ne_bytes());
    mem[10..12].copy_from_slice(&8u16.to_ne_bytes());
    mem[16] = 1;
    mem[24..32].copy_from_slice(&3u64.to_ne_bytes());
    mem
}

/// Every ring feature the fuzz device takes.
const ALL: u64 = VERSION_1 | PROTOCOL_FEATURES | EVENT_IDX | INDIRECT_DESC;

fn seq(parts: Vec<Vec<FuzzMessage>>) -> Vec<FuzzMessage> {
    parts.into_iter().flatten().collect()
}

fn plain(messages: Vec<FuzzMessage>) -> DispatchInput {
    DispatchInput {
        memory: vec![],
        messages,
    }
}

/// Every group of seeds.
pub(crate) fn seeds() -> Vec<(&'static str, DispatchInput)> {
    [
        session_seeds(),
        memory_seeds(),
        vring_seeds(),
        inflight_log_seeds(),
    ]
    .concat()
}

/// Negotiation, queries, config space, status, malformed messages.
fn session_seeds() -> Vec<(&'static str, DispatchInput)> {
    vec![
        ("negotiate", plain(negotiate(ALL))),
        (
            "queries",
            plain(seq(vec![
                negotiate(ALL),
                vec![
                    m(GET_QUEUE_NUM, vec![]),
                    m(GET_MAX_MEM_SLOTS, vec![]),
                    m(GET_STATUS, vec![]),
                    m(GET_VRING_BASE, state(1, 0)),
                ],
            ])),
        ),
        (
            "config",
            plain(seq(vec![
                negotiate(ALL),
                vec![
                    m(GET_CONFIG, config(0, 16, 0, &[0; 16])),
                    m(SET_CONFIG, config(8, 4, 0, &[1, 2, 3, 4])),
                    m(SET_CONFIG, config(12, 4, 1, &[5, 6, 7, 8])),
                    m(GET_CONFIG, config(12, 4, 0, &[0; 4])),
                    m(GET_CONFIG, config(0, 256, 0, &[0; 256])),
                ],
            ])),
        ),
        (
            "backend_req",
            plain(seq(vec![
                negotiate(ALL),
                vec![with_fds(SET_BACKEND_REQ_FD, vec![], 1, FdKind::Socket)],
            ])),
        ),
        (
            "status_reset",
            plain(seq(vec![
                negotiate(ALL),
                vec![
                    m(SET_STATUS, u64p(0xf)),
                    m(GET_STATUS, vec![]),
                    m(RESET_DEVICE, vec![]),
                    m(RESET_OWNER, vec![]),
                    m(GET_STATUS, vec![]),
                ],
            ])),
        ),
        (
            "malformed",
            plain(seq(vec![
                negotiate(ALL),
                vec![
                    m(0, vec![]),
                    m(99, u64p(1)),
                    m(SET_FEATURES, vec![1, 2, 3]),
                    m(SET_VRING_NUM, state(5, 3)),
                    with_fds(SET_VRING_KICK, u64p(0x1ff), 2, FdKind::Mixed),
                    with_fds(
                        SET_MEM_TABLE,
                        mem_table(&[region(0, 0, 0, 1)], false),
                        1,
                        FdKind::EventFd,
                    ),
                    m(GET_CONFIG, config(250, 8, 0, &[0; 8])),
                ],
            ])),
        ),
    ]
}

/// Memory tables and slots.
fn memory_seeds() -> Vec<(&'static str, DispatchInput)> {
    vec![
        (
            "mem_table",
            plain(seq(vec![negotiate(ALL), vec![set_mem_table()]])),
        ),
        (
            "mem_table_qemu_padded",
            plain(seq(vec![
                negotiate(ALL),
                vec![with_fds(
                    SET_MEM_TABLE,
                    mem_table(
                        &[
                            region(0, 0x8000, UVA, 0),
                            region(0x100000, 0x8000, UVA + 0x100000, 0x8000),
                        ],
                        true,
                    ),
                    2,
                    FdKind::Memfd,
                )],
            ])),
        ),
        (
            "mem_slots",
            plain(seq(vec![
                negotiate(ALL),
                vec![
                    with_fds(
                        ADD_MEM_REG,
                        [vec![0u8; 8], region(0, 0x8000, UVA, 0)].concat(),
                        1,
                        FdKind::Memfd,
                    ),
                    with_fds(
                        ADD_MEM_REG,
                        [vec![0u8; 8], region(0x8000, 0x8000, UVA + 0x8000, 0x8000)].concat(),
                        1,
                        FdKind::Memfd,
                    ),
                    m(
                        REM_MEM_REG,
                        [vec![0u8; 8], region(0, 0x8000, UVA, 0)].concat(),
                    ),
                ],
            ])),
        ),
    ]
}

/// Rings set up, run and stopped.
fn vring_seeds() -> Vec<(&'static str, DispatchInput)> {
    vec![
        (
            "vring_setup",
            plain(seq(vec![
                negotiate(ALL),
                vec![set_mem_table()],
                vring_setup(0, 0, 0),
                vec![m(GET_VRING_BASE, state(0, 0))],
            ])),
        ),
        (
            "vring_io",
            DispatchInput {
                memory: ring_memory(),
                messages: seq(vec![
                    negotiate(VERSION_1 | PROTOCOL_FEATURES),
                    vec![set_mem_table()],
                    vring_setup(1, 0, 0),
                    vec![m(GET_VRING_BASE, state(1, 0))],
                ]),
            },
        ),
        (
            "vring_nofd_and_restart",
            plain(seq(vec![
                negotiate(ALL),
                vec![set_mem_table()],
                vring_setup(0, 0, 0),
                vec![
                    m(SET_VRING_KICK, u64p(0x100)),
                    m(SET_VRING_CALL, u64p(0x100)),
                    with_fds(SET_VRING_KICK, u64p(0), 1, FdKind::EventFd),
                    m(SET_VRING_ENABLE, state(0, 0)),
                ],
            ])),
        ),
        (
            // Regression: an available index more than a ring ahead made the queue worker
            // spin forever and the stop at the end of the input hang. Without
            // PROTOCOL_FEATURES the ring starts enabled, so the worker meets the bad index
            // at once and the hang is deterministic.
            "regress_avail_idx_far_ahead",
            DispatchInput {
                memory: {
                    let mut mem = ring_memory();
                    mem[AVAIL as usize + 2..AVAIL as usize + 4]
                        .copy_from_slice(&100u16.to_le_bytes());
                    mem
                },
                messages: seq(vec![
                    negotiate(VERSION_1),
                    vec![set_mem_table()],
                    vring_setup(0, 0, 0),
                    vec![m(GET_VRING_BASE, state(0, 0))],
                ]),
            },
        ),
    ]
}

/// Inflight areas and the dirty log.
fn inflight_log_seeds() -> Vec<(&'static str, DispatchInput)> {
    vec![
        (
            "inflight",
            plain(seq(vec![
                negotiate(ALL),
                vec![
                    m(GET_INFLIGHT_FD, inflight(0, 0, 2, 8)),
                    m(GET_INFLIGHT_FD, inflight(0, 0, 1, 8)[..20].to_vec()),
                    with_fds(SET_INFLIGHT_FD, inflight(0x120, 0, 2, 8), 1, FdKind::Memfd),
                ],
            ])),
        ),
        (
            "inflight_recover",
            DispatchInput {
                memory: inflight_memory(ring_memory()),
                messages: seq(vec![
                    negotiate(VERSION_1 | PROTOCOL_FEATURES),
                    vec![
                        with_fds(SET_INFLIGHT_FD, inflight(0x90, 0, 1, 8), 1, FdKind::Memfd),
                        set_mem_table(),
                    ],
                    vring_setup(0, 0, 0),
                ]),
            },
        ),
        (
            "dirty_log",
            DispatchInput {
                memory: ring_memory(),
                messages: seq(vec![
                    negotiate(VERSION_1 | PROTOCOL_FEATURES),
                    vec![
                        set_mem_table(),
                        with_fds(
                            SET_LOG_BASE,
                            [u64p(0x1000), u64p(0)].concat(),
                            1,
                            FdKind::Memfd,
                        ),
                        with_fds(SET_LOG_FD, vec![], 1, FdKind::EventFd),
                        m(SET_FEATURES, u64p(VERSION_1 | PROTOCOL_FEATURES | LOG_ALL)),
                    ],
                    vring_setup(0, 1, USED),
                ]),
            },
        ),
    ]
}
