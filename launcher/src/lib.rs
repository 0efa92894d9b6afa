//! The launcher as a library: CLI definitions, config files, device setup, the device process
//! model (spawn, supervisor, control socket, `ctl`), serving, and the jail. The `launcher` binary (`main.rs`) is a thin
//! shell over it; tests use it directly.

pub mod block;
pub mod cli;
pub mod config;
pub mod control;
pub mod control_socket;
pub mod ctl;
pub mod device;
pub mod escape;
pub mod jail;
pub mod serve;
pub mod socket;
pub mod spawn;
pub mod start;
pub mod supervise;
pub mod supervisor;
