//! Conformance under attack: malformed messages from a hostile front-end (hand-written, since
//! the vhost crate refuses to send most of them) and malformed rings from a hostile driver.
//! Every one is refused (a non-zero REPLY_ACK), closes the connection, or for a hostile
//! driver is returned with used length 0 and an error notification; nothing panics, and a
//! fresh front-end can connect and do I/O afterwards.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use vu_tests::frontend::raw::{self, req, RawConn, Reply};
use vu_tests::frontend::{
    backend_panics, desc_flags, echo_requests, Buf, DriverQueue, Options, TestGuest, TestServer,
    TIMEOUT, UNMAPPED_GPA,
};
use vu_tests::test_device::expected_response;

/// A front-end with a fresh guest connects, does I/O on both queues and leaves.
fn fresh_frontend_works(server: &TestServer) -> Result<()> {
    ensure!(server.is_alive(), "the server thread is gone");
    let guest = TestGuest::standard()?;
    let mut s = server.session(&guest, &Options::event_idx(), 16)?;
    for dq in &mut s.queues {
        ensure!(dq.run_echo(&echo_requests(20, 9), 4, TIMEOUT)?.len() == 20);
    }
    ensure!(backend_panics() == 0, "a back-end thread panicked");
    Ok(())
}

fn memfd(len: u64) -> Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create("hostile", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&fd, len as i64)?;
    Ok(fd)
}

/// Raw connection with REPLY_ACK negotiated and (if `guest` is given) regions 0 and 1 of
/// `guest` in the memory table.
fn raw_session(server: &TestServer, guest: Option<&TestGuest>) -> Result<RawConn> {
    let conn = server.connect_raw()?;
    conn.negotiate()?;
    if let Some(g) = guest {
        let r: Vec<_> = (0..2)
            .map(|i| {
                let r = g.region_info(i);
                (r.guest_phys_addr, r.memory_size, r.userspace_addr, 0)
            })
            .collect();
        let reply = conn.request(
            req::SET_MEM_TABLE,
            &raw::mem_table(&r),
            &[g.region_fd(0), g.region_fd(1)],
        )?;
        ensure!(reply.ack() == Some(0), "SET_MEM_TABLE: {reply:?}");
    }
    Ok(conn)
}

/// After a refused request the connection must either be closed or still answer.
fn check_refused(name: &str, conn: &RawConn, reply: Reply) -> Result<()> {
    ensure!(reply.is_refusal(), "{name}: accepted ({reply:?})");
    if let Reply::Msg(_) = reply {
        let n = conn
            .get_u64(req::GET_QUEUE_NUM)
            .with_context(|| format!("{name}: connection unusable after the refusal"))?;
        ensure!(n == 2, "{name}: GET_QUEUE_NUM {n}");
    }
    Ok(())
}

type CaseFn = Box<dyn Fn(&RawConn, &TestGuest) -> Result<Reply>>;

type Case = (&'static str, bool, CaseFn);

fn u64p(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn message_cases() -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    let mut add = |name: &'static str, mem: bool, f: CaseFn| {
        v.push((name, mem, f));
    };
    // Unknown or unsupported requests.
    add(
        "unknown request 200",
        false,
        Box::new(|c, _| c.request(200, &[], &[])),
    );
    add(
        "request code 0",
        false,
        Box::new(|c, _| c.request(0, &[], &[])),
    );
    add(
        "request code u32::MAX",
        false,
        Box::new(|c, _| c.request(u32::MAX, &[], &[])),
    );
    add(
        "SEND_RARP (not offered)",
        false,
        Box::new(|c, _| c.request(19, &[0u8; 8], &[])),
    );
    add(
        "POSTCOPY_ADVISE (not offered)",
        false,
        Box::new(|c, _| c.request(28, &[], &[])),
    );
    // Broken headers.
    add(
        "header version 2",
        false,
        Box::new(|c, _| {
            c.send_bytes(
                &raw::header(req::GET_QUEUE_NUM, 2 | raw::NEED_REPLY, 0),
                &[],
            )?;
            raw::recv(c.fd(), TIMEOUT)
        }),
    );
    add(
        "header version 0",
        false,
        Box::new(|c, _| {
            c.send_bytes(&raw::header(req::SET_OWNER, raw::NEED_REPLY, 0), &[])?;
            raw::recv(c.fd(), TIMEOUT)
        }),
    );
    add(
        "reserved header flag",
        false,
        Box::new(|c, _| {
            let f = raw::VERSION | raw::NEED_REPLY | 0x100;
            c.send_bytes(&raw::header(req::SET_OWNER, f, 0), &[])?;
            raw::recv(c.fd(), TIMEOUT)
        }),
    );
    add(
        "payload of 64 KiB announced",
        false,
        Box::new(|c, _| {
            let f = raw::VERSION | raw::NEED_REPLY;
            c.send_bytes(&raw::header(req::SET_FEATURES, f, 0x1_0000), &[])?;
            raw::recv(c.fd(), TIMEOUT)
        }),
    );
    add(
        "payload of 4 GiB announced",
        false,
        Box::new(|c, _| {
            let f = raw::VERSION | raw::NEED_REPLY;
            c.send_bytes(&raw::header(req::SET_FEATURES, f, u32::MAX), &[])?;
            raw::recv(c.fd(), TIMEOUT)
        }),
    );
    add(
        "truncated payload then EOF",
        false,
        Box::new(|c, _| {
            let mut b = raw::header(req::SET_FEATURES, raw::VERSION | raw::NEED_REPLY, 8).to_vec();
            b.extend_from_slice(&[1, 2, 3, 4]);
            c.send_bytes(&b, &[])?;
            c.shutdown_write()?;
            raw::recv(c.fd(), TIMEOUT)
        }),
    );
    // Wrong payload sizes.
    add(
        "SET_FEATURES with 4 bytes",
        false,
        Box::new(|c, _| c.request(req::SET_FEATURES, &[0u8; 4], &[])),
    );
    add(
        "SET_FEATURES with 16 bytes",
        false,
        Box::new(|c, _| c.request(req::SET_FEATURES, &[0u8; 16], &[])),
    );
    add(
        "SET_VRING_NUM with 12 bytes",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_NUM, &[0u8; 12], &[])),
    );
    add(
        "GET_FEATURES with a payload",
        false,
        Box::new(|c, _| c.request(req::GET_FEATURES, &[0u8; 8], &[])),
    );
    add(
        "SET_OWNER with a payload",
        false,
        Box::new(|c, _| c.request(req::SET_OWNER, &[0u8; 8], &[])),
    );
    // Wrong descriptor counts.
    add(
        "SET_FEATURES with an fd",
        false,
        Box::new(|c, _| {
            let fd = memfd(4096)?;
            let p = u64p(
                vu_tests::frontend::bits::VERSION_1 | vu_tests::frontend::bits::PROTOCOL_FEATURES,
            );
            c.request(req::SET_FEATURES, &p, &[fd.as_raw_fd()])
        }),
    );
    add(
        "SET_VRING_CALL without fd or NOFD",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_CALL, &u64p(0), &[])),
    );
    add(
        "SET_VRING_KICK with two fds",
        false,
        Box::new(|c, _| {
            let (a, b) = (memfd(8)?, memfd(8)?);
            c.request(
                req::SET_VRING_KICK,
                &u64p(0),
                &[a.as_raw_fd(), b.as_raw_fd()],
            )
        }),
    );
    add(
        "SET_VRING_CALL with NOFD and an fd",
        false,
        Box::new(|c, _| {
            let a = memfd(8)?;
            c.request(req::SET_VRING_CALL, &u64p(0x100), &[a.as_raw_fd()])
        }),
    );
    add(
        "SET_MEM_TABLE with 2 regions and 1 fd",
        false,
        Box::new(|c, g| {
            let r: Vec<_> = (0..2)
                .map(|i| {
                    let r = g.region_info(i);
                    (r.guest_phys_addr, r.memory_size, r.userspace_addr, 0)
                })
                .collect();
            c.request(req::SET_MEM_TABLE, &raw::mem_table(&r), &[g.region_fd(0)])
        }),
    );
    add(
        "ADD_MEM_REG without fd",
        false,
        Box::new(|c, g| {
            let r = g.region_info(2);
            let p = raw::single_region(r.guest_phys_addr, r.memory_size, r.userspace_addr, 0);
            c.request(req::ADD_MEM_REG, &p, &[])
        }),
    );
    add(
        "twelve fds on one message",
        false,
        Box::new(|c, _| {
            let fds: Vec<OwnedFd> = (0..12).map(|_| memfd(8)).collect::<Result<_>>()?;
            let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            c.request(req::SET_OWNER, &[], &raw_fds)
        }),
    );
    // Queue indexes.
    add(
        "SET_VRING_NUM index 2",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_NUM, &raw::vring_state(2, 16), &[])),
    );
    add(
        "SET_VRING_NUM index u32::MAX",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_NUM, &raw::vring_state(u32::MAX, 16), &[])),
    );
    add(
        "SET_VRING_BASE index 9",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_BASE, &raw::vring_state(9, 0), &[])),
    );
    add(
        "GET_VRING_BASE index 3",
        false,
        Box::new(|c, _| c.request(req::GET_VRING_BASE, &raw::vring_state(3, 0), &[])),
    );
    add(
        "SET_VRING_ENABLE index 7",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_ENABLE, &raw::vring_state(7, 1), &[])),
    );
    add(
        "SET_VRING_ENABLE value 2",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_ENABLE, &raw::vring_state(0, 2), &[])),
    );
    add(
        "SET_VRING_CALL index 255",
        false,
        Box::new(|c, _| {
            let e = vmm_sys_util::eventfd::EventFd::new(0)?;
            c.request(req::SET_VRING_CALL, &u64p(0xff), &[e.as_raw_fd()])
        }),
    );
    add(
        "SET_VRING_KICK with high bits",
        false,
        Box::new(|c, _| {
            let e = vmm_sys_util::eventfd::EventFd::new(0)?;
            c.request(req::SET_VRING_KICK, &u64p(1 << 40), &[e.as_raw_fd()])
        }),
    );
    add(
        "SET_VRING_ADDR index 2",
        true,
        Box::new(|c, g| {
            let u = g.region_info(0).userspace_addr;
            c.request(
                req::SET_VRING_ADDR,
                &raw::vring_addr(2, 0, u, u + 0x2000, u + 0x1000),
                &[],
            )
        }),
    );
    // Queue sizes.
    for (name, n) in [
        ("queue size 0", 0u32),
        ("queue size 3", 3),
        ("queue size 100", 100),
        ("queue size 65536", 65536),
        ("queue size 2^31", 1 << 31),
        ("queue size above the device maximum", 2048),
    ] {
        add(
            name,
            false,
            Box::new(move |c, _| c.request(req::SET_VRING_NUM, &raw::vring_state(0, n), &[])),
        );
    }
    add(
        "vring base above 16 bits",
        false,
        Box::new(|c, _| c.request(req::SET_VRING_BASE, &raw::vring_state(0, 0x1_0000), &[])),
    );
    // Ring addresses (queue size 16 from SET_VRING_NUM first).
    let ring = |desc: i64, used: i64, avail: i64, flags: u32| -> CaseFn {
        Box::new(move |c, g| {
            let r = c.request(req::SET_VRING_NUM, &raw::vring_state(0, 16), &[])?;
            ensure!(r.ack() == Some(0), "SET_VRING_NUM 16: {r:?}");
            let u = g.region_info(0).userspace_addr as i64;
            let at = |o: i64| u.wrapping_add(o) as u64;
            c.request(
                req::SET_VRING_ADDR,
                &raw::vring_addr(0, flags, at(desc), at(used), at(avail)),
                &[],
            )
        })
    };
    add(
        "ring outside memory",
        true,
        ring(0x4000_0000, 0x2000, 0x1000, 0),
    );
    add(
        "ring below memory",
        true,
        Box::new(|c, g| {
            let r = c.request(req::SET_VRING_NUM, &raw::vring_state(0, 16), &[])?;
            ensure!(r.ack() == Some(0), "SET_VRING_NUM 16: {r:?}");
            let low = g
                .region_info(0)
                .userspace_addr
                .min(g.region_info(1).userspace_addr);
            let u = g.region_info(0).userspace_addr;
            let p = raw::vring_addr(0, 0, low - 0x1000, u + 0x2000, u + 0x1000);
            c.request(req::SET_VRING_ADDR, &p, &[])
        }),
    );
    add(
        "descriptor table misaligned",
        true,
        ring(0x8, 0x2000, 0x1000, 0),
    );
    add(
        "available ring misaligned",
        true,
        ring(0, 0x2000, 0x1001, 0),
    );
    add("used ring misaligned", true, ring(0, 0x2002, 0x1000, 0));
    add(
        "used ring past the region end",
        true,
        ring(0, 0x10_0000 - 8, 0x1000, 0),
    );
    add(
        "unknown vring address flag",
        true,
        ring(0, 0x2000, 0x1000, 2),
    );
    add(
        "ring addresses before SET_MEM_TABLE",
        false,
        ring(0, 0x2000, 0x1000, 0),
    );
    add(
        "SET_VRING_KICK on an unconfigured ring",
        false,
        Box::new(|c, _| {
            let e = vmm_sys_util::eventfd::EventFd::new(0)?;
            c.request(req::SET_VRING_KICK, &u64p(1), &[e.as_raw_fd()])
        }),
    );
    // Memory regions.
    let table = |regions: Vec<(u64, u64, u64, u64)>, len: u64| -> CaseFn {
        Box::new(move |c, _| {
            let fds: Vec<OwnedFd> = regions.iter().map(|_| memfd(len)).collect::<Result<_>>()?;
            let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            c.request(req::SET_MEM_TABLE, &raw::mem_table(&regions), &raw_fds)
        })
    };
    const M: u64 = 0x10_0000;
    let m = M;
    add(
        "overlapping guest ranges",
        false,
        table(
            vec![(0, 2 * m, 0x7000_0000, 0), (m, m, 0x9000_0000, 0)],
            2 * m,
        ),
    );
    add(
        "overlapping user ranges",
        false,
        table(vec![(0, m, 0x7000_0000, 0), (4 * m, m, 0x7000_8000, 0)], m),
    );
    add(
        "guest address overflows",
        false,
        table(vec![(u64::MAX - 0xfff, m, 0x7000_0000, 0)], m),
    );
    add(
        "user address overflows",
        false,
        table(vec![(0, m, u64::MAX - 0xfff, 0)], m),
    );
    add(
        "mmap offset overflows",
        false,
        table(vec![(0, m, 0x7000_0000, !0xfff)], m),
    );
    add(
        "region of size 0",
        false,
        table(vec![(0, 0, 0x7000_0000, 0)], m),
    );
    add(
        "region of 2^63 bytes",
        false,
        table(vec![(0, 1 << 63, 0x7000_0000, 0)], m),
    );
    add(
        "region larger than its file",
        false,
        table(vec![(0, 4 * m, 0x7000_0000, 0)], m),
    );
    add(
        "unaligned mmap offset",
        false,
        table(vec![(0, 0x1000, 0x7000_0000, 0x10)], m),
    );
    add(
        "zero regions",
        false,
        Box::new(|c, _| c.request(req::SET_MEM_TABLE, &raw::mem_table(&[]), &[])),
    );
    add(
        "nine regions",
        false,
        Box::new(move |c, _| {
            let regions: Vec<_> = (0..9u64)
                .map(|i| (i * m, m, 0x7000_0000 + i * m, 0))
                .collect();
            let fds: Vec<OwnedFd> = (0..8).map(|_| memfd(m)).collect::<Result<_>>()?;
            let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            c.request(req::SET_MEM_TABLE, &raw::mem_table(&regions), &raw_fds)
        }),
    );
    add(
        "region count larger than the payload",
        false,
        Box::new(move |c, _| {
            let mut p = raw::mem_table(&[(0, m, 0x7000_0000, 0)]);
            p[0] = 2;
            let (a, b) = (memfd(m)?, memfd(m)?);
            c.request(req::SET_MEM_TABLE, &p, &[a.as_raw_fd(), b.as_raw_fd()])
        }),
    );
    add(
        "ADD_MEM_REG overflowing",
        true,
        Box::new(move |c, _| {
            let fd = memfd(m)?;
            let p = raw::single_region(u64::MAX - 0x1000, 0x2000, 0x7000_0000, 0);
            c.request(req::ADD_MEM_REG, &p, &[fd.as_raw_fd()])
        }),
    );
    add(
        "ADD_MEM_REG overlapping",
        true,
        Box::new(|c, g| {
            let r = g.region_info(0);
            let p = raw::single_region(r.guest_phys_addr + 0x1000, 0x1000, 0x7000_0000, 0);
            c.request(req::ADD_MEM_REG, &p, &[g.region_fd(2)])
        }),
    );
    add(
        "REM_MEM_REG of an unknown region",
        true,
        Box::new(move |c, _| {
            c.request(
                req::REM_MEM_REG,
                &raw::single_region(0x5000_0000, m, 0x1234_0000, 0),
                &[],
            )
        }),
    );
    // Inflight area.
    let inflight = |size: u64, offset: u64, nq: u16, qs: u16| -> CaseFn {
        Box::new(move |c, _| {
            let fd = memfd(0x10000)?;
            let mut p = Vec::new();
            p.extend_from_slice(&size.to_ne_bytes());
            p.extend_from_slice(&offset.to_ne_bytes());
            p.extend_from_slice(&nq.to_ne_bytes());
            p.extend_from_slice(&qs.to_ne_bytes());
            p.extend_from_slice(&[0u8; 4]);
            c.request(req::SET_INFLIGHT_FD, &p, &[fd.as_raw_fd()])
        })
    };
    add("inflight queue size 12", false, inflight(0x10000, 0, 2, 12));
    add(
        "inflight queue size 65535",
        false,
        inflight(0x10000, 0, 1, 65535),
    );
    add("inflight area too small", false, inflight(64, 0, 2, 16));
    add(
        "inflight area beyond its file",
        false,
        inflight(0x10000, 0x10000, 2, 16),
    );
    add(
        "inflight offset unaligned",
        false,
        inflight(0x1000, 8, 2, 16),
    );
    add(
        "inflight offset overflows",
        false,
        inflight(0x10000, !0xfff, 2, 16),
    );
    add("inflight for 5 queues", false, inflight(0x10000, 0, 5, 16));
    add("inflight for 0 queues", false, inflight(0x10000, 0, 0, 16));
    add(
        "GET_INFLIGHT_FD for 9 queues",
        false,
        Box::new(|c, _| {
            let mut p = vec![0u8; 16];
            p.extend_from_slice(&9u16.to_ne_bytes());
            p.extend_from_slice(&16u16.to_ne_bytes());
            p.extend_from_slice(&[0u8; 4]);
            c.request(req::GET_INFLIGHT_FD, &p, &[])
        }),
    );
    // Status and config.
    add(
        "SET_STATUS above 8 bits",
        false,
        Box::new(|c, _| c.request(req::SET_STATUS, &u64p(0x100), &[])),
    );
    add(
        "SET_CONFIG size mismatch",
        false,
        Box::new(|c, _| {
            let mut p = Vec::new();
            for x in [8u32, 4, 0] {
                p.extend_from_slice(&x.to_ne_bytes());
            }
            p.extend_from_slice(&[1, 2]);
            c.request(req::SET_CONFIG, &p, &[])
        }),
    );
    add(
        "SET_CONFIG offset overflow",
        false,
        Box::new(|c, _| {
            let mut p = Vec::new();
            for x in [u32::MAX, 2, 0] {
                p.extend_from_slice(&x.to_ne_bytes());
            }
            p.extend_from_slice(&[1, 2]);
            c.request(req::SET_CONFIG, &p, &[])
        }),
    );
    v
}

#[test]
fn malformed_messages_are_refused() -> Result<()> {
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let mut closed = Vec::new();
    let cases = message_cases();
    let n = cases.len();
    for (name, needs_mem, f) in cases {
        let conn = raw_session(&server, needs_mem.then_some(&*guest))
            .with_context(|| format!("{name}: set-up"))?;
        let reply = f(&conn, &guest).with_context(|| format!("case {name}"))?;
        if matches!(reply, Reply::Closed) {
            closed.push(name);
        }
        check_refused(name, &conn, reply)?;
        drop(conn);
        ensure!(server.is_alive(), "{name}: the server thread is gone");
        ensure!(backend_panics() == 0, "{name}: a back-end thread panicked");
    }
    eprintln!("cases answered by closing the connection: {closed:?}");
    // Counted by the soak run's report (tests/soak/run.sh).
    eprintln!("hostile cases: {n} malformed messages refused");
    fresh_frontend_works(&server)
}

#[test]
fn an_eventfd_that_is_not_one() -> Result<()> {
    // A memfd as the kick "eventfd": whatever the back-end makes of it, nothing breaks.
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let conn = raw_session(&server, Some(&guest))?;
    let u = guest.region_info(0).userspace_addr;
    for (code, p) in [
        (req::SET_VRING_NUM, raw::vring_state(0, 16)),
        (
            req::SET_VRING_ADDR,
            raw::vring_addr(0, 0, u, u + 0x2000, u + 0x1000),
        ),
    ] {
        let r = conn.request(code, &p, &[])?;
        ensure!(r.ack() == Some(0), "{code}: {r:?}");
    }
    let fd = memfd(8)?;
    let r = conn.request(req::SET_VRING_CALL, &u64p(0), &[fd.as_raw_fd()])?;
    ensure!(!matches!(r, Reply::Closed) || server.is_alive());
    let r = conn.request(req::SET_VRING_KICK, &u64p(0), &[fd.as_raw_fd()])?;
    eprintln!("memfd as kick fd: {r:?}");
    drop(conn);
    fresh_frontend_works(&server)
}

#[test]
fn hostile_driver_chains_are_returned_with_an_error() -> Result<()> {
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let dev = server.device().clone();
    let dq = &mut s.queues[0];
    let size = dq.size();
    let (r1, r1len) = guest.region_range(1);
    let mem_end = r1 + r1len;
    let slot = dq.slot(size - 1);

    type Bad<'a> = (
        &'a str,
        Box<dyn Fn(&mut vu_tests::frontend::DriverQueue) -> Result<u16>>,
    );
    let cases: Vec<Bad> = vec![
        (
            "descriptor loop",
            Box::new(move |dq| {
                let head = dq.peek_free().context("ring full")?;
                dq.write_raw_desc(size - 1, 0x1000, 16, desc_flags::NEXT, head)?;
                dq.add_raw(0x1000, 16, desc_flags::NEXT, size - 1)
            }),
        ),
        (
            "next index out of range",
            Box::new(move |dq| dq.add_raw(0x1000, 16, desc_flags::NEXT, size + 5)),
        ),
        (
            "buffer outside guest memory",
            Box::new(|dq| dq.add_raw(UNMAPPED_GPA, 64, desc_flags::WRITE, 0)),
        ),
        (
            "buffer running off the end of memory",
            Box::new(move |dq| dq.add_raw(mem_end - 8, 64, desc_flags::WRITE, 0)),
        ),
        (
            "buffer address overflows",
            Box::new(|dq| dq.add_raw(u64::MAX - 4, 16, 0, 0)),
        ),
        (
            "4 GiB buffer",
            Box::new(|dq| dq.add_raw(0, u32::MAX, desc_flags::WRITE, 0)),
        ),
        (
            "readable after writable",
            Box::new(|dq| dq.add(&[Buf::w(0x9_0000, 16), Buf::r(0x9_1000, 16)])),
        ),
        (
            "indirect table of 24 bytes",
            Box::new(move |dq| dq.add_raw(slot, 24, desc_flags::INDIRECT, 0)),
        ),
        (
            "indirect table outside memory",
            Box::new(|dq| dq.add_raw(UNMAPPED_GPA, 32, desc_flags::INDIRECT, 0)),
        ),
        (
            "indirect table longer than the indirect limit",
            Box::new(move |dq| {
                let max = (size as u32).max(vu_core::chain::MAX_INDIRECT_DESCRIPTORS as u32);
                dq.add_raw(0x8_0000, 16 * (max + 1), desc_flags::INDIRECT, 0)
            }),
        ),
        (
            "nested indirect table",
            Box::new(move |dq| {
                // Table at `slot`: one descriptor that is itself INDIRECT.
                dq.write_raw_desc_at(slot, 0, slot + 64, 16, desc_flags::INDIRECT, 0)?;
                dq.add_raw(slot, 16, desc_flags::INDIRECT, 0)
            }),
        ),
        (
            "INDIRECT together with NEXT",
            Box::new(move |dq| dq.add_raw(slot, 16, desc_flags::INDIRECT | desc_flags::NEXT, 1)),
        ),
    ];
    let n = cases.len();
    for (name, make) in cases {
        let head = make(dq).with_context(|| format!("{name}: set-up"))?;
        dq.kick()?;
        let used = dq.wait_used(1, TIMEOUT).with_context(|| name.to_string())?;
        ensure!(used.len() == 1, "{name}: {used:?}");
        ensure!(
            used[0].id == head as u32 && used[0].len == 0,
            "{name}: {used:?}"
        );
        ensure!(dq.wait_err(TIMEOUT)?, "{name}: no error notification");
        // A good request right after.
        let h = dq.submit(name.as_bytes(), 64)?;
        dq.kick()?;
        let used = dq.wait_used(1, TIMEOUT)?;
        ensure!(
            used[0].id == h as u32 && used[0].data == expected_response(0, name.as_bytes(), 64),
            "{name}: good request after it: {used:?}"
        );
    }
    ensure!(
        dev.completion_count() == 12,
        "the device saw a malformed chain"
    );

    // A head outside the ring, and a head the device already holds: skipped, reported.
    dq.add_head(size + 3)?;
    dq.kick()?;
    ensure!(dq.wait_err(TIMEOUT)?, "out-of-range head not reported");
    dev.set_hold(true);
    let held = dq.submit(b"held", 8)?;
    dq.kick()?;
    ensure!(dev.wait_held(0, 1, TIMEOUT));
    dq.add_head(held)?;
    dq.kick()?;
    ensure!(dq.wait_err(TIMEOUT)?, "duplicate head not reported");
    dev.release_all();
    let used = dq.wait_used(1, TIMEOUT)?;
    ensure!(used.len() == 1 && used[0].id == held as u32, "{used:?}");
    ensure!(dq.run_echo(&echo_requests(10, 5), 4, TIMEOUT)?.len() == 10);
    let held_done = dev
        .completions()
        .iter()
        .filter(|c| c.head == held && c.request == b"held")
        .count();
    ensure!(held_done == 1, "duplicate head completed {held_done} times");

    drop(s);
    // Counted by the soak run's report (tests/soak/run.sh).
    eprintln!(
        "hostile cases: {} malformed chains and bad heads returned or skipped",
        n + 2
    );
    fresh_frontend_works(&server)
}

/// Runs `f` on its own thread and gives up after `timeout`. A back-end that wedges makes the
/// test fail instead of hang; whatever `f` holds is leaked with the stuck thread.
fn within<T: Send + 'static>(
    timeout: std::time::Duration,
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => bail!("{what}: no answer within {timeout:?}; the back-end is wedged"),
    }
}

/// A driver publishes an available index more than a ring ahead of what the device has
/// consumed. The specification calls this a driver error; the back-end must survive it: the
/// other queue goes on, GET_VRING_BASE answers, the next front-end is served.
#[test]
fn available_index_a_ring_ahead_does_not_wedge_the_backend() -> Result<()> {
    let server = Arc::new(TestServer::start_default()?);
    let guest = TestGuest::standard()?;
    let mut s = server.session(&guest, &Options::default(), 16)?;
    let q1 = &mut s.queues[1];
    let next = q1.next_avail();
    q1.set_avail_idx(next.wrapping_add(16 * 3))?;
    q1.kick()?;
    ensure!(
        s.queues[0]
            .run_echo(&echo_requests(10, 6), 4, TIMEOUT)?
            .len()
            == 10
    );
    let fe = s.fe.clone();
    let base = within(TIMEOUT, "GET_VRING_BASE on the broken ring", move || {
        vu_tests::frontend::vh(
            vhost::VhostBackend::get_vring_base(&fe, 1),
            "GET_VRING_BASE",
        )
    });
    let result = base.and_then(|_| {
        drop(s);
        let srv = server.clone();
        within(2 * TIMEOUT, "a fresh front-end", move || {
            fresh_frontend_works(&srv)
        })
    });
    if result.is_err() {
        // The server thread is stuck joining a spinning queue worker: do not join it.
        std::mem::forget(server);
    }
    result
}

/// The available ring at guest physical address 0 is legal (any 2-byte aligned address is).
#[test]
fn available_ring_at_guest_address_zero() -> Result<()> {
    let server = Arc::new(TestServer::start_default()?);
    let guest = TestGuest::standard()?;
    let avail = guest.alloc(0, 0x1000, 0x1000)?;
    ensure!(avail == 0);
    let desc = guest.alloc(0, 16 * 16, 16)?;
    let used = guest.alloc(0, 6 + 8 * 16, 4)?;
    let slots = guest.alloc(0, 512 * 16, 64)?;
    let mut fe = server.connect()?;
    vu_tests::frontend::negotiate(&mut fe, &Options::default())?;
    vu_tests::frontend::vh(
        vhost::VhostBackend::set_mem_table(&fe, &guest.regions_info(&[0, 1])),
        "SET_MEM_TABLE",
    )?;
    let mut dq = DriverQueue::new_at(&guest, 0, 16, desc, avail, used, slots)?;
    dq.setup(&mut fe, true)?;
    let io = dq.run_echo(&echo_requests(5, 1), 2, TIMEOUT).map(|_| ());
    // Whether or not the requests were served, the ring must still stop when asked.
    let fe2 = fe.clone();
    let stop = within(TIMEOUT, "GET_VRING_BASE", move || {
        vu_tests::frontend::vh(
            vhost::VhostBackend::get_vring_base(&fe2, 0),
            "GET_VRING_BASE",
        )
    });
    let result = match (io, stop) {
        (Ok(()), Ok(_)) => {
            drop(fe);
            let srv = server.clone();
            within(2 * TIMEOUT, "a fresh front-end", move || {
                fresh_frontend_works(&srv)
            })
        }
        (io, stop) => Err(anyhow::anyhow!(
            "avail ring at GPA 0: I/O: {:?}; stopping the ring: {:?}",
            io.err().map(|e| e.to_string()),
            stop.map_err(|e| e.to_string())
        )),
    };
    if result.is_err() {
        std::mem::forget(server);
    }
    result
}

#[test]
fn hostile_frontend_then_vhost_frontend() -> Result<()> {
    // A front-end that sets up a ring over memory it then removes, and disconnects with the
    // ring running.
    let server = TestServer::start_default()?;
    let guest = TestGuest::standard()?;
    let conn = raw_session(&server, Some(&guest))?;
    let u = guest.region_info(0).userspace_addr;
    let call = vmm_sys_util::eventfd::EventFd::new(0)?;
    let kick = vmm_sys_util::eventfd::EventFd::new(0)?;
    let steps: Vec<(u32, Vec<u8>, Vec<RawFd>)> = vec![
        (req::SET_VRING_NUM, raw::vring_state(0, 16), vec![]),
        (
            req::SET_VRING_ADDR,
            raw::vring_addr(0, 0, u, u + 0x2000, u + 0x1000),
            vec![],
        ),
        (req::SET_VRING_CALL, u64p(0), vec![call.as_raw_fd()]),
        (req::SET_VRING_KICK, u64p(0), vec![kick.as_raw_fd()]),
        (req::SET_VRING_ENABLE, raw::vring_state(0, 1), vec![]),
    ];
    for (code, p, fds) in steps {
        let r = conn.request(code, &p, &fds)?;
        ensure!(r.ack() == Some(0), "request {code}: {r:?}");
    }
    // Pull the memory out from under the running ring, then kick it.
    let r0 = guest.region_info(0);
    let r = conn.request(
        req::REM_MEM_REG,
        &raw::single_region(r0.guest_phys_addr, r0.memory_size, r0.userspace_addr, 0),
        &[],
    )?;
    eprintln!("REM_MEM_REG under a running ring: {r:?}");
    kick.write(1)?;
    // The connection still answers (or was closed), and nothing panicked.
    match conn.request(req::GET_QUEUE_NUM, &[], &[]) {
        Ok(Reply::Msg(m)) if m.u64() == Some(2) => {}
        Ok(Reply::Closed) => {}
        other => bail!("after removing the ring's memory: {other:?}"),
    }
    drop(conn);
    fresh_frontend_works(&server)
}
