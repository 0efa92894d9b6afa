//! The device process: how the launcher starts it (`spawn.rs`: clone into new namespaces,
//! exec), its entry point (`entry.rs`: adopt the fds, enter the jail, build the device),
//! serving (`serve.rs`), and the first message on its control channel (`ready.rs`). The
//! test-only escape battery (`escape.rs`) is compiled into debug builds only.

pub mod entry;
#[cfg(debug_assertions)]
pub mod escape;
pub mod escape_names;
pub mod ready;
pub mod serve;
pub mod spawn;
