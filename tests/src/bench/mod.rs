//! `vu-bench`: a host-side vhost-user-blk front-end and load generator, usable against any
//! vhost-user-blk server socket (ours, qemu-storage-daemon, ...).
//!
//! - [`control`]: connection and negotiation (the rust-vmm `vhost` crate's front-end);
//! - [`memory`]: memfd guest memory and its layout; [`ring`]: the driver half of a split
//!   virtqueue; [`driver`]: the per-queue load loop (the data path, ours and cheap);
//! - `pace`: light load (a fixed request rate, bursts with think time);
//! - [`histogram`]: fixed-bucket latency histogram; [`procstat`]: server CPU and memory;
//! - [`local`]: the in-process null device (the load generator's own ceiling) and a helper
//!   to serve any device in-process;
//! - [`run()`]: one run from start to [`Report`]; [`config`]: what to run;
//! - [`rng`]: `vu-bench rng`, the same for any vhost-user-rng server;
//! - [`vsock`]: `vu-bench vsock`, a guest driver for any hybrid vhost-user-vsock server;
//! - [`net`]: `vu-bench net`, frames through any vhost-user-net server and its tap.

pub mod config;
pub mod control;
pub mod driver;
pub mod guest_fio;
pub mod histogram;
pub mod local;
pub mod memory;
pub mod net;
mod pace;
pub mod procstat;
pub mod report;
pub mod ring;
pub mod rng;
mod run;
pub mod vsock;

pub use config::{parse_args, Config, Invocation, Notify, Pace, Rw, USAGE};
pub use local::{LocalServer, NullDevice};
pub use report::Report;
pub use run::run;
