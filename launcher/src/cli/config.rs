//! `launcher start --config FILE.toml`: named devices in a TOML file (format in
//! `launcher start --help`). A device's keys are the options of `launcher start KIND` with `_`
//! for `-`, read with the very definitions the command line uses (a device entry becomes the
//! arguments `--key=value`), so every value is checked as strictly as on the command line; an
//! error names the file, the device and the key.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue};
use clap::{ArgAction, Args, Command};
use toml::{Table, Value};

use super::common::{DeviceArgs, ListenOn, SandboxArgs};
use super::kind_commands::{start_command, StartDevice};
use crate::kinds::{self, Kind};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither a device nor --config.
    #[error("nothing to start: give a device (`launcher start KIND ...`) or --config FILE")]
    Missing,
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A bad top-level value.
    #[error("config file {path}: key `{key}`: {message}")]
    Top {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A bad device entry.
    #[error("config file {path}: device {device}: key `{key}`: {message}")]
    Device {
        /// The file.
        path: PathBuf,
        /// The device's name, or "#N" (1-based) when it has none.
        device: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A checked config file.
#[derive(Debug)]
pub struct Config {
    /// The control socket.
    pub control: Option<PathBuf>,
    /// See `--max-crashes`.
    pub max_crashes: Option<u32>,
    /// See `--crash-window`.
    pub crash_window: Option<u64>,
    /// See `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// The devices, as if given on the command line.
    pub devices: Vec<StartDevice>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Checks the text of a config file (`path` is for messages).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let top = |key: &str, message: String| ConfigError::Top {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let mut cfg = Config {
        control: None,
        max_crashes: None,
        crash_window: None,
        metrics: None,
        devices: Vec::new(),
    };
    let mut devices: &[Value] = &[];
    for (key, value) in &table {
        match key.as_str() {
            "control" => cfg.control = Some(PathBuf::from(string(value).map_err(|m| top(key, m))?)),
            "max_crashes" => {
                cfg.max_crashes =
                    Some(int_in(value, 0, i64::from(u32::MAX)).map_err(|m| top(key, m))? as u32)
            }
            "crash_window" => {
                cfg.crash_window = Some(int_in(value, 1, 86_400).map_err(|m| top(key, m))? as u64)
            }
            "metrics" => {
                let s = string(value).map_err(|m| top(key, m))?;
                cfg.metrics = Some(super::parse_metrics_addr(&s).map_err(|m| top(key, m))?);
            }
            "device" => match value {
                Value::Array(a) => devices = a,
                other => {
                    return Err(top(
                        key,
                        format!("expected [[device]] tables, found a {}", other.type_str()),
                    ))
                }
            },
            _ => {
                return Err(top(
                    key,
                    "unknown key (known: control, max_crashes, crash_window, metrics, device)"
                        .into(),
                ))
            }
        }
    }
    if devices.is_empty() {
        return Err(top("device", "no [[device]] is defined".into()));
    }
    let mut names = HashSet::new();
    let mut sockets = HashSet::new();
    for (i, v) in devices.iter().enumerate() {
        let Value::Table(t) = v else {
            return Err(top("device", format!("entry {} is not a table", i + 1)));
        };
        let dev = device(path, i, t)?;
        let err = |key: &str, message: String| ConfigError::Device {
            path: path.to_path_buf(),
            device: dev.name(),
            key: key.to_string(),
            message,
        };
        if !names.insert(dev.name()) {
            return Err(err("name", "another device has the same name".into()));
        }
        let on = dev.device.listen_on();
        if !sockets.insert(on.clone()) {
            let (key, message) = match &on {
                ListenOn::Path(_) => ("socket", format!("{on} is used by another device")),
                ListenOn::Fd(_) => ("fd", format!("{on} is used by another device")),
                ListenOn::Activated(Some(_)) => {
                    ("socket_name", format!("{on} is served by another device"))
                }
                ListenOn::Activated(None) => (
                    "socket",
                    "missing: with several devices each needs socket, fd or socket_name".into(),
                ),
            };
            return Err(err(key, message));
        }
        cfg.devices.push(dev);
    }
    Ok(cfg)
}

/// Reads one `[[device]]` table.
fn device(path: &Path, index: usize, t: &Table) -> Result<StartDevice, ConfigError> {
    let mut label = format!("#{}", index + 1);
    let err = |label: &str, key: &str, message: String| ConfigError::Device {
        path: path.to_path_buf(),
        device: label.to_string(),
        key: key.to_string(),
        message,
    };
    match t.get("name") {
        None => return Err(err(&label, "name", "missing".into())),
        Some(v) => {
            let s = string(v).map_err(|m| err(&label, "name", m))?;
            label = super::parse_name(&s).map_err(|m| err(&label, "name", m))?;
        }
    }
    let e = |key: &str, m: String| err(&label, key, m);
    let kind_name = match t.get("kind") {
        None => return Err(e("kind", "missing".into())),
        Some(v) => string(v).map_err(|m| e("kind", m))?,
    };
    let kind = kinds::find(&kind_name).ok_or_else(|| {
        e(
            "kind",
            format!(
                "unknown device kind {kind_name:?} (known: {})",
                kinds::names()
            ),
        )
    })?;
    let keys = device_keys(kind);
    let cmd = start_command(kind);
    let mut argv: Vec<OsString> = vec![kind.name().into()];
    for (key, value) in t {
        if key == "kind" {
            continue;
        }
        if !keys.iter().any(|k| k == key) {
            return Err(e(
                key,
                format!(
                    "unknown key (known for kind {}: {})",
                    kind.name(),
                    keys.join(", ")
                ),
            ));
        }
        let long = key.replace('_', "-");
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(&long)) else {
            return Err(e(key, "unknown key".into()));
        };
        argv.extend(arg_for(&long, arg.get_action(), value).map_err(|m| e(key, m))?);
    }
    let matches = cmd
        .try_get_matches_from(&argv)
        .map_err(|ce| clap_error(&label, path, &ce))?;
    StartDevice::from_kind_matches(kind, &matches).map_err(|ce| clap_error(&label, path, &ce))
}

/// The keys a device of `kind` takes: kind, name, socket, the kind's options and the sandbox
/// options.
pub fn device_keys(kind: &dyn Kind) -> Vec<String> {
    let mut cmd = DeviceArgs::augment_args(Command::new("keys"));
    cmd = kind.options(cmd);
    cmd = SandboxArgs::augment_args(cmd);
    let mut keys = vec!["kind".to_string()];
    keys.extend(
        cmd.get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
            .map(|l| l.replace('-', "_")),
    );
    keys
}

/// The argument(s) a config value stands for.
fn arg_for(long: &str, action: &ArgAction, v: &Value) -> Result<Vec<OsString>, String> {
    let flag = matches!(action, ArgAction::SetTrue | ArgAction::SetFalse);
    if flag {
        let on = boolean(v)?;
        let want = matches!(action, ArgAction::SetTrue);
        return Ok(if on == want {
            vec![format!("--{long}").into()]
        } else {
            Vec::new()
        });
    }
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Boolean(_) => return Err("expected a value, found a boolean".into()),
        other => {
            return Err(format!(
                "expected a string or an integer, found a {}",
                other.type_str()
            ))
        }
    };
    Ok(vec![format!("--{long}={text}").into()])
}

/// A clap error about a device's options, as a config error naming the key.
fn clap_error(device: &str, path: &Path, e: &clap::Error) -> ConfigError {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let key = arg
        .as_deref()
        .map(|a| {
            a.trim_start_matches('-')
                .split([' ', '=', '<'])
                .next()
                .unwrap_or_default()
                .replace('-', "_")
        })
        .unwrap_or_else(|| "?".into());
    let message = if e.kind() == clap::error::ErrorKind::MissingRequiredArgument {
        "missing".to_string()
    } else {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        first.trim_start_matches("error: ").to_string()
    };
    ConfigError::Device {
        path: path.to_path_buf(),
        device: device.to_string(),
        key,
        message,
    }
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found a {}", other.type_str())),
    }
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found a {}", v.type_str()))
}

fn int_in(v: &Value, min: i64, max: i64) -> Result<i64, String> {
    match v.as_integer() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("{n} is not in {min}..={max}")),
        None => Err(format!("expected an integer, found a {}", v.type_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/vm.toml"), text)
    }

    #[test]
    fn a_full_device_parses() {
        let c = p(r#"
control = "/run/x.sock"
max_crashes = 3
[[device]]
name = "disk0"
kind = "block"
socket = "/run/d0.sock"
file = "/img0"
read_only = true
num_queues = 2
queue_size = 128
serial = "abc"
logical_block_size = 4096
engine = "sync"
writethrough = true
sandbox = "none"
jail_user = "1000:1000"
"#)
        .expect("parses");
        assert_eq!(c.control, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(c.max_crashes, Some(3));
        assert_eq!(c.metrics, None);
        let d = &c.devices[0];
        assert_eq!(d.name(), "disk0");
        assert_eq!(d.kind.name(), "block");
        for a in [
            "--num-queues=2",
            "--engine=sync",
            "--read-only",
            "--serial=abc",
        ] {
            assert!(
                d.option_args.contains(&OsString::from(a)),
                "{a} not in {:?}",
                d.option_args
            );
        }
        assert_eq!(d.sandbox.jail_user.uid, 1000);
        assert_eq!(d.sandbox.sandbox, crate::cli::SandboxMode::None);
    }

    #[test]
    fn errors_name_file_device_and_key() {
        let base = "[[device]]\nname = \"d1\"\nkind = \"block\"\nsocket = \"/s\"\nfile = \"/f\"\n";
        let e = p(&format!("{base}queue_size = 100\n")).expect_err("bad queue size");
        let s = e.to_string();
        assert!(
            s.contains("/etc/vm.toml") && s.contains("d1") && s.contains("queue_size"),
            "{s}"
        );
        let e = p(&format!("{base}colour = 1\n")).expect_err("unknown key");
        assert!(e.to_string().contains("`colour`"), "{e}");
        let e = p("[[device]]\nkind = \"block\"\n").expect_err("no name");
        assert!(
            e.to_string().contains("#1") && e.to_string().contains("`name`"),
            "{e}"
        );
        let e = p(&format!("{base}{base}")).expect_err("duplicate");
        assert!(e.to_string().contains("same name"), "{e}");
        let e = p("").expect_err("empty");
        assert!(e.to_string().contains("no [[device]]"), "{e}");
        let e = p("[[device").expect_err("syntax");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }

    #[test]
    fn metrics_takes_an_address_and_a_port() {
        let dev = "[[device]]\nname = \"d1\"\nkind = \"rng\"\nsocket = \"/s\"\n";
        let c = p(&format!("metrics = \"127.0.0.1:9100\"\n{dev}")).expect("parses");
        assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().expect("addr")));
        let c = p(&format!("metrics = \"[::1]:0\"\n{dev}")).expect("parses");
        assert_eq!(c.metrics, Some("[::1]:0".parse().expect("addr")));
        for bad in [
            "\"localhost:9100\"",
            "\"127.0.0.1\"",
            "\":9100\"",
            "9100",
            "\"1.2.3.4:99999\"",
        ] {
            let e = p(&format!("metrics = {bad}\n{dev}")).expect_err(bad);
            assert!(
                e.to_string().contains("`metrics`") && e.to_string().contains("/etc/vm.toml"),
                "{e}"
            );
        }
    }
}
