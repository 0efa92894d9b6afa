//! `launcher`: starts (and later jails and supervises) vhost-user device servers.
//!
//! Exit status: 0 after a clean shutdown, 1 on a runtime error, 2 on a usage error.

mod block;
mod cli;
mod serve;
mod socket;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, StartCommand};

fn main() -> ExitCode {
    // Usage errors print their own message and exit with status 2.
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("launcher: error: {e:#}");
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

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Start(StartCommand::Block(args)) => {
            // Before any thread exists (the device may start some), so all inherit the mask.
            let signals = serve::block_signals()?;
            let opts = block::BlockOptions::from(&args);
            let prepared = block::prepare(&opts)?;
            serve::run(prepared, &args.socket, signals)?;
            Ok(())
        }
    }
}
