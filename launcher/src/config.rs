//! `launcher start --config FILE.toml`: named devices in a TOML file (format in
//! `launcher start --help`). Every value is checked as strictly as on the command line; an
//! error names the file, the device and the key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::cli::{
    self, BlockArgs, BlockDeviceArgs, EngineArg, LogicalBlockSize, SandboxArgs, SandboxMode,
    SeccompArgs, SupervisorArgs, TestTriggers, MAX_NUM_QUEUES,
};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither a device nor --config.
    #[error("nothing to start: give a device (`launcher start block ...`) or --config FILE")]
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
    /// The devices, as if given on the command line.
    pub devices: Vec<BlockArgs>,
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
                    "unknown key (known: control, max_crashes, crash_window, device)".into(),
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
            device: dev.name.clone(),
            key: key.to_string(),
            message,
        };
        if !names.insert(dev.name.clone()) {
            return Err(err("name", "another device has the same name".into()));
        }
        if !sockets.insert(dev.socket.clone()) {
            return Err(err(
                "socket",
                format!("{} is used by another device", dev.socket.display()),
            ));
        }
        cfg.devices.push(dev);
    }
    Ok(cfg)
}

const DEVICE_KEYS: &str = "name, kind, socket, file, read_only, direct, num_queues, queue_size, \
    serial, logical_block_size, engine, writethrough, poll_us, sandbox, jail_user";

fn device(path: &Path, index: usize, t: &Table) -> Result<BlockArgs, ConfigError> {
    let mut label = format!("#{}", index + 1);
    let err = |label: &str, key: &str, message: String| ConfigError::Device {
        path: path.to_path_buf(),
        device: label.to_string(),
        key: key.to_string(),
        message,
    };
    let name = match t.get("name") {
        None => return Err(err(&label, "name", "missing".into())),
        Some(v) => {
            let s = string(v).map_err(|m| err(&label, "name", m))?;
            cli::parse_name(&s).map_err(|m| err(&label, "name", m))?
        }
    };
    label = name.clone();
    let e = |key: &str, m: String| err(&label, key, m);
    let required = |key: &str| -> Result<String, ConfigError> {
        match t.get(key) {
            None => Err(e(key, "missing".into())),
            Some(v) => string(v).map_err(|m| e(key, m)),
        }
    };
    let kind = required("kind")?;
    if kind != "block" {
        return Err(e(
            "kind",
            format!("unknown device kind {kind:?} (known: block)"),
        ));
    }
    let socket = PathBuf::from(required("socket")?);
    let file = PathBuf::from(required("file")?);
    let mut device = BlockDeviceArgs {
        read_only: false,
        direct: false,
        num_queues: 1,
        queue_size: 256,
        serial: None,
        logical_block_size: LogicalBlockSize::B512,
        engine: EngineArg::IoUring,
        writethrough: false,
        poll_us: 0,
    };
    let mut sandbox = SandboxArgs {
        sandbox: SandboxMode::Jail,
        jail_user: cli::JailUser {
            uid: 65534,
            gid: 65534,
        },
        seccomp: SeccompArgs::default(),
    };
    for (key, v) in t {
        let k = key.as_str();
        match k {
            "name" | "kind" | "socket" | "file" => {}
            "read_only" => device.read_only = boolean(v).map_err(|m| e(k, m))?,
            "direct" => device.direct = boolean(v).map_err(|m| e(k, m))?,
            "writethrough" => device.writethrough = boolean(v).map_err(|m| e(k, m))?,
            "poll_us" => device.poll_us = int_in(v, 0, 1_000_000).map_err(|m| e(k, m))? as u32,
            "num_queues" => {
                device.num_queues =
                    int_in(v, 1, i64::from(MAX_NUM_QUEUES)).map_err(|m| e(k, m))? as u16
            }
            "queue_size" => {
                let n = int_in(v, 0, i64::from(u32::MAX)).map_err(|m| e(k, m))?;
                device.queue_size = cli::parse_queue_size(&n.to_string()).map_err(|m| e(k, m))?
            }
            "serial" => {
                let s = string(v).map_err(|m| e(k, m))?;
                device.serial = Some(cli::parse_serial(&s).map_err(|m| e(k, m))?)
            }
            "logical_block_size" => {
                device.logical_block_size = match v.as_integer() {
                    Some(512) => LogicalBlockSize::B512,
                    Some(4096) => LogicalBlockSize::B4096,
                    _ => return Err(e(k, format!("{v} is not 512 or 4096"))),
                }
            }
            "engine" => {
                device.engine = match string(v).map_err(|m| e(k, m))?.as_str() {
                    "io_uring" => EngineArg::IoUring,
                    "sync" => EngineArg::Sync,
                    other => return Err(e(k, format!("{other:?} is not io_uring or sync"))),
                }
            }
            "sandbox" => {
                sandbox.sandbox = match string(v).map_err(|m| e(k, m))?.as_str() {
                    "jail" => SandboxMode::Jail,
                    "none" => SandboxMode::None,
                    other => return Err(e(k, format!("{other:?} is not jail or none"))),
                }
            }
            "jail_user" => {
                let s = match v {
                    Value::Integer(n) => n.to_string(),
                    other => string(other).map_err(|m| e(k, m))?,
                };
                sandbox.jail_user = cli::parse_jail_user(&s).map_err(|m| e(k, m))?
            }
            _ => return Err(e(k, format!("unknown key (known: {DEVICE_KEYS})"))),
        }
    }
    Ok(BlockArgs {
        socket,
        file,
        name,
        supervisor: SupervisorArgs::default(),
        device,
        sandbox,
        test: TestTriggers::default(),
    })
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
        let d = &c.devices[0];
        assert_eq!(d.name, "disk0");
        assert_eq!(d.device.num_queues, 2);
        assert_eq!(d.device.engine, EngineArg::Sync);
        assert_eq!(d.sandbox.jail_user.uid, 1000);
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
}
