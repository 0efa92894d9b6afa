//! Vring configuration (SET_VRING_NUM/ADDR/BASE, GET_VRING_BASE, SET_VRING_KICK/CALL/ERR,
//! SET_VRING_ENABLE) and the queue workers it starts and stops.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

use super::checks::{
    enable_value, queue_size, ring_alignment, vring_addr_flags, vring_base, vring_fd, vring_index,
};
use super::{eventfd_from, Handler, HandlerError, Reply};
use crate::message::{features, Request, VringAddr, VringState, MAX_QUEUE_SIZE, VRING_F_LOG};
use crate::queue_runner::{InlineQueue, QueueRunner};
use crate::vring::{QueueIo, QueueSetup, VringShared};
use crate::worker::{Worker, WorkerGroup};

/// What the front-end configured for one vring, and its worker while it runs.
#[derive(Debug, Default)]
pub(super) struct VringConfig {
    pub(super) size: u16,
    pub(super) addr: Option<VringAddr>,
    /// Guest physical addresses of (descriptors, available, used), once translated.
    pub(super) gpa: Option<(u64, u64, u64)>,
    pub(super) base: u16,
    pub(super) kick: Option<EventFd>,
    pub(super) shared: Arc<VringShared>,
    pub(super) worker: Option<QueueRunner>,
    pub(super) last_used: u16,
    /// The queue has run on this connection (since the last device reset).
    pub(super) started_before: bool,
}

impl Handler {
    /// Configuration changes need the ring stopped.
    fn stopped(&self, i: usize) -> Result<(), HandlerError> {
        if self.vrings[i].worker.is_some() {
            return Err(HandlerError::RingRunning(i));
        }
        Ok(())
    }

    /// The rings' guest physical addresses, for a ring of `size` entries.
    pub(super) fn translate(
        &self,
        a: &VringAddr,
        size: u16,
    ) -> Result<(u64, u64, u64), HandlerError> {
        let n = size as u64;
        let desc = self
            .mem
            .uva_to_gpa(a.descriptor, 16 * n)
            .ok_or(HandlerError::BadAddress(a.descriptor))?;
        let avail = self
            .mem
            .uva_to_gpa(a.available, 6 + 2 * n)
            .ok_or(HandlerError::BadAddress(a.available))?;
        let used = self
            .mem
            .uva_to_gpa(a.used, 6 + 8 * n)
            .ok_or(HandlerError::BadAddress(a.used))?;
        ring_alignment(desc, avail, used)?;
        Ok((desc, avail, used))
    }

    /// SET_VRING_NUM.
    pub(super) fn set_vring_num(&mut self, s: VringState) -> Result<Option<Reply>, HandlerError> {
        let i = vring_index(s.index as u64, self.vrings.len())?;
        let size = queue_size(s.num, self.device.max_queue_size())?;
        self.stopped(i)?;
        // Addresses may come before the size (libvhost-user accepts either order):
        // re-check them against the new size.
        let gpa = match self.vrings[i].addr {
            Some(a) => self.translate(&a, size).ok(),
            None => None,
        };
        let v = &mut self.vrings[i];
        if gpa.is_none() {
            v.addr = None;
        }
        v.gpa = gpa;
        v.size = size;
        Ok(None)
    }

    /// SET_VRING_ADDR. On a running ring only the log flag may change (migration).
    pub(super) fn set_vring_addr(&mut self, a: VringAddr) -> Result<Option<Reply>, HandlerError> {
        let i = vring_index(a.index as u64, self.vrings.len())?;
        vring_addr_flags(&a)?;
        let size = match self.vrings[i].size {
            0 => self.device.max_queue_size().min(MAX_QUEUE_SIZE as u16),
            s => s,
        };
        let gpa = self.translate(&a, size)?;
        let v = &mut self.vrings[i];
        if v.worker.is_some() && v.gpa != Some(gpa) {
            return Err(HandlerError::RingRunning(i));
        }
        v.shared
            .log_used
            .store(a.flags & VRING_F_LOG != 0, Ordering::Release);
        v.shared.log_addr.store(a.log, Ordering::Release);
        v.size = size;
        v.addr = Some(a);
        v.gpa = Some(gpa);
        Ok(None)
    }

    /// SET_VRING_BASE.
    pub(super) fn set_vring_base(&mut self, s: VringState) -> Result<Option<Reply>, HandlerError> {
        let i = vring_index(s.index as u64, self.vrings.len())?;
        let base = vring_base(s.num)?;
        self.stopped(i)?;
        self.vrings[i].base = base;
        Ok(None)
    }

    /// GET_VRING_BASE: stops the ring and reports where it stopped.
    pub(super) fn get_vring_base(&mut self, s: VringState) -> Result<Option<Reply>, HandlerError> {
        let i = vring_index(s.index as u64, self.vrings.len())?;
        self.stop_vring(i);
        let v = &mut self.vrings[i];
        v.kick = None;
        let reply = VringState {
            index: s.index,
            num: v.base as u32,
        };
        Ok(Reply::bytes(reply.as_bytes()))
    }

    /// SET_VRING_KICK (restarts the ring), SET_VRING_CALL, SET_VRING_ERR.
    pub(super) fn set_vring_fd(
        &mut self,
        request: Request,
        value: u64,
        fds: Vec<OwnedFd>,
    ) -> Result<Option<Reply>, HandlerError> {
        let (idx, _) = vring_fd(value)?;
        let i = vring_index(idx, self.vrings.len())?;
        let fd = fds.into_iter().next().map(eventfd_from);
        match request {
            Request::SetVringCall => {
                self.vrings[i].shared.replace_call(fd);
                // A running queue may owe the driver a notification it had no eventfd for.
                if let Some(w) = self.vrings[i].worker.as_mut() {
                    w.poke();
                }
            }
            Request::SetVringErr => {
                *self.vrings[i]
                    .shared
                    .err
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = fd;
            }
            _ => {
                self.stop_vring(i);
                self.vrings[i].kick = fd;
                if self.vrings[i].kick.is_some() {
                    self.start_vring(i)?;
                } else {
                    tracing::warn!(
                        queue = i,
                        "front-end asked for polling mode; ring stays stopped"
                    );
                }
            }
        }
        Ok(None)
    }

    /// SET_VRING_ENABLE. Refused once features were set without PROTOCOL_FEATURES (the
    /// rings then run enabled, as the spec says). Before SET_FEATURES it is taken: QEMU's
    /// vhost-user-net enables and disables queue pairs as soon as it has read the offered
    /// features (QEMU 8 and later wait for the ack).
    pub(super) fn set_vring_enable(
        &mut self,
        s: VringState,
    ) -> Result<Option<Reply>, HandlerError> {
        if self.acked_features != 0 && self.acked_features & features::PROTOCOL_FEATURES == 0 {
            return Err(HandlerError::NotNegotiated(Request::SetVringEnable));
        }
        let i = vring_index(s.index as u64, self.vrings.len())?;
        let enable = enable_value(s.num)?;
        let v = &mut self.vrings[i];
        v.shared.enabled.store(enable, Ordering::Release);
        if let Some(w) = v.worker.as_mut() {
            w.poke();
        }
        Ok(None)
    }

    /// The setup of a ring about to start.
    fn queue_setup(&self, i: usize) -> Result<QueueSetup, HandlerError> {
        let v = &self.vrings[i];
        let (desc, avail, used) = match v.gpa {
            Some(g) => g,
            None => match v.addr {
                Some(a) => self.translate(&a, v.size)?,
                None => return Err(HandlerError::Invalid(format!("vring {i} has no addresses"))),
            },
        };
        if v.size == 0 {
            return Err(HandlerError::Invalid(format!("vring {i} has no size")));
        }
        Ok(QueueSetup {
            index: i,
            size: v.size,
            desc,
            avail,
            used,
            base: v.base,
            event_idx: self.acked_features & features::RING_EVENT_IDX != 0,
            indirect: self.acked_features & features::RING_INDIRECT_DESC != 0,
        })
    }

    /// Starts the worker of ring `i` (it has a kick fd).
    fn start_vring(&mut self, i: usize) -> Result<(), HandlerError> {
        let setup = self.queue_setup(i)?;
        let v = &self.vrings[i];
        if self.acked_features & features::PROTOCOL_FEATURES == 0 {
            v.shared.enabled.store(true, Ordering::Release);
        }
        let tracker = match self.inflight.as_ref() {
            Some(area) if (i as u16) < area.num_queues() => match area.queue(i, v.size) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(queue = i, error = %e, "inflight tracking disabled for this queue");
                    None
                }
            },
            _ => None,
        };
        let kick = v
            .kick
            .as_ref()
            .ok_or_else(|| HandlerError::Invalid(format!("vring {i} has no kick fd")))?
            .try_clone()
            .map_err(HandlerError::EventFd)?;
        let mut io = QueueIo::new(
            &setup,
            self.mem.atomic(),
            tracker,
            self.log.clone(),
            v.shared.clone(),
        )?;
        if !v.started_before {
            io.notify_on_first_run();
        }
        let handler = self.device.start_queue(i)?;
        let worker = if self.inline_queues {
            QueueRunner::Inline(Box::new(InlineQueue::start(io, handler, self.asleep)))
        } else {
            let worker = match self.device.worker_group(i) {
                None => Worker::spawn(io, handler, kick, self.device.name(), self.poll_us)?,
                Some(g) => Worker::spawn_in(&self.worker_group(g)?, io, handler, kick)?,
            };
            let mut w = QueueRunner::Thread(worker);
            if self.asleep {
                w.sleep();
            }
            w
        };
        tracing::debug!(queue = i, size = setup.size, "vring started");
        self.vrings[i].worker = Some(worker);
        self.vrings[i].started_before = true;
        Ok(())
    }

    /// The thread of the device's queue group `g`: the running one, or a new one.
    fn worker_group(&mut self, g: usize) -> Result<Arc<WorkerGroup>, HandlerError> {
        self.groups.retain(|(_, w)| w.strong_count() > 0);
        let running = self.groups.iter().find(|(n, _)| *n == g);
        if let Some(t) = running.and_then(|(_, w)| w.upgrade()) {
            return Ok(t);
        }
        let t = WorkerGroup::spawn(format!("{}-g{g}", self.device.name()), self.poll_us)?;
        self.groups.push((g, Arc::downgrade(&t)));
        Ok(t)
    }

    /// Stops ring `i`'s worker, if it runs, and keeps where it stopped.
    pub(super) fn stop_vring(&mut self, i: usize) {
        if let Some(w) = self.vrings[i].worker.take() {
            if let Some(io) = w.stop() {
                self.vrings[i].base = io.next_avail();
                self.vrings[i].last_used = io.next_used();
            }
            self.device.stop_queue(i);
            tracing::debug!(queue = i, base = self.vrings[i].base, "vring stopped");
        }
    }

    /// Stops every ring.
    pub(super) fn stop_all(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop_vring(i);
        }
    }
}
