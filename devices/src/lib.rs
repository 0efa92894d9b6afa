//! vu-devices: virtio device logic served over vhost-user by `vu-core`. One module folder per
//! device; each holds only device logic.

pub mod block;
pub mod net;
pub mod rng;
pub mod vsock;
