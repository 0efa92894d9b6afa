//! Shared pieces of the socketpair tests, by role:
//!
//! - `wire.rs`: request codes, feature bits and payload layouts, written out here from the
//!   vhost-user specification, not taken from `vu_core::message`, so the tests check the wire
//!   format independently;
//! - `fds.rs`: memfds, eventfds, waiting for readiness;
//! - `device.rs`: a minimal device;
//! - `frontend.rs`: a front-end that frames vhost-user messages by hand;
//! - `harness.rs`: a real `BackendServer` on a socketpair;
//! - `guest.rs`: guest memory and a driver-side split ring in the shared memfd.

// Each test file uses a different part of this module.
#![allow(dead_code, unused_imports)]

mod device;
mod fds;
mod frontend;
mod guest;
mod harness;
mod wire;

pub use device::*;
pub use fds::*;
pub use frontend::*;
pub use guest::*;
pub use harness::*;
pub use wire::*;
