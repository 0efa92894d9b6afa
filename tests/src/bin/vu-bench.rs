//! `vu-bench`: drive a vhost-user-blk server from the host and measure it (see `--help`).

use std::process::ExitCode;

use vu_tests::bench::{parse_args, run, Invocation, USAGE};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("serve-block") {
        // Our block device without the jail, for A/B runs (see `bench::local::serve_block`).
        return match vu_tests::bench::local::serve_block(std::env::args().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vu-bench serve-block: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if std::env::args().nth(1).as_deref() == Some("guest-fio") {
        // fio in a TCG guest against a server socket (see `bench::guest_fio`).
        return match vu_tests::bench::guest_fio::guest_fio(std::env::args().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vu-bench guest-fio: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
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
