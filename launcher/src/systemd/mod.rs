//! The launcher's side of systemd's protocols, each a no-op outside systemd:
//!
//! - `activation.rs`: socket activation (sd_listen_fds(3)): the listening sockets systemd
//!   passes (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES);
//! - `notify.rs`: service notifications (sd_notify(3)) for `Type=notify` units: READY=1,
//!   STATUS=, STOPPING=1 and WATCHDOG=1.
//!
//! Both go through the `sd-notify` crate. The unit files that use them are in
//! `packaging/systemd/`, described in `docs/systemd.md`.

pub mod activation;
pub mod notify;
