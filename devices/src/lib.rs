//! vu-devices: virtio device logic served over vhost-user by `vu-core`. One module folder per
//! device; each holds only device logic. What several devices share sits beside them
//! (`uring_restricted.rs`).

pub mod block;
pub mod net;
pub mod rng;
mod uring_restricted;
pub mod vsock;
