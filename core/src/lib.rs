//! vu-core: the vhost-user back-end engine.
//!
//! It speaks the vhost-user protocol (`docs/interop/vhost-user.rst` in QEMU) to a front-end,
//! maps guest memory, runs split virtqueues on worker threads, tracks inflight requests in
//! shared memory so a restarted device loses none, and hands devices only device logic through
//! the [`VhostUserDevice`] trait.

pub mod backend_client;
pub mod backend_server;
pub mod chain;
pub mod connection;
pub mod control;
pub mod device;
pub mod dirty_log;
pub mod handler;
pub mod inflight;
pub mod memory;
pub mod message;
pub mod metrics;
mod queue_runner;
pub mod ratelimit;
pub mod snapshot;
pub mod vring;
mod vring_shared;
pub mod waker;
pub mod worker;

pub use backend_server::{bind_socket, BackendServer, ConnectionEnd};
pub use chain::{Chain, Segment};
pub use device::{DeviceError, Interest, Progress, QueueHandler, VhostUserDevice};
pub use memory::GuestMem;
pub use metrics::{Metric, MetricType, Unit};
pub use vring::QueueIo;
pub use waker::QueueWaker;
