//! The launcher as a library: CLI definitions, device setup, the device process model
//! (spawn, supervise), serving, and the jail. The `launcher` binary (`main.rs`) is a thin
//! shell over it; tests use it directly.

pub mod block;
pub mod cli;
pub mod control;
pub mod device;
pub mod escape;
pub mod jail;
pub mod serve;
pub mod socket;
pub mod spawn;
pub mod start;
pub mod supervise;
