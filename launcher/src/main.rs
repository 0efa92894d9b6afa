//! `launcher`: starts, jails and supervises vhost-user device servers.
//!
//! `launcher start KIND ...` / `launcher start --config FILE` runs in the foreground as the
//! supervisor of its devices; each device runs in a separate, jailed process: the same binary,
//! exec'd as the hidden `launcher __device KIND ...`. `launcher ctl` talks to a running
//! supervisor.
//!
//! Run as `vu-vhost-user-KIND` (a symlink to this binary), it is `launcher start KIND`, a
//! back-end program as the vhost-user spec's conventions describe (`cli::conventions`).
//!
//! Exit status: 0 after a clean shutdown (or a successful `ctl` request), 1 on a runtime
//! error, 2 on a usage error.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

use launcher::cli::{conventions, Cli, Command};
use launcher::ctl;
use launcher::kinds::capabilities_json;
use launcher::process::entry;
use launcher::supervisor::start;

fn main() -> ExitCode {
    let args = std::env::args_os().collect::<Vec<_>>();
    let program = conventions::program_name(&args);
    let args = conventions::launcher_args_from_env(args);
    // Before parsing: the rest of the line may be anything.
    if let Some(kind) = conventions::capabilities_request(&args) {
        let mut out = std::io::stdout().lock();
        return match writeln!(out, "{}", capabilities_json(kind)).and_then(|()| out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    // Usage errors print their own message and exit with status 2.
    let cli = Cli::parse_from(args);
    init_logging(&cli.log_level);
    let who = match cli.command {
        Command::Start(_) => program.as_deref().unwrap_or("launcher"),
        Command::Ctl(_) => "launcher ctl",
        Command::Device(_) => "launcher (device process)",
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    // The filter was validated while parsing the command line.
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Start(args) => start::start(&args, &cli.log_level)?,
        Command::Ctl(args) => ctl::run(&args)?,
        Command::Device(cmd) => entry::run(&cmd)?,
    }
    Ok(())
}
