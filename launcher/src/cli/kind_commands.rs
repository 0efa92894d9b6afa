//! The per-kind commands, built from the kinds' own option definitions (`crate::kinds`):
//! `launcher start KIND` (the common device options, the kind's options, the supervisor and
//! sandbox options) and the hidden `launcher __device KIND` that the launcher execs as the
//! device process (its fds by number, the kind's options given back).

use std::ffi::OsString;
use std::os::fd::RawFd;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand};

use super::common::{DeviceArgs, SandboxArgs, SandboxMode, TestTriggers};
use super::SupervisorArgs;
use crate::kinds::{self, Kind, KindOptions};

/// `launcher start KIND ...`: one device from the command line (or one `[[device]]` of a
/// config file, which is read with the same definitions).
pub struct StartDevice {
    /// The kind.
    pub kind: &'static dyn Kind,
    /// Socket and name.
    pub device: DeviceArgs,
    /// Supervisor options (command line only).
    pub supervisor: SupervisorArgs,
    /// How the device process is confined.
    pub sandbox: SandboxArgs,
    /// Test-only triggers.
    pub test: TestTriggers,
    /// The kind's own options.
    pub options: Box<dyn KindOptions>,
    /// The same options as command-line arguments, for the device process.
    pub option_args: Vec<OsString>,
}

impl std::fmt::Debug for StartDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartDevice")
            .field("kind", &self.kind.name())
            .field("device", &self.device)
            .field("options", &self.options)
            .field("option_args", &self.option_args)
            .finish_non_exhaustive()
    }
}

impl StartDevice {
    /// The device's name: `--name`, else the kind followed by 0 (`block0`).
    pub fn name(&self) -> String {
        self.device
            .name
            .clone()
            .unwrap_or_else(|| format!("{}0", self.kind.name()))
    }

    /// Reads a device of `kind` from the matches of [`start_command`].
    pub fn from_kind_matches(
        kind: &'static dyn Kind,
        m: &ArgMatches,
    ) -> Result<StartDevice, clap::Error> {
        Ok(StartDevice {
            kind,
            device: DeviceArgs::from_arg_matches(m)?,
            supervisor: SupervisorArgs::from_arg_matches(m)?,
            sandbox: SandboxArgs::from_arg_matches(m)?,
            test: TestTriggers::from_arg_matches(m)?,
            options: kind.parse(m)?,
            option_args: option_args(kind, m),
        })
    }
}

/// The command `launcher start KIND`.
pub fn start_command(kind: &'static dyn Kind) -> Command {
    let cmd = DeviceArgs::augment_args(Command::new(kind.name())).arg(
        // Answered before clap parses the line (`super::conventions`); here for --help.
        Arg::new("print_capabilities")
            .long("print-capabilities")
            .action(ArgAction::SetTrue)
            .help(
                "Print the back-end's capabilities as JSON (the vhost-user spec's \
                 VHostUserBackendCapabilities, e.g. {\"type\":\"block\",\"features\":[...]}) \
                 and exit 0; every other option is ignored",
            ),
    );
    let cmd = kind.options(cmd);
    let cmd = SupervisorArgs::augment_args(cmd);
    let cmd = SandboxArgs::augment_args(cmd);
    // Last: each `augment_args` sets the command's description from its struct's doc comment.
    TestTriggers::augment_args(cmd)
        .about(kind.about())
        .long_about(kind.long_about())
        .after_help(kind.example())
}

impl FromArgMatches for StartDevice {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, sub) = m.subcommand().ok_or_else(|| {
            clap::Error::raw(ErrorKind::MissingSubcommand, "a device kind is required\n")
        })?;
        let kind = kinds::find(name).ok_or_else(|| {
            clap::Error::raw(
                ErrorKind::InvalidSubcommand,
                format!("unknown device kind {name:?} (known: {})\n", kinds::names()),
            )
        })?;
        StartDevice::from_kind_matches(kind, sub)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = StartDevice::from_arg_matches(m)?;
        Ok(())
    }
}

impl Subcommand for StartDevice {
    fn augment_subcommands(cmd: Command) -> Command {
        kinds::KINDS
            .iter()
            .fold(cmd, |c, k| c.subcommand(start_command(*k)))
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        StartDevice::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        kinds::find(name).is_some()
    }
}

/// The kind's options that were given (on the command line, or from a config file), as
/// `--option[=VALUE]` arguments that parse back to the same options. Defaults are left out:
/// the device process applies the same ones.
pub fn option_args(kind: &dyn Kind, m: &ArgMatches) -> Vec<OsString> {
    let defs = kind.options(Command::new("options"));
    let mut out = Vec::new();
    for a in defs.get_arguments() {
        let id = a.get_id().as_str();
        let Some(long) = a.get_long() else { continue };
        if !matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = || OsString::from(format!("--{long}"));
        match a.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => {
                let set = m.try_get_one::<bool>(id).ok().flatten().copied();
                let want = matches!(a.get_action(), ArgAction::SetTrue);
                if set == Some(want) {
                    out.push(flag());
                }
            }
            ArgAction::Count => {
                let n = m.try_get_one::<u8>(id).ok().flatten().copied().unwrap_or(0);
                out.extend((0..n).map(|_| flag()));
            }
            _ => {
                if let Ok(Some(values)) = m.try_get_raw(id) {
                    for v in values {
                        // `--opt=VALUE`: a value that starts with '-' stays a value.
                        let mut s = OsString::from(format!("--{long}="));
                        s.push(v);
                        out.push(s);
                    }
                }
            }
        }
    }
    out
}

/// `launcher __device KIND`: the device process, with its fds already in place.
pub struct DeviceCommand {
    /// The kind.
    pub kind: &'static dyn Kind,
    /// The kind's fds, in the order of its `FDS` then `PROCESS_FDS`.
    pub kind_fds: Vec<RawFd>,
    /// The common fds and the jail.
    pub process: DeviceProcessArgs,
    /// Test-only triggers.
    pub test: TestTriggers,
    /// The kind's options.
    pub options: Box<dyn KindOptions>,
}

impl std::fmt::Debug for DeviceCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCommand")
            .field("kind", &self.kind.name())
            .field("kind_fds", &self.kind_fds)
            .field("process", &self.process)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What every device process receives besides its kind's fds and options.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct DeviceProcessArgs {
    /// The listening vhost-user socket, bound by the launcher.
    #[arg(long, value_name = "FD")]
    pub fd_socket: RawFd,

    /// The device's end of the control socketpair.
    #[arg(long, value_name = "FD")]
    pub fd_control: RawFd,

    /// The compiled seccomp filters, in a sealed memfd (required with `--sandbox jail`).
    #[arg(long, value_name = "FD")]
    pub fd_seccomp: Option<RawFd>,

    /// Jail or not.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SandboxMode::Jail)]
    pub sandbox: SandboxMode,

    /// The filters log forbidden calls instead of killing (for the device's messages).
    #[arg(long)]
    pub seccomp_log: bool,

    /// The device's name, for messages.
    #[arg(long, value_name = "NAME")]
    pub device_name: Option<String>,
}

/// The command `launcher __device KIND`.
pub fn device_command(kind: &'static dyn Kind) -> Command {
    let mut cmd = Command::new(kind.name());
    for f in kind.all_fds() {
        let arg = Arg::new(f.flag)
            .long(f.flag)
            .value_name("FD")
            .required(true)
            .help(format!("{}, opened by the launcher", f.what))
            .value_parser(clap::value_parser!(RawFd));
        // A repeating fd is given once per fd (`--fd-tap 3 --fd-tap 4`).
        cmd = cmd.arg(if f.repeats {
            arg.action(ArgAction::Append)
        } else {
            arg
        });
    }
    let cmd = DeviceProcessArgs::augment_args(cmd);
    let cmd = kind.options(cmd);
    TestTriggers::augment_args(cmd)
        .about(kind.about())
        .long_about(None::<&str>)
}

impl FromArgMatches for DeviceCommand {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, sub) = m.subcommand().ok_or_else(|| {
            clap::Error::raw(ErrorKind::MissingSubcommand, "a device kind is required\n")
        })?;
        let kind = kinds::find(name).ok_or_else(|| {
            clap::Error::raw(
                ErrorKind::InvalidSubcommand,
                format!("unknown device kind {name:?}\n"),
            )
        })?;
        let mut kind_fds = Vec::new();
        for f in kind.all_fds() {
            let fds: Vec<RawFd> = sub
                .try_get_many::<RawFd>(f.flag)
                .ok()
                .flatten()
                .map(|v| v.copied().collect())
                .unwrap_or_default();
            if fds.is_empty() {
                return Err(clap::Error::raw(
                    ErrorKind::MissingRequiredArgument,
                    format!("--{} is required\n", f.flag),
                ));
            }
            kind_fds.extend(fds);
        }
        Ok(DeviceCommand {
            kind,
            kind_fds,
            process: DeviceProcessArgs::from_arg_matches(sub)?,
            test: TestTriggers::from_arg_matches(sub)?,
            options: kind.parse(sub)?,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = DeviceCommand::from_arg_matches(m)?;
        Ok(())
    }
}

impl Subcommand for DeviceCommand {
    fn augment_subcommands(cmd: Command) -> Command {
        kinds::KINDS
            .iter()
            .fold(cmd, |c, k| c.subcommand(device_command(*k)))
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        DeviceCommand::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        kinds::find(name).is_some()
    }
}

/// The device process's arguments after `argv[0]`: `__device KIND`, the fd numbers (the kind's
/// fds first, from 3 on, then the socket, the control channel and the seccomp filters), the
/// jail options, the kind's options and the test triggers.
#[derive(Debug, Clone)]
pub struct DeviceLayout {
    /// The numbers of the kind's fds, in order.
    pub kind_fds: Vec<RawFd>,
    /// The listening socket.
    pub socket: RawFd,
    /// The control channel.
    pub control: RawFd,
    /// The seccomp filters (jailed devices).
    pub seccomp: Option<RawFd>,
}

impl DeviceLayout {
    /// The fd numbers for a kind with `kind_fds` fds.
    pub fn new(kind_fds: usize, jailed: bool) -> DeviceLayout {
        let first = 3;
        let n = RawFd::try_from(kind_fds).unwrap_or(0);
        DeviceLayout {
            kind_fds: (first..first + n).collect(),
            socket: first + n,
            control: first + n + 1,
            seccomp: jailed.then_some(first + n + 2),
        }
    }
}

/// The arguments of the device process of `dev` (see [`DeviceLayout`]).
pub fn device_process_args(
    dev: &StartDevice,
    layout: &DeviceLayout,
    log_filter: &str,
) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "--log-level".into(),
        log_filter.into(),
        "__device".into(),
        dev.kind.name().into(),
    ];
    let specs = dev
        .kind
        .fds_for(layout.kind_fds.len())
        .unwrap_or_else(|| dev.kind.all_fds());
    for (f, fd) in specs.iter().zip(&layout.kind_fds) {
        v.push(format!("--{}", f.flag).into());
        v.push(fd.to_string().into());
    }
    v.push("--fd-socket".into());
    v.push(layout.socket.to_string().into());
    v.push("--fd-control".into());
    v.push(layout.control.to_string().into());
    if let Some(fd) = layout.seccomp {
        v.push("--fd-seccomp".into());
        v.push(fd.to_string().into());
    }
    v.push("--sandbox".into());
    v.push(dev.sandbox.sandbox.as_str().into());
    if dev.sandbox.seccomp.seccomp_log {
        v.push("--seccomp-log".into());
    }
    v.push("--device-name".into());
    v.push(dev.name().into());
    v.extend(dev.option_args.iter().cloned());
    v
}
