//! Test support for the vhost-user device servers: a QEMU guest harness, a driver for the
//! launcher binary, an independent front-end and a test device for conformance tests.

pub mod audit;
pub mod bench;
pub mod e2e;
pub mod frontend;
pub mod guest;
pub mod guest_device;
pub mod kinds;
pub mod launcher;
pub mod net;
pub mod netns;
pub mod qemu;
pub mod qmp;
pub mod rng;
pub mod soak;
pub mod supervisor;
pub mod test_device;
pub mod vsock;
