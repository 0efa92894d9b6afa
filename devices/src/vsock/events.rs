//! What the RX worker does when the device's internal epoll set has events: note which host
//! streams and links became readable, flush guest data to streams that became writable,
//! accept host programs, take the broker's answers and links, and enforce deadlines. Nothing
//! here needs a receive buffer; packets for the guest are only noted as owed.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::broker::{BrokerError, Reply};
use super::conn::{owe, Conn, Phase};
use super::hybrid;
use super::rx::RxState;
use super::shared::{token, Shared};
use super::sibling;
use super::stats;

/// Events taken per wait; more stay pending and make the set readable again.
const BATCH: usize = 64;

/// Takes and handles the internal set's pending events.
pub(crate) fn harvest(shared: &Shared, rx: &mut RxState) {
    let mut events = [EpollEvent::default(); BATCH];
    let n = match shared.poll.wait(0, &mut events) {
        Ok(n) => n,
        Err(e) => {
            vu_core::warn_ratelimited!(error = %e, "vsock: waiting on the device's events failed");
            return;
        }
    };
    let mut sweep = false;
    for ev in &events[..n] {
        let tok = ev.data();
        match tok {
            token::WAKE => {
                let _ = shared.rx_wake.read();
                shared.take_ready(&mut rx.ready);
            }
            token::TIMER => {
                rx.timer_fired();
                sweep = true;
            }
            token::LISTENER => hybrid::accept(shared, rx),
            token::BROKER => broker_messages(shared, rx),
            _ => {
                let id = tok & token::ID_MASK;
                match tok & !token::ID_MASK {
                    token::CONN => stream_event(shared, rx, id, ev.event_set()),
                    token::HANDSHAKE => hybrid::on_readable(shared, rx, id),
                    token::LINK => rx.mark_link_ready(id),
                    _ => tracing::error!(token = tok, "vsock: event with an unknown token"),
                }
            }
        }
    }
    let now = Instant::now();
    let mut pending = if sweep {
        hybrid::sweep(shared, rx, now)
    } else {
        !rx.handshakes.is_empty() || rx.listener_retry
    };
    pending |= sweep_connections(shared, rx, now, sweep);
    rx.arm_timer(pending);
}

/// A host stream of connection `id` is readable, writable or hung up.
fn stream_event(shared: &Shared, rx: &mut RxState, id: u64, ev: EventSet) {
    let Some(conn) = shared.table().by_id(id).cloned() else {
        return;
    };
    let mut st = conn.lock();
    if st.phase == Phase::Closed {
        return;
    }
    let hangup = EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
    if ev.intersects(EventSet::IN | hangup) {
        st.readable = true;
    }
    if ev.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) && !st.txbuf.is_empty() {
        let s = &mut *st;
        let res = match s.stream.as_ref() {
            Some(stream) => s.txbuf.flush(stream),
            None => Ok(0),
        };
        match res {
            Ok(n) => {
                st.credit.forwarded(n as u32);
                stats::add(&shared.counters.bytes_from_guest, n as u64);
                st.after_tx();
            }
            Err(_) => st.kill(true),
        }
        if st.txbuf.is_empty() {
            shared.watch_stream_out(&mut st, id, false);
        }
    }
    if st.has_rx_work() {
        rx.push_ready(&conn);
    }
}

/// The broker's answers and sibling links.
fn broker_messages(shared: &Shared, rx: &mut RxState) {
    let Some(b) = shared.broker.as_ref() else {
        return;
    };
    for _ in 0..BATCH {
        match b.recv() {
            Ok(None) => return,
            Ok(Some((Reply::Connected { id }, Some(fd)))) => connected(shared, rx, id, fd),
            Ok(Some((Reply::Failed { id, errno }, _))) => failed(shared, rx, id, errno),
            Ok(Some((Reply::SiblingLink { peer_cid }, Some(fd)))) => {
                if let Err(e) = sibling::install(shared, rx, peer_cid, fd) {
                    tracing::warn!(error = %e, "vsock: sibling link refused");
                }
            }
            Ok(Some(_)) => {}
            Err(BrokerError::Closed) => {
                let _ = shared.poll.ctl(
                    ControlOperation::Delete,
                    b.as_raw_fd(),
                    EpollEvent::default(),
                );
                tracing::warn!("vsock: the broker closed; guest connections to the host are refused from now on");
                return;
            }
            Err(e) => {
                vu_core::warn_ratelimited!(error = %e, "vsock: bad message from the broker dropped");
            }
        }
    }
}

fn connected(shared: &Shared, rx: &mut RxState, id: u64, fd: OwnedFd) {
    let Some(conn) = shared.table().take_request(id) else {
        return;
    };
    let mut st = conn.lock();
    if st.phase != Phase::Connecting(id) || conn.is_removed() {
        return;
    }
    let stream = UnixStream::from(fd);
    let ok = super::iov::set_nonblocking(stream.as_fd()).is_ok()
        && shared.watch_stream(stream.as_raw_fd(), conn.id).is_ok();
    if ok {
        st.stream = Some(stream);
        st.phase = Phase::Established;
        st.owed |= owe::RESPONSE;
        stats::bump(&shared.counters.guest_connections);
    } else {
        stats::bump(&shared.counters.connect_failures);
        st.kill(true);
    }
    drop(st);
    rx.push_ready(&conn);
}

fn failed(shared: &Shared, rx: &mut RxState, id: u64, errno: i32) {
    let Some(conn) = shared.table().take_request(id) else {
        return;
    };
    let mut st = conn.lock();
    if st.phase != Phase::Connecting(id) {
        return;
    }
    stats::bump(&shared.counters.connect_failures);
    vu_core::warn_ratelimited!(
        port = conn.key.host_port,
        errno,
        "vsock: guest connection to a host port failed"
    );
    st.kill(true);
    drop(st);
    rx.push_ready(&conn);
}

/// Kills connections whose deadline passed (on a tick); whether any deadlines remain.
fn sweep_connections(shared: &Shared, rx: &mut RxState, now: Instant, tick: bool) -> bool {
    if !tick {
        return !shared.timed().is_empty();
    }
    let list: Vec<Arc<Conn>> = std::mem::take(&mut *shared.timed());
    let mut keep = Vec::new();
    for conn in list {
        let mut st = conn.lock();
        match st.deadline {
            None => {}
            Some(_) if conn.is_removed() || st.phase == Phase::Closed => {}
            Some(d) if d <= now => {
                if st.phase == Phase::HostInit {
                    stats::bump(&shared.counters.handshake_failures);
                }
                st.kill(true);
                drop(st);
                rx.push_ready(&conn);
            }
            Some(_) => {
                drop(st);
                keep.push(conn);
            }
        }
    }
    let mut timed = shared.timed();
    timed.extend(keep);
    !timed.is_empty()
}
