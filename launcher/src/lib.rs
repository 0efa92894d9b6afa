//! The launcher as a library. The `launcher` binary (`main.rs`) is a thin shell over it; tests
//! use it directly. Rooms by role:
//!
//! - `cli/`: the command line and config files, built from the device kinds' definitions;
//! - `kinds/`: one file per device kind (what the parent opens, how the device is built);
//! - `supervisor/`: `launcher start`, the supervisor of the device processes, its control
//!   socket and protocol;
//! - `process/`: the device process (spawn, entry point, serving);
//! - `jail/`: the jail (namespaces, pivot_root, capabilities, rlimits, landlock, seccomp);
//! - `systemd/`: socket activation and service notifications (no-ops outside systemd);
//! - `ctl.rs`: `launcher ctl`, the operator's client of the control socket;
//! - `metrics/`: metrics in Prometheus' text format, and the HTTP endpoint that serves them.

pub mod cli;
pub mod ctl;
pub mod jail;
pub mod kinds;
pub mod metrics;
pub mod process;
pub mod supervisor;
pub mod systemd;
