//! Seeds of `vsock_tx`: connections as a Linux guest and host programs make them (both
//! ways, data both ways with credit updates, half and full closes), the broker's answers,
//! a sibling's link filling up, the limits, and hostile packets of every kind.

use vu_core_fuzz::vsock::{
    layout, Cid, CreditSel, HostAct, Line, Pkt, Policy, Port, RxShape, Step, VsockInput,
};

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const RST: u8 = 3;
const SHUTDOWN: u8 = 4;
const RW: u8 = 5;
const CREDIT_UPDATE: u8 = 6;
const CREDIT_REQUEST: u8 = 7;
const STREAM: u16 = 1;
const SEQPACKET: u16 = 2;

/// A well-formed stream packet from guest port 1024 to host port 1234.
fn pkt(op: u8, payload: u32) -> Pkt {
    Pkt {
        src: Cid::Guest,
        dst: Cid::Host,
        src_port: Port::Fixed(0),
        dst_port: Port::Fixed(0),
        op,
        ty: STREAM,
        flags: 0,
        len: None,
        payload,
        buf_alloc: CreditSel::Honest,
        fwd_cnt: CreditSel::Honest,
        layout: 1,
    }
}

/// The same on the connection of the first host program that connected through the
/// listener.
fn on_host_conn(p: Pkt) -> Pkt {
    Pkt {
        src_port: Port::HostConn(0),
        dst_port: Port::HostConn(0),
        ..p
    }
}

fn to(dst: Cid, p: Pkt) -> Pkt {
    Pkt { dst, ..p }
}

fn p(p: Pkt) -> Step {
    Step::Packet(p)
}

fn rx(n: u8) -> Step {
    Step::Rx(RxShape::Normal, n)
}

fn input(seqpacket: bool, steps: Vec<Step>) -> VsockInput {
    VsockInput {
        seqpacket,
        indirect: true,
        event_idx: false,
        steps,
    }
}

/// Every group of seeds.
pub(crate) fn seeds() -> Vec<(&'static str, VsockInput)> {
    [flow_seeds(), broker_seeds(), hostile_seeds(), limit_seeds()].concat()
}

/// Connections both ways with data, credit and closes.
fn flow_seeds() -> Vec<(&'static str, VsockInput)> {
    let shutdown = |flags| Pkt {
        flags,
        ..pkt(SHUTDOWN, 0)
    };
    vec![
        (
            "guest_connects",
            input(
                false,
                vec![
                    p(pkt(REQUEST, 0)),
                    rx(4),
                    p(pkt(RW, 300)),
                    p(pkt(RW, 4096)),
                    Step::Host(0, HostAct::Read),
                    Step::Host(0, HostAct::Write(1000)),
                    rx(8),
                    p(pkt(CREDIT_UPDATE, 0)),
                    p(shutdown(3)),
                    rx(4),
                ],
            ),
        ),
        (
            "host_connects",
            input(
                false,
                vec![
                    Step::HostConnect(Line::Connect),
                    rx(4),
                    p(on_host_conn(pkt(RESPONSE, 0))),
                    Step::Host(0, HostAct::Read),
                    p(on_host_conn(pkt(RW, 100))),
                    Step::Host(0, HostAct::Write(20000)),
                    rx(16),
                    p(on_host_conn(pkt(CREDIT_UPDATE, 0))),
                    rx(16),
                    Step::Host(0, HostAct::Close),
                    rx(4),
                ],
            ),
        ),
        (
            "half_closes",
            input(
                false,
                vec![
                    p(pkt(REQUEST, 0)),
                    p(pkt(RW, 17)),
                    p(shutdown(2)),
                    p(pkt(RW, 17)),
                    Step::Host(0, HostAct::ShutWrite),
                    rx(4),
                    p(pkt(REQUEST, 0)),
                    Step::Host(1, HostAct::Write(5)),
                    p(shutdown(1)),
                    rx(4),
                    p(pkt(RST, 0)),
                ],
            ),
        ),
        (
            "credit",
            input(
                false,
                vec![
                    p(pkt(REQUEST, 0)),
                    p(Pkt {
                        buf_alloc: CreditSel::Odd,
                        ..pkt(CREDIT_UPDATE, 0)
                    }),
                    Step::Host(0, HostAct::Write(10000)),
                    rx(8),
                    p(pkt(CREDIT_REQUEST, 0)),
                    p(Pkt {
                        fwd_cnt: CreditSel::Odd,
                        ..pkt(CREDIT_UPDATE, 0)
                    }),
                    rx(8),
                    p(pkt(RW, 16 << 10)),
                    p(pkt(RW, 64 << 10)),
                    rx(4),
                ],
            ),
        ),
        (
            "host_not_reading",
            input(
                false,
                vec![
                    p(pkt(REQUEST, 0)),
                    p(pkt(RW, 16 << 10)),
                    p(Pkt {
                        flags: 3,
                        ..pkt(SHUTDOWN, 0)
                    }),
                    rx(4),
                    Step::Host(0, HostAct::Read),
                    rx(4),
                ],
            ),
        ),
        (
            "sibling",
            input(
                true,
                vec![
                    p(to(Cid::Sibling, pkt(REQUEST, 0))),
                    p(to(Cid::Sibling, pkt(RW, 300))),
                    p(to(
                        Cid::Sibling,
                        Pkt {
                            ty: SEQPACKET,
                            ..pkt(RW, 4096)
                        },
                    )),
                    p(to(Cid::Sibling, pkt(RW, 64 << 10))),
                    p(to(Cid::Sibling, pkt(RW, 64 << 10))),
                    p(to(Cid::Sibling, pkt(RW, 64 << 10))),
                    p(to(Cid::Sibling, pkt(RW, 64 << 10))),
                    p(to(Cid::Sibling, pkt(RW, 65537))),
                    p(to(Cid::Sibling, pkt(RST, 0))),
                    // Seqpacket is for siblings: to the host it is refused.
                    p(Pkt {
                        ty: SEQPACKET,
                        ..pkt(REQUEST, 0)
                    }),
                    rx(4),
                ],
            ),
        ),
    ]
}

/// The broker's answers and host programs' lines.
fn broker_seeds() -> Vec<(&'static str, VsockInput)> {
    vec![
        (
            "broker_refuses",
            input(
                false,
                vec![
                    Step::Broker(Policy::Refuse, false),
                    p(pkt(REQUEST, 0)),
                    rx(4),
                ],
            ),
        ),
        (
            "broker_defers",
            input(
                false,
                vec![
                    Step::Broker(Policy::Defer, false),
                    p(pkt(REQUEST, 0)),
                    p(pkt(RW, 10)),
                    p(pkt(REQUEST, 0)),
                    Step::Broker(Policy::Connect, true),
                    rx(4),
                    p(pkt(REQUEST, 0)),
                    rx(4),
                ],
            ),
        ),
        (
            "program_gone",
            input(
                false,
                vec![
                    Step::Broker(Policy::Gone, false),
                    p(pkt(REQUEST, 0)),
                    p(pkt(RW, 100)),
                    rx(4),
                ],
            ),
        ),
        (
            "host_lines",
            input(
                false,
                vec![
                    Step::HostConnect(Line::Lower),
                    Step::HostConnect(Line::Garbage),
                    Step::HostConnect(Line::Silent),
                    rx(4),
                    p(on_host_conn(pkt(RST, 0))),
                    rx(4),
                ],
            ),
        ),
    ]
}

/// Every kind of packet the device refuses.
fn hostile_seeds() -> Vec<(&'static str, VsockInput)> {
    let raw_cid = |c| Pkt {
        dst: Cid::Raw(c),
        ..pkt(REQUEST, 0)
    };
    vec![
        (
            "hostile_headers",
            input(
                false,
                vec![
                    p(Pkt {
                        src: Cid::Host,
                        ..pkt(REQUEST, 0)
                    }),
                    p(Pkt {
                        src: Cid::Raw(1 << 32 | 3),
                        ..pkt(REQUEST, 0)
                    }),
                    p(Pkt {
                        ty: 0,
                        ..pkt(REQUEST, 0)
                    }),
                    p(Pkt {
                        ty: 0xffff,
                        ..pkt(RW, 5)
                    }),
                    p(pkt(0, 0)),
                    p(pkt(8, 0)),
                    p(pkt(255, 0)),
                    p(Pkt {
                        len: Some(101),
                        ..pkt(RW, 100)
                    }),
                    p(Pkt {
                        len: Some(5),
                        ..pkt(REQUEST, 5)
                    }),
                    p(Pkt {
                        ty: SEQPACKET,
                        ..pkt(REQUEST, 0)
                    }),
                    p(raw_cid(99)),
                    p(to(Cid::Guest, pkt(REQUEST, 0))),
                    p(pkt(RW, 3)),
                    p(pkt(SHUTDOWN, 0)),
                    p(pkt(RST, 0)),
                    rx(16),
                ],
            ),
        ),
        (
            "hostile_chains",
            input(
                false,
                vec![
                    p(Pkt {
                        layout: layout::SHORT_HEADER,
                        ..pkt(REQUEST, 0)
                    }),
                    p(Pkt {
                        layout: layout::OUTSIDE | 1,
                        ..pkt(RW, 64)
                    }),
                    p(Pkt {
                        layout: layout::WRITABLE_TAIL | layout::EMPTY | 2,
                        ..pkt(REQUEST, 0)
                    }),
                    p(Pkt {
                        layout: layout::CUT | 3,
                        ..pkt(RW, 300)
                    }),
                    p(Pkt {
                        layout: layout::INDIRECT | 3,
                        ..pkt(RW, 300)
                    }),
                    Step::Rx(RxShape::Small, 2),
                    Step::Rx(RxShape::Readable, 2),
                    Step::Rx(RxShape::Split, 4),
                ],
            ),
        ),
        (
            "bad_length_on_a_connection",
            input(
                false,
                vec![
                    p(pkt(REQUEST, 0)),
                    p(Pkt {
                        len: Some(5000),
                        ..pkt(RW, 100)
                    }),
                    rx(4),
                ],
            ),
        ),
    ]
}

/// The connection limit.
fn limit_seeds() -> Vec<(&'static str, VsockInput)> {
    let from = |port| Pkt {
        src_port: Port::Raw(port),
        ..pkt(REQUEST, 0)
    };
    let mut steps: Vec<Step> = (0..7).map(|i| p(from(2000 + i))).collect();
    steps.push(Step::HostConnect(Line::Connect));
    steps.push(rx(16));
    vec![("connection_limit", input(false, steps))]
}
