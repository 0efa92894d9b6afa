//! Hybrid vsock, host side in: a host program connects to the `--uds-path` listener (bound
//! by the parent, accepted here), writes `CONNECT <port>\n`, and once the guest has accepted
//! reads `OK <host port>\n` (the port assigned to its end, from [1 << 30, 1 << 31), as
//! Firecracker answers) and has a stream to the guest's listener on `<port>`. When nothing
//! listens there the guest answers RST and the stream is closed.
//!
//! The line is read without consuming anything after it (data the program sends early
//! waits in the socket until the guest accepted), bounded to [`MAX_LINE`] bytes and
//! [`HANDSHAKE_TIMEOUT`]; beyond [`MAX_HANDSHAKES`] programs wait in the listener's
//! backlog.

use std::collections::hash_map::Entry;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::conn::{owe, Conn, Phase};
use super::credit::Credit;
use super::iov;
use super::rx::RxState;
use super::shared::{stream_events, token, Shared};
use super::stats;

/// Longest `CONNECT <port>\n` line accepted.
pub(crate) const MAX_LINE: usize = 32;
/// Host programs that may be between connecting and sending their line at once; while
/// that many are, the listener is not watched (the rest wait in its backlog).
pub(crate) const MAX_HANDSHAKES: usize = 256;
/// How long a host program has to send its line.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest has to answer a connection request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A host program that connected and has not sent its line yet.
#[derive(Debug)]
pub(crate) struct Handshake {
    stream: UnixStream,
    pub deadline: Instant,
}

/// Parses a `CONNECT <port>` line (without its `\n`): the word in any case, one or more
/// blanks, a decimal port; a trailing `\r` is allowed.
pub(crate) fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_ascii_whitespace();
    let (verb, port) = (words.next()?, words.next()?);
    if words.next().is_some() || !verb.eq_ignore_ascii_case("connect") {
        return None;
    }
    if port.is_empty() || port.len() > 10 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Accepts host programs waiting on the listener (a bounded batch; the listener is level
/// triggered, so the rest come with the next wait).
pub(crate) fn accept(shared: &Shared, rx: &mut RxState) {
    let Some(l) = shared.listener.as_ref() else {
        return;
    };
    for _ in 0..64 {
        if rx.handshakes.len() >= MAX_HANDSHAKES {
            watch_listener(shared, rx, false);
            return;
        }
        match iov::accept_nonblocking(l.as_fd()) {
            Ok(s) => admit(shared, rx, s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, most likely: the listener stays readable, so stop
                // watching it for a tick rather than spin.
                vu_core::warn_ratelimited!(error = %e, "vsock: accept on the host listener failed; retrying shortly");
                watch_listener(shared, rx, false);
                rx.listener_retry = true;
                return;
            }
        }
    }
}

/// Stops or resumes watching the listener (level triggered: on resume, programs waiting in
/// its backlog are reported at once).
fn watch_listener(shared: &Shared, rx: &mut RxState, on: bool) {
    let Some(l) = shared.listener.as_ref() else {
        return;
    };
    if rx.listener_paused != on {
        return;
    }
    let (op, ev) = if on {
        (
            ControlOperation::Add,
            EpollEvent::new(EventSet::IN, token::LISTENER),
        )
    } else {
        (ControlOperation::Delete, EpollEvent::default())
    };
    match shared.poll.ctl(op, l.as_raw_fd(), ev) {
        Ok(()) => rx.listener_paused = !on,
        Err(e) => tracing::error!(error = %e, "vsock: cannot change how the listener is watched"),
    }
}

/// Resumes accepting once a handshake slot is free.
pub(crate) fn handshake_done(shared: &Shared, rx: &mut RxState) {
    if rx.listener_paused && !rx.listener_retry && rx.handshakes.len() < MAX_HANDSHAKES {
        watch_listener(shared, rx, true);
    }
}

fn admit(shared: &Shared, rx: &mut RxState, stream: UnixStream) {
    if shared.table().len() >= shared.max_connections {
        stats::bump(&shared.counters.connection_limit);
        vu_core::warn_ratelimited!("vsock: too many host connections; one refused");
        return;
    }
    let id = shared.next_id();
    let ev = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    if shared
        .poll
        .ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(ev, token::HANDSHAKE | id),
        )
        .is_err()
    {
        return;
    }
    rx.handshakes.insert(
        id,
        Handshake {
            stream,
            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
        },
    );
}

/// A host program in its handshake sent something (or hung up).
pub(crate) fn on_readable(shared: &Shared, rx: &mut RxState, id: u64) {
    let Entry::Occupied(h) = rx.handshakes.entry(id) else {
        return;
    };
    let mut buf = [0u8; MAX_LINE];
    let line_end = match iov::recv(h.get().stream.as_fd(), &mut buf, true, false) {
        Ok(0) => None,
        Ok(n) => match buf[..n].iter().position(|&b| b == b'\n') {
            Some(i) => Some(i),
            None if n >= MAX_LINE => None,
            None => return,
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
        Err(_) => None,
    };
    let h = h.remove();
    handshake_done(shared, rx);
    let port = line_end.and_then(|i| {
        // Take the line (and nothing after it) out of the socket.
        let mut line = [0u8; MAX_LINE];
        let got = iov::recv(h.stream.as_fd(), &mut line[..=i], false, false).ok()?;
        (got == i + 1).then(|| parse_connect(&line[..i])).flatten()
    });
    match port {
        Some(p) => start(shared, rx, h.stream, p),
        None => {
            stats::bump(&shared.counters.handshake_failures);
            vu_core::warn_ratelimited!(
                "vsock: host connection without a valid CONNECT line closed"
            );
        }
    }
}

/// The host program asked for guest port `port`: a connection with a fresh host port, and
/// a REQUEST owed to the guest.
fn start(shared: &Shared, rx: &mut RxState, stream: UnixStream, port: u32) {
    let fd = stream.as_raw_fd();
    let credit = Credit::new(shared.tx_buffer_size, 0, 0);
    let Some(conn) = shared.insert_host(port, |id, key| {
        Conn::new(id, key, Phase::HostInit, Some(stream), credit)
    }) else {
        stats::bump(&shared.counters.connection_limit);
        vu_core::warn_ratelimited!("vsock: no room for a host connection; closed");
        return;
    };
    let mut st = conn.lock();
    if shared
        .poll
        .ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(stream_events(), token::CONN | conn.id),
        )
        .is_err()
    {
        st.kill(false);
        drop(st);
        shared.remove(&conn);
        return;
    }
    st.owed |= owe::REQUEST;
    drop(st);
    rx.push_ready(&conn);
}

/// Drops handshakes past their deadline and retries a listener that failed; whether
/// either still needs the timer.
pub(crate) fn sweep(shared: &Shared, rx: &mut RxState, now: Instant) -> bool {
    if rx.listener_retry {
        rx.listener_retry = false;
        handshake_done(shared, rx);
    }
    let expired = rx.handshakes.values().filter(|h| h.deadline <= now).count();
    if expired > 0 {
        // Counted before the streams close, so whoever sees them closed sees the count.
        stats::add(&shared.counters.handshake_failures, expired as u64);
        vu_core::warn_ratelimited!(
            expired,
            "vsock: host connections that sent no CONNECT line in time closed"
        );
        rx.handshakes.retain(|_, h| h.deadline > now);
        handshake_done(shared, rx);
    }
    !rx.handshakes.is_empty()
}

/// The `OK <port>\n` a host program reads once the guest accepted.
pub(crate) fn ok_line(host_port: u32) -> Vec<u8> {
    format!("OK {host_port}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect 52"), Some(52));
        assert_eq!(parse_connect(b"Connect   1234\r"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 0"), Some(0));
        for bad in [
            &b""[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT 4294967296",
            b"CONNECT -1",
            b"CONNECT +5",
            b"CONNECT 5 6",
            b"CONNECTX 5",
            b"LISTEN 5",
            b"CONNECT 0x10",
            b"CONNECT 5\0",
            b"\xff\xfe 5",
            b"CONNECT 00000000052",
        ] {
            assert_eq!(
                parse_connect(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn ok_lines() {
        assert_eq!(ok_line(1 << 30), b"OK 1073741824\n");
    }
}
