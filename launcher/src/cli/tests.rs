use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, Parser};

use super::kind_commands::{device_process_args, DeviceLayout};
use super::*;
use crate::kinds::block::parse_serial;

#[test]
fn cli_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn queue_size_must_be_a_power_of_two_in_range() {
    assert_eq!(parse_queue_size("4"), Ok(4));
    assert_eq!(parse_queue_size("32768"), Ok(32768));
    for bad in ["0", "1", "2", "3", "100", "65536", "-4", "x"] {
        assert!(parse_queue_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn serial_is_at_most_20_bytes() {
    assert!(parse_serial("12345678901234567890").is_ok());
    assert!(parse_serial("123456789012345678901").is_err());
    assert!(parse_serial("a\0b").is_err());
}

#[test]
fn sizes_take_binary_suffixes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("2K"), Ok(2048));
    assert_eq!(parse_size("3m"), Ok(3 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("1T"), Ok(1 << 40));
    assert!(parse_size("1X").is_err());
    assert!(parse_size("G").is_err());
    assert!(parse_size("99999999999T").is_err());
}

fn start_device(args: &[&str]) -> StartDevice {
    let mut argv = vec!["launcher", "start"];
    argv.extend(args);
    match Cli::try_parse_from(argv).expect("parses").command {
        Command::Start(start) => match *start {
            StartArgs {
                device: Some(d), ..
            } => d,
            other => panic!("not start KIND: {other:?}"),
        },
        other => panic!("not start: {other:?}"),
    }
}

#[test]
fn start_takes_a_config_or_a_device() {
    let cli = Cli::try_parse_from(["launcher", "start", "--config", "/c.toml"]).expect("config");
    let Command::Start(start) = cli.command else {
        panic!("not start");
    };
    assert!(matches!(
        *start,
        StartArgs {
            config: Some(_),
            device: None,
            ..
        }
    ));
    assert!(Cli::try_parse_from(["launcher", "start"]).is_err());
    let d = start_device(&[
        "block",
        "--socket",
        "/s",
        "--file",
        "/f",
        "--name",
        "d0",
        "--control",
        "/c.sock",
    ]);
    assert_eq!(d.kind.name(), "block");
    assert_eq!(d.name(), "d0");
    assert_eq!(d.supervisor.control.as_deref(), Some(Path::new("/c.sock")));
    assert!(Cli::try_parse_from([
        "launcher", "start", "block", "--socket", "/s", "--file", "/f", "--name", "-x",
    ])
    .is_err());
    assert!(Cli::try_parse_from(["launcher", "start", "nosuchkind", "--socket", "/s"]).is_err());
}

#[test]
fn defaults() {
    let d = start_device(&["block", "--socket", "/s", "--file", "/f"]);
    assert_eq!(d.name(), "block0");
    // Only what was given is passed on: the device applies the same defaults.
    assert_eq!(d.option_args, vec![OsString::from("--file=/f")]);
    assert_eq!(d.sandbox.sandbox, SandboxMode::Jail);
    assert_eq!(
        d.sandbox.jail_user,
        JailUser {
            uid: 65534,
            gid: 65534
        }
    );
    assert!(!d.test.any());
}

#[test]
fn jail_user_takes_uid_or_uid_and_gid() {
    assert_eq!(
        parse_jail_user("1000"),
        Ok(JailUser {
            uid: 1000,
            gid: 1000
        })
    );
    assert_eq!(
        parse_jail_user("1000:2000"),
        Ok(JailUser {
            uid: 1000,
            gid: 2000
        })
    );
    for bad in ["", "x", "1:", ":1", "1:2:3", "-1", "4294967295"] {
        assert!(parse_jail_user(bad).is_err(), "{bad}");
    }
}

/// What `launcher start KIND` passes to the device process parses back to the same options.
#[test]
fn device_arguments_round_trip() {
    let d = start_device(&[
        "block",
        "--socket",
        "/s",
        "--file",
        "/f",
        "--read-only",
        "--direct",
        "--num-queues",
        "3",
        "--queue-size",
        "64",
        "--serial=-abc",
        "--logical-block-size",
        "4096",
        "--engine",
        "sync",
        "--writethrough",
        "--seccomp-log",
        "--seccomp-policy-dir",
        "/p",
        "--test-escape",
        "mount",
        "--test-escape-host-pid",
        "7",
    ]);
    let layout = DeviceLayout::new(1, true);
    let mut argv: Vec<OsString> = vec!["launcher".into()];
    argv.extend(device_process_args(&d, &layout, "info"));
    argv.extend(d.test.to_args());
    let Command::Device(dev) = Cli::try_parse_from(argv)
        .expect("device args parse")
        .command
    else {
        panic!("not __device");
    };
    assert_eq!(dev.kind.name(), "block");
    assert_eq!(format!("{:?}", dev.options), format!("{:?}", d.options));
    assert!(dev.process.seccomp_log && d.sandbox.seccomp.seccomp_log);
    assert_eq!(dev.test, d.test);
    assert_eq!(dev.kind_fds, vec![3]);
    assert_eq!(
        (
            dev.process.fd_socket,
            dev.process.fd_control,
            dev.process.fd_seccomp
        ),
        (4, 5, Some(6))
    );
    assert_eq!(dev.process.device_name.as_deref(), Some("block0"));
}

/// The device entry point of old (`__device block --fd-image 3 ... --image-name PATH`) still
/// parses.
#[test]
fn the_device_entry_point_takes_its_fds_by_name() {
    let cli = Cli::try_parse_from([
        "launcher",
        "__device",
        "block",
        "--fd-image",
        "3",
        "--fd-socket",
        "4",
        "--fd-control",
        "5",
        "--image-name",
        "/img",
    ])
    .expect("parses");
    let Command::Device(dev) = cli.command else {
        panic!("not __device");
    };
    assert_eq!(dev.kind_fds, vec![3]);
    assert!(format!("{:?}", dev.options).contains("/img"));
}
