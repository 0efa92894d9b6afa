//! The vsock kind (`launcher start vsock`): virtio-vsock (device id 19) served as
//! vhost-user-vsock, hybrid as Firecracker and vhost-device-vsock define it. Host programs
//! connect to the `--uds-path` socket and write `CONNECT <port>\n`; a guest connecting to
//! CID 2 port P reaches the host program listening on `<uds-path>_P`; guests whose devices
//! share a `--group` reach each other by CID.
//!
//! The jailed device opens no paths and makes no connections. The launcher binds the
//! `--uds-path` socket and passes it (`FDS`); for each device process the kind's companion
//! (`vsock/companion.rs`) makes a broker socketpair (`PROCESS_FDS`) and serves it on a thread
//! of the launcher, connecting only to `<uds-path>_<decimal port>` on the device's behalf, and
//! pairs the device with its live siblings (`vsock/registry.rs`).

mod companion;
mod registry;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use clap::Args;
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::stat::SFlag;
use vu_devices::vsock::packet::valid_guest_cid;
use vu_devices::vsock::{
    VsockConfig, VsockDevice, DEFAULT_MAX_CONNECTIONS, DEFAULT_QUEUE_SIZE, DEFAULT_TX_BUFFER_SIZE,
};

use super::{DeviceEnv, DeviceKind, FdSpec, KindError, Opened, Prepared, DEFAULT_OPEN_FILES};
use crate::cli::common::parse_queue_size;
use crate::supervisor::socket::{self, SocketError};

pub use companion::VsockCompanion;
pub use registry::{Groups, RegistryError};

/// The guest CID when none is given (vhost-device-vsock's default).
pub const DEFAULT_GUEST_CID: u64 = 3;
/// Largest `--max-connections`.
pub const MAX_CONNECTIONS: usize = 1 << 16;
/// Largest `--tx-buffer-size` (the device's limit).
pub const MAX_TX_BUFFER_SIZE: u32 = 64 << 20;
/// Longest `--uds-path`: `<uds-path>_<port>` must fit in a UNIX socket address (107 bytes)
/// for every port (10 digits).
pub const MAX_UDS_PATH: usize = 107 - 11;

/// The vsock kind.
#[derive(Debug)]
pub struct Vsock;

/// The `--uds-path` listener's fd in the device process.
pub const FD_UDS: FdSpec = FdSpec {
    flag: "fd-uds",
    what: "the --uds-path listener",
    types: &[SFlag::S_IFSOCK],
    repeats: false,
};

/// The device's end of its broker socketpair (made fresh for each process).
pub const FD_BROKER: FdSpec = FdSpec {
    flag: "fd-broker",
    what: "the broker socket",
    types: &[SFlag::S_IFSOCK],
    repeats: false,
};

/// The options of `launcher start vsock` (after the common ones), the keys of a
/// `kind = "vsock"` device in a config file, and what the device process is given back. The
/// names and meanings are vhost-device-vsock's, so that its command lines carry over.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(next_help_heading = "vsock")]
pub struct VsockArgs {
    /// The guest's context id: 3 to 4294967294 (0, 1, 2 and 4294967295 are reserved), unique
    /// among the launcher's vsock devices. QEMU reads it from the device when it starts.
    #[arg(long, value_name = "CID", default_value_t = DEFAULT_GUEST_CID, value_parser = parse_guest_cid)]
    pub guest_cid: u64,

    /// The UNIX socket host programs connect to (`CONNECT <port>\n`, answered `OK <host
    /// port>\n`) to reach the guest's listener on that port; the launcher binds it (a stale
    /// socket is replaced) and removes it on exit. A guest connecting to CID 2 port P reaches
    /// the host program listening on `<uds-path>_P`, connected by the launcher for the jailed
    /// device. At most 96 bytes.
    #[arg(long, value_name = "PATH")]
    pub uds_path: PathBuf,

    /// Bytes buffered per connection for guest data the host program has not read yet (the
    /// credit the guest gets): 1 to 67108864. A host program that stops reading stalls the
    /// guest's sender once this is full.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_TX_BUFFER_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TX_BUFFER_SIZE)))]
    pub tx_buffer_size: u32,

    /// Largest virtqueue size the front-end may set, in descriptors: a power of two from 4 to
    /// 32768.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUE_SIZE, value_parser = parse_queue_size)]
    pub queue_size: u16,

    /// Sibling groups, separated by '+' (`--groups` as vhost-device-vsock spells it): guests
    /// of vsock devices of this launcher that share a group reach each other by CID, each
    /// device still in its own jail. Names: letters, digits, '-', '_', '.'. Default: none
    /// (vhost-device-vsock puts every VM of one process in "default"; here sibling traffic is
    /// opt-in).
    #[arg(long, visible_alias = "groups", value_name = "NAME[+NAME...]", value_parser = Groups::parse)]
    pub group: Option<Groups>,

    /// Host connections the device holds at most (open, or waiting for the guest); each is a
    /// descriptor of the jailed process, whose RLIMIT_NOFILE is raised to fit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    pub max_connections: usize,
}

impl VsockArgs {
    /// The groups the device is in (none without `--group`).
    pub fn groups(&self) -> &[String] {
        self.group.as_ref().map_or(&[], |g| g.names())
    }
}

impl DeviceKind for Vsock {
    type Options = VsockArgs;
    const NAME: &'static str = "vsock";
    const ABOUT: &'static str =
        "Serve virtio-vsock to host UNIX sockets as a vhost-user-vsock device";
    const LONG_ABOUT: &'static str = "Serve virtio-vsock as a vhost-user-vsock device (virtio \
        device id 19), hybrid as Firecracker and vhost-device-vsock do it.\n\n\
        Host programs connect to --uds-path and write \"CONNECT <port>\\n\"; the device answers \
        \"OK <host port>\\n\" once the guest accepted, or closes the stream. A guest connecting \
        to CID 2 port P reaches the host program listening on <uds-path>_P. Guests of devices \
        that share a --group reach each other by CID. The jailed device opens nothing itself: \
        the launcher binds --uds-path and connects <uds-path>_P on its behalf (to that path \
        and no other). Logs \"listening on SOCKET\" once ready; a device that dies is started \
        again (its connections are reset; siblings get fresh links). \
        QEMU: -device vhost-user-vsock-pci,chardev=ID (it reads the guest CID from the device).";
    const EXAMPLE: &'static str = "Examples:\n  \
        launcher start vsock --socket /run/vm3/vsock.sock --guest-cid 3 --uds-path /run/vm3/v.sock\n  \
        # a host program reaches the guest's port 1234:\n  \
        socat - UNIX-CONNECT:/run/vm3/v.sock  (then type: CONNECT 1234)";
    const FDS: &'static [FdSpec] = &[FD_UDS];
    const PROCESS_FDS: &'static [FdSpec] = &[FD_BROKER];

    fn open(opts: &VsockArgs, device: &str) -> Result<Opened, KindError> {
        check_uds_path(&opts.uds_path)?;
        check_open_files(opts)?;
        // Before binding, so that a second device with the same CID leaves no socket behind.
        let member = registry::register(device, opts.guest_cid, opts.groups())?;
        let (listener, file) = socket::bind(&opts.uds_path).map_err(VsockSetupError::UdsPath)?;
        tracing::info!(
            device,
            guest_cid = opts.guest_cid,
            uds_path = %opts.uds_path.display(),
            groups = %opts.groups().join("+"),
            "vsock: host programs connect to the uds path"
        );
        let mut describe = vec![
            ("guest_cid", opts.guest_cid.to_string()),
            ("uds_path", opts.uds_path.display().to_string()),
        ];
        if !opts.groups().is_empty() {
            describe.push(("group", opts.groups().join("+")));
        }
        let companion = VsockCompanion::new(device, opts.uds_path.clone(), file, member);
        Ok(Opened {
            fds: vec![OwnedFd::from(listener)],
            describe,
            companion: Some(Box::new(companion)),
        })
    }

    fn build(opts: &VsockArgs, fds: Vec<OwnedFd>, _env: &DeviceEnv) -> Result<Prepared, KindError> {
        let mut fds = fds.into_iter();
        let (Some(listener), Some(broker)) = (fds.next(), fds.next()) else {
            return Err("the --uds-path listener or the broker fd is missing".into());
        };
        let device = VsockDevice::new(VsockConfig {
            guest_cid: opts.guest_cid,
            listener: Some(UnixListener::from(listener)),
            broker: Some(broker),
            queue_size: opts.queue_size,
            tx_buffer_size: opts.tx_buffer_size,
            max_connections: opts.max_connections,
        })?;
        Ok(Prepared {
            device,
            flush: Box::new(|| Ok(())),
            poll_us: 0,
        })
    }

    fn open_files(opts: &VsockArgs) -> u64 {
        open_files(opts.max_connections)
    }
}

/// RLIMIT_NOFILE for a device with `max_connections`: one descriptor per connection on top
/// of what every device may hold.
pub fn open_files(max_connections: usize) -> u64 {
    DEFAULT_OPEN_FILES.saturating_add(max_connections as u64)
}

/// Why a vsock device cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum VsockSetupError {
    /// The `--uds-path` socket cannot be bound.
    #[error(transparent)]
    UdsPath(SocketError),
    /// `<uds-path>_<port>` would not fit in a socket address.
    #[error(
        "--uds-path {path} is {len} bytes long; at most {MAX_UDS_PATH}, to leave room for \
         _<port> in the host programs' socket names"
    )]
    UdsPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The launcher's own hard limit is below what the device needs.
    #[error(
        "the device needs {need} open files for --max-connections {max_connections}, but the \
         launcher's hard RLIMIT_NOFILE is {hard}: lower --max-connections or raise the limit"
    )]
    OpenFiles {
        /// What the device needs.
        need: u64,
        /// `--max-connections`.
        max_connections: usize,
        /// The inherited hard limit.
        hard: u64,
    },
    /// The limit cannot be read.
    #[error("cannot read RLIMIT_NOFILE")]
    Rlimit(#[source] nix::Error),
}

fn check_uds_path(path: &std::path::Path) -> Result<(), VsockSetupError> {
    let len = OsStr::as_bytes(path.as_os_str()).len();
    if len > MAX_UDS_PATH {
        return Err(VsockSetupError::UdsPathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// The jail lowers RLIMIT_NOFILE to what the kind asks for, never above the launcher's hard
/// limit: refuse a connection limit the device could not reach.
fn check_open_files(opts: &VsockArgs) -> Result<(), VsockSetupError> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(VsockSetupError::Rlimit)?;
    let need = open_files(opts.max_connections);
    if hard < need {
        return Err(VsockSetupError::OpenFiles {
            need,
            max_connections: opts.max_connections,
            hard,
        });
    }
    Ok(())
}

/// A guest CID: 3 to 4294967294.
pub fn parse_guest_cid(s: &str) -> Result<u64, String> {
    let cid: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a context id (a number from 3 to 4294967294)"))?;
    if !valid_guest_cid(cid) {
        return Err(format!(
            "guest CID {cid} is reserved or out of range: 0 (hypervisor), 1 (local), 2 (host) \
             and 4294967295 (any) are not guest CIDs; use 3 to 4294967294"
        ));
    }
    Ok(cid)
}

/// A connection limit: 1 to [`MAX_CONNECTIONS`].
pub fn parse_max_connections(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of connections"))?;
    if !(1..=MAX_CONNECTIONS).contains(&n) {
        return Err(format!("{n} connections: use 1 to {MAX_CONNECTIONS}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
