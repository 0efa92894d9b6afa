//! Shared areas and channels the front-end hands over: the inflight area (GET/SET_INFLIGHT_FD),
//! the dirty log (SET_LOG_BASE, SET_LOG_FD) and the back-end request channel
//! (SET_BACKEND_REQ_FD).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use zerocopy::IntoBytes;

use super::checks::inflight_queues;
use super::{eventfd_from, Handler, HandlerError, Reply};
use crate::inflight::InflightArea;
use crate::message::{InflightDescription, LogDescription};

impl Handler {
    /// SET_BACKEND_REQ_FD: where config-change notifications go.
    pub(super) fn set_backend_req_fd(
        &mut self,
        fd: OwnedFd,
    ) -> Result<Option<Reply>, HandlerError> {
        self.notifier.set_channel(Some(UnixStream::from(fd)));
        Ok(None)
    }

    /// GET_INFLIGHT_FD: a fresh, zeroed inflight area for the queues described.
    pub(super) fn get_inflight_fd(
        &mut self,
        d: InflightDescription,
    ) -> Result<Option<Reply>, HandlerError> {
        inflight_queues(&d, self.vrings.len())?;
        let (area, fd, size) = InflightArea::create(d.num_queues, d.queue_size)?;
        self.inflight = Some(area);
        let reply = InflightDescription {
            mmap_size: size,
            mmap_offset: 0,
            num_queues: d.num_queues,
            queue_size: d.queue_size,
            padding: [0; 4],
        };
        Ok(Some(Reply {
            body: reply.as_bytes().to_vec(),
            fds: vec![fd],
        }))
    }

    /// SET_INFLIGHT_FD: the area a previous back-end filled (reconnection).
    pub(super) fn set_inflight_fd(
        &mut self,
        d: InflightDescription,
        fd: OwnedFd,
    ) -> Result<Option<Reply>, HandlerError> {
        inflight_queues(&d, self.vrings.len())?;
        let area = InflightArea::open(&fd, d.mmap_size, d.mmap_offset, d.num_queues, d.queue_size)?;
        self.inflight = Some(area);
        Ok(None)
    }

    /// SET_LOG_BASE: the dirty log area.
    pub(super) fn set_log_base(
        &mut self,
        d: LogDescription,
        fd: OwnedFd,
    ) -> Result<Option<Reply>, HandlerError> {
        self.log.set_area(fd, d.mmap_size, d.mmap_offset)?;
        // The spec gives this reply no layout; QEMU accepts any, rust-vmm front-ends
        // wait for the log description back. Echo it.
        Ok(Reply::bytes(d.as_bytes()))
    }

    /// SET_LOG_FD: kept, never signalled (the log is read by the front-end on its own).
    pub(super) fn set_log_fd(&mut self, fd: OwnedFd) -> Result<Option<Reply>, HandlerError> {
        self.log_fd = Some(eventfd_from(fd));
        Ok(None)
    }
}
