//! `launcher ctl`: one request to a running launcher's control socket, its answer printed as
//! text or (`--json`) as one JSON object on stdout.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use vu_core::control as proto;

use crate::cli::{CtlArgs, CtlCommand};
use crate::supervisor::control_socket;
use crate::supervisor::protocol::{self, DeviceStatus, SupervisorRequest, SupervisorResponse};

/// Why `launcher ctl` failed (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No launcher listens there.
    #[error("cannot connect to the control socket {path} (is a launcher running? --control names its socket)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("control socket {path}")]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: proto::ControlError,
    },
    /// A file could not be read or written.
    #[error("{what} {path}")]
    File {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The launcher refused or failed the request.
    #[error("{0}")]
    Refused(String),
    /// An answer that does not fit the request.
    #[error("unexpected answer from the launcher: {0}")]
    Unexpected(String),
}

/// Runs `launcher ctl`. With `--json`, errors are also printed as `{"error": "..."}`.
pub fn run(args: &CtlArgs) -> Result<(), CtlError> {
    let r = run_inner(args);
    if let (Err(e), true) = (&r, args.json) {
        println!("{}", json!({ "error": error_chain(e) }));
    }
    r
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn run_inner(args: &CtlArgs) -> Result<(), CtlError> {
    let path = args
        .control
        .clone()
        .unwrap_or_else(control_socket::default_path);
    let req = request(&args.command)?;
    let mut stream = UnixStream::connect(&path).map_err(|source| CtlError::Connect {
        path: path.clone(),
        source,
    })?;
    let resp = protocol::call(&mut stream, &req).map_err(|source| CtlError::Exchange {
        path: path.clone(),
        source,
    })?;
    let resp = match resp {
        SupervisorResponse::Error(e) => return Err(CtlError::Refused(e)),
        r => r,
    };
    quiet_on_closed_pipe();
    print_answer(args, resp)
}

/// The request a command stands for.
fn request(cmd: &CtlCommand) -> Result<SupervisorRequest, CtlError> {
    Ok(match cmd {
        CtlCommand::List => SupervisorRequest::List,
        CtlCommand::Status { dev } => SupervisorRequest::Status(dev.clone()),
        CtlCommand::Sleep { dev } => SupervisorRequest::Sleep(dev.clone()),
        CtlCommand::Wake { dev } => SupervisorRequest::Wake(dev.clone()),
        CtlCommand::Snapshot { dev, .. } => SupervisorRequest::Snapshot(dev.clone()),
        CtlCommand::Restore { dev, input } => {
            let data = std::fs::read(input).map_err(|source| CtlError::File {
                what: "cannot read the snapshot",
                path: input.clone(),
                source,
            })?;
            SupervisorRequest::Restore(dev.clone(), data)
        }
        CtlCommand::Stop { dev } => SupervisorRequest::Stop(dev.clone()),
        CtlCommand::Start { dev } => SupervisorRequest::Start(dev.clone()),
        CtlCommand::Restart { dev } => SupervisorRequest::Restart(dev.clone()),
        CtlCommand::Resize { dev, size } => SupervisorRequest::Resize(dev.clone(), *size),
        CtlCommand::TestTrigger { dev, trigger } => {
            SupervisorRequest::TestTrigger(dev.clone(), trigger.join(" "))
        }
        CtlCommand::Metrics => SupervisorRequest::Metrics,
    })
}

/// Once the exchange is over, a reader that closes our stdout early (`launcher ctl status |
/// head -1`) ends this process quietly, as it does for other command-line tools, instead of
/// making the output functions panic on EPIPE. (Not before: a launcher that goes away while
/// we talk to it is an error with a message, not a silent death.)
fn quiet_on_closed_pipe() {
    // SAFETY: restores the default disposition of SIGPIPE; no handler is installed, and this
    // process is single-threaded here.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Prints the launcher's answer to `args.command`.
fn print_answer(args: &CtlArgs, resp: SupervisorResponse) -> Result<(), CtlError> {
    let all =
        |d: &[DeviceStatus]| json!({ "devices": d.iter().map(status_json).collect::<Vec<_>>() });
    match (&args.command, resp) {
        (CtlCommand::List, SupervisorResponse::Devices(d)) => {
            if args.json {
                print_json(&all(&d));
            } else {
                print_list(&d);
            }
        }
        (CtlCommand::Status { dev }, SupervisorResponse::Devices(d)) => {
            match (args.json, dev, d.as_slice()) {
                (true, Some(_), [one]) => print_json(&status_json(one)),
                (true, _, _) => print_json(&all(&d)),
                (false, _, _) => {
                    for (i, s) in d.iter().enumerate() {
                        if i > 0 {
                            println!();
                        }
                        print_status(s);
                    }
                }
            }
        }
        (CtlCommand::Snapshot { dev, out }, SupervisorResponse::Snapshot(data)) => {
            write_file(out, &data)?;
            if args.json {
                print_json(&json!({ "ok": true, "device": dev, "out": out, "bytes": data.len() }));
            } else {
                println!(
                    "{dev}: snapshot of {} bytes written to {}",
                    data.len(),
                    out.display()
                );
            }
        }
        (CtlCommand::Metrics, SupervisorResponse::Metrics(text)) => {
            if args.json {
                print_json(&json!({ "metrics": text }));
            } else {
                print!("{text}");
            }
        }
        (cmd, SupervisorResponse::Ok) => {
            if args.json {
                print_json(&json!({ "ok": true }));
            } else {
                println!("{}", done_text(cmd));
            }
        }
        (_, other) => return Err(CtlError::Unexpected(format!("{other:?}"))),
    }
    Ok(())
}

fn write_file(path: &PathBuf, data: &[u8]) -> Result<(), CtlError> {
    let err = |source| CtlError::File {
        what: "cannot write the snapshot to",
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
}

fn done_text(cmd: &CtlCommand) -> String {
    match cmd {
        CtlCommand::Sleep { dev } => format!("{dev}: asleep"),
        CtlCommand::Wake { dev } => format!("{dev}: awake"),
        CtlCommand::Restore { dev, input } => format!("{dev}: restored from {}", input.display()),
        CtlCommand::Stop { dev } => format!("{dev}: stopped"),
        CtlCommand::Start { dev } => format!("{dev}: running"),
        CtlCommand::Restart { dev } => format!("{dev}: restarted"),
        CtlCommand::Resize { dev, size } => format!("{dev}: resized to {size} bytes"),
        CtlCommand::TestTrigger { dev, trigger } => {
            format!("{dev}: test trigger {} sent", trigger.join(" "))
        }
        CtlCommand::List
        | CtlCommand::Status { .. }
        | CtlCommand::Snapshot { .. }
        | CtlCommand::Metrics => "done".into(),
    }
}

fn print_json(v: &Value) {
    println!("{v}");
}

/// One device as JSON; the device's fields become an object.
pub fn status_json(s: &DeviceStatus) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(s.name));
    m.insert("kind".into(), json!(s.kind));
    m.insert("socket".into(), json!(s.socket));
    m.insert("state".into(), json!(s.state));
    m.insert("pid".into(), json!(s.pid));
    m.insert("uptime_ms".into(), json!(s.uptime_ms));
    m.insert("restarts".into(), json!(s.restarts));
    m.insert("crashes".into(), json!(s.crashes));
    m.insert("failed_starts".into(), json!(s.failed_starts));
    m.insert("last_exit".into(), json!(s.last_exit));
    m.insert("failure".into(), json!(s.failure));
    if let Some(r) = &s.report {
        m.insert("frontend_connected".into(), json!(r.frontend_connected));
        m.insert("asleep".into(), json!(r.asleep));
        m.insert("acked_features".into(), json!(r.acked_features));
        m.insert(
            "acked_protocol_features".into(),
            json!(r.acked_protocol_features),
        );
        m.insert("memory_regions".into(), json!(r.memory_regions));
        m.insert("queues".into(), json!(r.queues));
        let fields: Map<String, Value> = r
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        m.insert("fields".into(), Value::Object(fields));
    }
    if let Some(e) = &s.report_error {
        m.insert("report_error".into(), json!(e));
    }
    Value::Object(m)
}

fn print_list(d: &[DeviceStatus]) {
    println!(
        "{:<16} {:<6} {:<10} {:>8}  SOCKET",
        "NAME", "KIND", "STATE", "PID"
    );
    for s in d {
        let pid = s.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        println!(
            "{:<16} {:<6} {:<10} {:>8}  {}",
            s.name, s.kind, s.state, pid, s.socket
        );
    }
}

fn print_status(s: &DeviceStatus) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    println!("{} ({})", s.name, s.kind);
    println!("  state:        {}", s.state);
    println!("  pid:          {}", opt(s.pid.map(|p| p.to_string())));
    println!(
        "  uptime:       {}",
        opt(s.uptime_ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0)))
    );
    println!("  socket:       {}", s.socket);
    println!("  restarts:     {}", s.restarts);
    println!("  crashes:      {}", s.crashes);
    println!("  failed starts: {} in a row", s.failed_starts);
    println!("  last exit:    {}", opt(s.last_exit.clone()));
    if let Some(f) = &s.failure {
        println!("  failure:      {f}");
    }
    if let Some(e) = &s.report_error {
        println!("  report error: {e}");
    }
    let Some(r) = &s.report else { return };
    println!(
        "  front-end:    {}",
        if r.frontend_connected {
            "connected"
        } else {
            "not connected"
        }
    );
    println!("  asleep:       {}", r.asleep);
    println!("  features:     {:#018x}", r.acked_features);
    println!("  protocol:     {:#018x}", r.acked_protocol_features);
    println!("  mem regions:  {}", r.memory_regions);
    for (k, v) in &r.fields {
        println!("  {:<13} {v}", format!("{k}:"));
    }
    for (i, q) in r.queues.iter().enumerate() {
        println!(
            "  queue {i}:      {} {}, requests {}, bytes from driver {}, bytes to driver {}, \
             errors {}, kicks {}, notifications {}, in flight {}",
            if q.started { "started" } else { "stopped" },
            if q.enabled { "enabled" } else { "disabled" },
            q.completed,
            q.bytes_from_driver,
            q.bytes_to_driver,
            q.chain_errors,
            q.kicks,
            q.notifications,
            q.in_flight
        );
    }
}
