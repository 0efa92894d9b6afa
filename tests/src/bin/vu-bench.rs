//! `vu-bench`: drive a vhost-user-blk server from the host and measure it (see `--help`).

use std::process::ExitCode;

use vu_tests::bench::{parse_args, run, Invocation, USAGE};

fn main() -> ExitCode {
    let inv = match parse_args(std::env::args().skip(1)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vu-bench: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (config, json) = match inv {
        Invocation::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Invocation::Run { config, json } => (config, json),
    };
    match run(&config) {
        Ok(report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            if report.errors > 0 || report.verify_failures > 0 {
                eprintln!(
                    "vu-bench: {} requests failed, {} reads did not verify",
                    report.errors, report.verify_failures
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vu-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
