//! `launcher`: starts, jails and supervises vhost-user device servers.
//!
//! `launcher start block ...` / `launcher start --config FILE` runs in the foreground as the
//! supervisor of its devices; each device runs in a separate, jailed process: the same binary,
//! exec'd as the hidden `launcher __device <device> ...`. `launcher ctl` talks to a running
//! supervisor.
//!
//! Exit status: 0 after a clean shutdown (or a successful `ctl` request), 1 on a runtime
//! error, 2 on a usage error.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use launcher::cli::{Cli, Command, DeviceCommand};
use launcher::{ctl, device, start};

fn main() -> ExitCode {
    // Usage errors print their own message and exit with status 2.
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let who = match cli.command {
        Command::Start(_) => "launcher",
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
        Command::Device(DeviceCommand::Block(args)) => device::run_block(&args)?,
    }
    Ok(())
}
