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
    if std::env::args().nth(1).as_deref() == Some("rng") {
        return rng_main();
    }
    if std::env::args().nth(1).as_deref() == Some("vsock") {
        return vsock_main();
    }
    if std::env::args().nth(1).as_deref() == Some("net") {
        return net_main();
    }
    if std::env::args().nth(1).as_deref() == Some("serve-rng") {
        // Our rng device without the jail (see `bench::rng::serve`).
        return match vu_tests::bench::rng::serve::serve_rng(std::env::args().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vu-bench serve-rng: {e:#}");
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

/// `vu-bench rng ...`: the rng front-end (see `bench::rng`).
fn rng_main() -> ExitCode {
    use vu_tests::bench::rng::{parse_rng_args, run_rng, RNG_USAGE};
    let (config, json) = match parse_rng_args(std::env::args().skip(2)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{RNG_USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vu-bench rng: {e:#}\n\n{RNG_USAGE}");
            return ExitCode::from(2);
        }
    };
    match run_rng(&config) {
        Ok(report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vu-bench rng: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vu-bench vsock ...`: the vsock front-end (see `bench::vsock`).
fn vsock_main() -> ExitCode {
    use vu_tests::bench::vsock::{parse_vsock_args, run_vsock, VSOCK_USAGE};
    let (config, json) = match parse_vsock_args(std::env::args().skip(2)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{VSOCK_USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vu-bench vsock: {e:#}\n\n{VSOCK_USAGE}");
            return ExitCode::from(2);
        }
    };
    match run_vsock(&config) {
        Ok(report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            if report.resets > 0 {
                eprintln!(
                    "vu-bench vsock: the server reset {} connections",
                    report.resets
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vu-bench vsock: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vu-bench net ...`: the net front-end (see `bench::net`).
fn net_main() -> ExitCode {
    use vu_tests::bench::net::{parse_net_args, run_net, NET_USAGE};
    let (config, json) = match parse_net_args(std::env::args().skip(2)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{NET_USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vu-bench net: {e:#}\n\n{NET_USAGE}");
            return ExitCode::from(2);
        }
    };
    match run_net(&config) {
        Ok(report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.table());
            }
            if report.res.mismatched > 0 {
                eprintln!(
                    "vu-bench net: {} frames came back different from those sent",
                    report.res.mismatched
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vu-bench net: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
