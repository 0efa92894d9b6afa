//! Device kinds: everything the launcher must know about one virtio device, in one place.
//!
//! A kind declares
//! - its name: the `launcher start KIND` subcommand, `kind = "KIND"` in a config file, the
//!   seccomp policy `jail-policies/<arch>/KIND_device.policy` and the jail's hostname
//!   (`vu-KIND`);
//! - its options, once, as a clap `Args` struct: the command line takes them as `--opt-name`,
//!   a config file as `opt_name = ...` (see `cli::config`), and the device process receives
//!   them back as command-line arguments;
//! - the fds the parent opens for it ([`FdSpec`], [`DeviceKind::open`]), handed to every
//!   device process of it as `--fd-NAME N` (an fd spec that repeats, such as a tap's one
//!   queue per queue pair, as `--fd-tap 3 --fd-tap 4`);
//! - how the device is built inside the jail from those fds ([`DeviceKind::build`]);
//! - what the vhost-user spec's "Backend program conventions" say of it: its back-end type
//!   and the capability features it has ([`DeviceKind::TYPE`], [`DeviceKind::FEATURES`],
//!   printed by `--print-capabilities`). Its options accept the option names the spec gives
//!   for its type (block: `--blk-file`, `--read-only`), so that a manager such as libvirt can
//!   run `vu-vhost-user-KIND` (see `cli::conventions`).
//!
//! Everything else (supervisor, spawn, the device entry point, config files, status, control)
//! is generic over kinds. Adding a device: a module folder in `vu-devices`, one file here, its
//! policy files, and one line in [`KINDS`].

pub mod block;
pub mod image_lock;
pub mod net;
pub mod rng;
pub mod vsock;

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use clap::{ArgMatches, Args, Command, FromArgMatches};
use nix::sys::stat::SFlag;
use vu_core::VhostUserDevice;

pub use crate::jail::limits::DEFAULT_OPEN_FILES;

/// Every kind the launcher knows, in the order `launcher start --help` lists them.
pub static KINDS: &[&dyn Kind] = &[
    &Registered::<block::Block>(PhantomData),
    &Registered::<rng::Rng>(PhantomData),
    &Registered::<net::Net>(PhantomData),
    &Registered::<vsock::Vsock>(PhantomData),
];

/// The kind named `name`.
pub fn find(name: &str) -> Option<&'static dyn Kind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// The names of every kind, for messages ("block, rng").
pub fn names() -> String {
    KINDS
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `--print-capabilities` prints for `kind` (the vhost-user spec's
/// `VHostUserBackendCapabilities`): `{"type":"block","features":["read-only","blk-file"]}`;
/// a kind with no features prints an empty list (`{"type":"rng","features":[]}`), the shape
/// of the spec's example, so that every kind's output reads the same way.
pub fn capabilities_json(kind: &dyn Kind) -> String {
    // Written by hand to keep the spec's order (type first); the values go through serde.
    let ty = serde_json::Value::from(kind.vhost_user_type());
    let features = serde_json::Value::from(kind.features().to_vec());
    format!("{{\"type\":{ty},\"features\":{features}}}")
}

/// The back-end types of QEMU's docs/interop/vhost-user.json (`VHostUserBackendType`).
pub const VHOST_USER_TYPES: &[&str] = &[
    "9p",
    "balloon",
    "block",
    "caif",
    "console",
    "crypto",
    "gpu",
    "input",
    "net",
    "rng",
    "rpmsg",
    "rproc-serial",
    "scsi",
    "vsock",
    "fs",
];

/// A kind's own error (opening or building its device), as the seam carries it.
pub type KindError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One fd a kind's device process receives from the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdSpec {
    /// The device process's option that carries its number (`fd-image` for `--fd-image N`).
    pub flag: &'static str,
    /// What it is, for messages ("the image").
    pub what: &'static str,
    /// The file types it may be.
    pub types: &'static [SFlag],
    /// The parent opens one or more of it (a tap: one queue per queue pair), as many as the
    /// options ask for; they follow each other in [`Opened::fds`] and the device process
    /// gets `--fd-tap 3 --fd-tap 4`. At most one spec of a kind repeats, and only in
    /// [`DeviceKind::FDS`].
    pub repeats: bool,
}

/// The spec of each of `count` fds of a device process, in order: every spec of `specs`
/// once, a repeating one as often as it takes to make `count`. None when `count` cannot be
/// made (too few, or too many without a repeating spec).
pub fn expand_fds(specs: &[FdSpec], count: usize) -> Option<Vec<FdSpec>> {
    let fixed = specs.iter().filter(|s| !s.repeats).count();
    let repeating = specs.len() - fixed;
    let times = match repeating {
        0 if count == fixed => 0,
        1 if count > fixed => count - fixed,
        _ => return None,
    };
    let mut out = Vec::with_capacity(count);
    for s in specs {
        let n = if s.repeats { times } else { 1 };
        out.extend(std::iter::repeat_n(*s, n));
    }
    Some(out)
}

/// What the parent opened for one device: passed to each of its processes.
#[derive(Debug)]
pub struct Opened {
    /// The fds, in the order of the kind's [`DeviceKind::FDS`].
    pub fds: Vec<OwnedFd>,
    /// (key, value) pairs that say what is served, for the launcher's log lines
    /// (`image = /var/lib/vm0/disk0.raw`).
    pub describe: Vec<(&'static str, String)>,
    /// The kind's parent-side companion, for kinds whose device needs the parent while it
    /// runs (vsock: a broker that connects host sockets on the device's behalf).
    pub companion: Option<Box<dyn Companion>>,
}

/// The parent-side part of a device that needs the launcher while it runs. The supervisor
/// calls it around each device process; it must never block for long (it runs on the
/// supervisor's thread) and must treat whatever the device sends it as hostile: the device
/// may be compromised. It is dropped when the launcher shuts down, after the device's last
/// process ended: its `Drop` releases what it holds.
pub trait Companion: Send + Debug {
    /// Before a device process starts: the fds of [`DeviceKind::PROCESS_FDS`], in order,
    /// made fresh for this process (e.g. the device's end of a socketpair whose other end
    /// the companion serves).
    fn before_spawn(&mut self) -> io::Result<Vec<OwnedFd>>;

    /// The device process started (`pid`) with the fds of `before_spawn`.
    fn spawned(&mut self, _pid: i32) {}

    /// The device process ended.
    fn exited(&mut self) {}

    /// What the parent knows of the device that its process cannot tell (net: the tap's own
    /// counters, read in the launcher's network namespace), added to the device's fields in
    /// `launcher ctl status`. Called on a control client's thread with the supervisor's
    /// device table locked: it must be quick.
    fn status_fields(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// What the device process learned before entering the jail.
#[derive(Debug, Clone, Default)]
pub struct DeviceEnv {
    /// CPUs the process may run on (0: unknown); read before the jail hides /proc and /sys.
    pub cpus: usize,
}

/// A device ready to be served, built in the device process.
pub struct Prepared {
    /// The device.
    pub device: Arc<dyn VhostUserDevice>,
    /// Makes everything the device wrote durable (called once serving has stopped).
    pub flush: Box<dyn Fn() -> io::Result<()> + Send>,
    /// Bounded queue polling, in microseconds (0: off).
    pub poll_us: u32,
}

impl Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("device", &self.device.name())
            .field("poll_us", &self.poll_us)
            .finish_non_exhaustive()
    }
}

/// A device kind, written once per device.
pub trait DeviceKind: Send + Sync + 'static {
    /// The kind's options (clap `Args`): the `launcher start KIND` options after the common
    /// ones (socket, name, supervisor, sandbox), the config file's keys, and what the device
    /// process is given back.
    type Options: Args + FromArgMatches + Clone + Debug + Send + Sync + 'static;

    /// The kind's name: lower-case letters, digits and `_`.
    const NAME: &'static str;
    /// One line for `launcher start --help`.
    const ABOUT: &'static str;
    /// The description of `launcher start KIND --help`.
    const LONG_ABOUT: &'static str;
    /// Examples for `launcher start KIND --help`.
    const EXAMPLE: &'static str;
    /// The fds the parent opens for the device once, in order; every process of it gets them.
    /// One of them may repeat ([`FdSpec::repeats`]).
    const FDS: &'static [FdSpec];
    /// Fds made fresh for each device process by the kind's [`Companion`], after `FDS`.
    const PROCESS_FDS: &'static [FdSpec] = &[];
    /// The vhost-user back-end type (a `VHostUserBackendType` of QEMU's
    /// docs/interop/vhost-user.json: "block", "rng", "net", "vsock"...), the `type` of
    /// `--print-capabilities` and of the kind's description file
    /// (`packaging/qemu-vhost-user/50-vu-KIND.json`). Default: the kind's name; a test checks
    /// that it is one of the schema's types.
    const TYPE: &'static str = Self::NAME;
    /// The capability features of the schema for [`Self::TYPE`] that are true of this kind
    /// (block: "read-only", "blk-file"; each names an option the kind accepts), in the
    /// schema's spelling. Default: none (the schema defines none for rng, net or vsock);
    /// `features` is then left out of `--print-capabilities`.
    const FEATURES: &'static [&'static str] = &[];

    /// In the launcher, before any device process starts: opens what the device needs (one
    /// fd per [`Self::FDS`]) and checks that it can be served, so that a bad option or file
    /// fails `launcher start` with a clear error. Logs what will be served.
    fn open(opts: &Self::Options, device: &str) -> Result<Opened, KindError>;

    /// In the device process, jailed: builds the device from the fds the parent opened (in
    /// the order of [`Self::FDS`], then [`Self::PROCESS_FDS`]), never from paths.
    fn build(
        opts: &Self::Options,
        fds: Vec<OwnedFd>,
        env: &DeviceEnv,
    ) -> Result<Prepared, KindError>;

    /// RLIMIT_NOFILE of the jailed device process: how many descriptors it may hold at once.
    /// Default [`DEFAULT_OPEN_FILES`] (guest memory regions, eventfds, rings); a kind whose
    /// descriptors grow with its load (vsock: one per host connection) asks for more.
    fn open_files(_opts: &Self::Options) -> u64 {
        DEFAULT_OPEN_FILES
    }

    /// In the launcher, once every process of the device has stopped cleanly (drained and
    /// flushed) and the launcher is about to exit: lets go of what [`Self::open`] holds on to
    /// beyond its fds' lifetime (the block kind's image locks, which an io_uring ring's
    /// registered file could otherwise keep a moment longer). Default: nothing.
    fn release(_fds: &[OwnedFd]) {}
}

/// A kind as the generic code sees it (object safe).
pub trait Kind: Send + Sync {
    /// See [`DeviceKind::NAME`].
    fn name(&self) -> &'static str;
    /// See [`DeviceKind::ABOUT`].
    fn about(&self) -> &'static str;
    /// See [`DeviceKind::LONG_ABOUT`].
    fn long_about(&self) -> &'static str;
    /// See [`DeviceKind::EXAMPLE`].
    fn example(&self) -> &'static str;
    /// See [`DeviceKind::FDS`].
    fn fds(&self) -> &'static [FdSpec];
    /// See [`DeviceKind::PROCESS_FDS`].
    fn process_fds(&self) -> &'static [FdSpec];
    /// Every fd of the device process, in order: `fds()`, then `process_fds()`.
    fn all_fds(&self) -> Vec<FdSpec> {
        self.fds()
            .iter()
            .chain(self.process_fds())
            .copied()
            .collect()
    }
    /// The spec of each of the `count` kind fds a device process gets (see [`expand_fds`]).
    fn fds_for(&self, count: usize) -> Option<Vec<FdSpec>> {
        expand_fds(&self.all_fds(), count)
    }
    /// See [`DeviceKind::TYPE`].
    fn vhost_user_type(&self) -> &'static str;
    /// See [`DeviceKind::FEATURES`].
    fn features(&self) -> &'static [&'static str];
    /// Adds the kind's options to `cmd`.
    fn options(&self, cmd: Command) -> Command;
    /// Reads the kind's options from parsed arguments.
    fn parse(&self, m: &ArgMatches) -> Result<Box<dyn KindOptions>, clap::Error>;
    /// See [`DeviceKind::release`].
    fn release(&self, fds: &[OwnedFd]);
}

/// A kind's parsed options, as the generic code sees them.
pub trait KindOptions: Debug + Send + Sync {
    /// See [`DeviceKind::open`].
    fn open(&self, device: &str) -> Result<Opened, KindError>;
    /// See [`DeviceKind::build`].
    fn build(&self, fds: Vec<OwnedFd>, env: &DeviceEnv) -> Result<Prepared, KindError>;
    /// See [`DeviceKind::open_files`].
    fn open_files(&self) -> u64;
}

/// The object-safe face of a [`DeviceKind`].
pub struct Registered<K>(pub PhantomData<fn() -> K>);

impl<K: DeviceKind> Debug for Registered<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kind {}", K::NAME)
    }
}

/// Options of kind `K`.
pub struct ParsedOptions<K: DeviceKind>(pub K::Options);

impl<K: DeviceKind> Debug for ParsedOptions<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<K: DeviceKind> KindOptions for ParsedOptions<K> {
    fn open(&self, device: &str) -> Result<Opened, KindError> {
        let opened = K::open(&self.0, device)?;
        if expand_fds(K::FDS, opened.fds.len()).is_none()
            || opened.companion.is_none() && !K::PROCESS_FDS.is_empty()
        {
            return Err(format!(
                "kind {} opened {} fds but declares {} (and {} per process)",
                K::NAME,
                opened.fds.len(),
                K::FDS.len(),
                K::PROCESS_FDS.len()
            )
            .into());
        }
        Ok(opened)
    }

    fn build(&self, fds: Vec<OwnedFd>, env: &DeviceEnv) -> Result<Prepared, KindError> {
        K::build(&self.0, fds, env)
    }

    fn open_files(&self) -> u64 {
        K::open_files(&self.0)
    }
}

impl<K: DeviceKind> Kind for Registered<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn about(&self) -> &'static str {
        K::ABOUT
    }

    fn long_about(&self) -> &'static str {
        K::LONG_ABOUT
    }

    fn example(&self) -> &'static str {
        K::EXAMPLE
    }

    fn fds(&self) -> &'static [FdSpec] {
        K::FDS
    }

    fn process_fds(&self) -> &'static [FdSpec] {
        K::PROCESS_FDS
    }

    fn vhost_user_type(&self) -> &'static str {
        K::TYPE
    }

    fn features(&self) -> &'static [&'static str] {
        K::FEATURES
    }

    fn options(&self, cmd: Command) -> Command {
        K::Options::augment_args(cmd)
    }

    fn parse(&self, m: &ArgMatches) -> Result<Box<dyn KindOptions>, clap::Error> {
        Ok(Box::new(ParsedOptions::<K>(K::Options::from_arg_matches(
            m,
        )?)))
    }

    fn release(&self, fds: &[OwnedFd]) {
        K::release(fds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_policy_friendly() {
        let mut seen = std::collections::HashSet::new();
        for k in KINDS {
            let n = k.name();
            assert!(seen.insert(n), "kind {n} twice");
            assert!(
                !n.is_empty()
                    && n != "common"
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n}"
            );
            assert!(
                k.fds().iter().filter(|f| f.repeats).count() <= 1
                    && k.process_fds().iter().all(|f| !f.repeats),
                "{n}: more than one repeating fd, or a repeating fd per process"
            );
            for f in k.all_fds() {
                assert!(f.flag.starts_with("fd-"), "{n}: {}", f.flag);
                assert!(
                    !["fd-socket", "fd-control", "fd-seccomp"].contains(&f.flag),
                    "{n}: {} is the seam's own",
                    f.flag
                );
            }
        }
    }

    #[test]
    fn types_and_features_are_the_schemas() {
        for k in KINDS {
            assert!(
                VHOST_USER_TYPES.contains(&k.vhost_user_type()),
                "{}: type {} is not in vhost-user.json",
                k.name(),
                k.vhost_user_type()
            );
            let cmd = k.options(Command::new("x"));
            for f in k.features() {
                // Each feature the schema defines names an option of the program.
                let known = matches!(
                    (k.vhost_user_type(), *f),
                    ("block", "read-only" | "blk-file")
                        | ("input", "evdev-path" | "no-grab")
                        | ("gpu", "render-node" | "virgl")
                );
                assert!(
                    known,
                    "{}: {f} is not a feature of vhost-user.json",
                    k.name()
                );
                let takes = cmd.get_arguments().any(|a| {
                    a.get_long() == Some(f) || a.get_all_aliases().is_some_and(|al| al.contains(f))
                });
                assert!(takes, "{}: feature {f} but no --{f} option", k.name());
            }
            let json: serde_json::Value =
                serde_json::from_str(&capabilities_json(*k)).expect("valid JSON");
            assert_eq!(json["type"], k.vhost_user_type());
        }
    }

    #[test]
    fn repeating_fds_expand() {
        const A: FdSpec = FdSpec {
            flag: "fd-a",
            what: "a",
            types: &[],
            repeats: false,
        };
        const T: FdSpec = FdSpec {
            flag: "fd-tap",
            what: "a tap queue",
            types: &[],
            repeats: true,
        };
        let flags = |specs: &[FdSpec], n| {
            expand_fds(specs, n).map(|v| v.iter().map(|s| s.flag).collect::<Vec<_>>())
        };
        assert_eq!(flags(&[A], 1), Some(vec!["fd-a"]));
        assert_eq!(flags(&[A], 2), None);
        assert_eq!(flags(&[A], 0), None);
        assert_eq!(flags(&[], 0), Some(vec![]));
        assert_eq!(flags(&[T], 0), None, "a repeating fd comes at least once");
        assert_eq!(flags(&[T], 2), Some(vec!["fd-tap", "fd-tap"]));
        assert_eq!(
            flags(&[A, T, A], 4),
            Some(vec!["fd-a", "fd-tap", "fd-tap", "fd-a"])
        );
        assert_eq!(flags(&[T, T], 3), None, "two repeating specs are ambiguous");
    }

    #[test]
    fn block_capabilities() {
        let block = find("block").expect("block");
        assert_eq!(
            capabilities_json(block),
            r#"{"type":"block","features":["read-only","blk-file"]}"#
        );
        let rng = find("rng").expect("rng");
        assert_eq!(capabilities_json(rng), r#"{"type":"rng","features":[]}"#);
    }

    #[test]
    fn every_kind_has_an_embedded_policy() {
        for k in KINDS {
            assert!(
                crate::jail::seccomp::DEVICES.contains(&k.name()),
                "no {}_device.policy in jail-policies",
                k.name()
            );
        }
    }

    #[test]
    fn kind_options_have_no_positionals_and_no_common_names() {
        for k in KINDS {
            let cmd = k.options(Command::new("x"));
            for a in cmd.get_arguments() {
                assert!(
                    a.get_long().is_some(),
                    "{}: option {} is not a --long option",
                    k.name(),
                    a.get_id()
                );
                let long = a.get_long().unwrap_or_default();
                assert!(
                    ![
                        "socket",
                        "socket-path",
                        "socket-name",
                        "fd",
                        "print-capabilities",
                        "name",
                        "kind",
                        "sandbox",
                        "jail-user",
                        "control",
                        "no-control"
                    ]
                    .contains(&long),
                    "{}: --{long} is a common option",
                    k.name()
                );
            }
        }
    }
}
