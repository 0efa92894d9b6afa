//! Test support for the vhost-user device servers: a QEMU guest harness, a driver for the
//! launcher binary, an independent front-end and a test device for conformance tests.

pub mod bench;
pub mod e2e;
pub mod frontend;
pub mod guest;
pub mod launcher;
pub mod supervisor;
pub mod test_device;
