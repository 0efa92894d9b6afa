//! What a worker does with one queue: process its ring, busy-poll it, quiesce it.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Commands;
use crate::device::{Progress, QueueHandler};
use crate::vring::QueueIo;

/// Runs the device on the ring until it is drained (or the device is busy) with driver
/// notifications re-enabled, if the queue is enabled.
pub(crate) fn process(io: &mut QueueIo, handler: &mut dyn QueueHandler) {
    io.process_requested = false;
    io.refresh_memory();
    if !io.shared.enabled.load(Ordering::Acquire) {
        return;
    }
    io.notify_resumed();
    loop {
        io.disable_notification();
        if handler.process(io) == Progress::Busy {
            break;
        }
        if !io.enable_notification() {
            break;
        }
    }
}

/// Busy-polls the available ring for up to `budget` after the last work found, as long as
/// none of the queue's requests is in the kernel (then it sleeps until their completion),
/// with driver notifications suppressed (NO_NOTIFY; with EVENT_IDX the avail event is left
/// behind, so the driver kicks at most once), then re-enables them and looks once more, so
/// that a request made available just before the enable is not missed. Stops early when a
/// command is waiting.
pub(super) fn poll_queue(
    io: &mut QueueIo,
    handler: &mut dyn QueueHandler,
    cmds: &Mutex<Commands>,
    budget: Duration,
) {
    if !io.shared.enabled.load(Ordering::Acquire) || io.is_broken() {
        return;
    }
    io.disable_notification();
    let mut busy = false;
    let mut since = Instant::now();
    loop {
        let mut worked = handler.poll(io);
        if worked {
            busy = false;
        }
        if !busy && io.avail_pending() {
            io.refresh_memory();
            busy = handler.process(io) == Progress::Busy;
            worked = true;
        }
        if worked {
            io.flush();
            since = Instant::now();
        } else if since.elapsed() >= budget || handler.in_flight() > 0 {
            // Requests in the kernel: their completion wakes us (the device's event fd). A
            // thread that spins meanwhile saves nothing the kernel is not already waiting
            // for, and takes the CPU its I/O may need (io_uring's workers copying buffered
            // data, or, in a VM, the hypervisor's disk emulation).
            break;
        }
        if cmds.try_lock().is_ok_and(|c| !c.queue.is_empty()) {
            break;
        }
        std::hint::spin_loop();
    }
    if io.enable_notification() && !busy {
        process(io, handler);
    }
    io.flush();
}

/// Waits for the device's requests, publishes them and records the ring indexes.
pub(crate) fn quiesce(io: &mut QueueIo, handler: &mut dyn QueueHandler) {
    handler.drain(io);
    io.flush();
    io.shared
        .last_avail
        .store(io.next_avail() as u32, Ordering::Release);
    io.shared
        .last_used
        .store(io.next_used() as u32, Ordering::Release);
}
