//! Driving the supervisor from end-to-end tests: a block device started with a control socket,
//! `launcher ctl` with its exit status and output, a reader for `ctl --json` output, and the
//! guest-side fio helpers the supervisor tests share.
//!
//! The JSON reader is deliberately small (the tests crate carries no JSON dependency) and
//! deliberately lenient about layout: a device is found as the object whose `name` is the
//! device's name wherever it sits in the document, and its fields are looked up by key
//! inside that object.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::e2e::CMD;
use crate::guest::{qemu_available, Guest, GuestConfig, GuestImage, VhostUserBlkDisk};
use crate::launcher::{launcher_bin, Launcher};

/// How long one `launcher ctl` command may take (a snapshot of a busy device included).
pub const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a respawned or restarted device may take until the guest's QEMU is connected to
/// it again (QEMU retries once a second; the supervisor backs off; TCG is slow).
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

/// A parsed JSON value. Numbers keep their text so that a u64 survives exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written.
    Num(String),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, in document order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses one JSON document (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<Json> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        ensure!(
            p.i == p.s.len(),
            "trailing characters after JSON at {}",
            p.i
        );
        Ok(v)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The first value under `key` anywhere below (and including) this value, depth first.
    pub fn find_key(&self, key: &str) -> Option<&Json> {
        if let Some(v) = self.get(key) {
            return Some(v);
        }
        match self {
            Json::Obj(m) => m.iter().find_map(|(_, v)| v.find_key(key)),
            Json::Arr(a) => {
                // A list of [key, value] pairs (how a Vec<(String, String)> serialises).
                if let [Json::Str(k), v] = a.as_slice() {
                    if k == key {
                        return Some(v);
                    }
                }
                a.iter().find_map(|v| v.find_key(key))
            }
            _ => None,
        }
    }

    /// Every value under `key` anywhere below this value.
    pub fn find_all(&self, key: &str) -> Vec<&Json> {
        let mut out = Vec::new();
        self.collect(key, &mut out);
        out
    }

    fn collect<'a>(&'a self, key: &str, out: &mut Vec<&'a Json>) {
        match self {
            Json::Obj(m) => {
                for (k, v) in m {
                    if k == key {
                        out.push(v);
                    }
                    v.collect(key, out);
                }
            }
            Json::Arr(a) => a.iter().for_each(|v| v.collect(key, out)),
            _ => {}
        }
    }

    /// The object whose `name` member is `name`, anywhere below this value; or the member
    /// `name` of an object keyed by device name.
    pub fn device(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => {
                if self.get("name").and_then(Json::as_str) == Some(name) {
                    return Some(self);
                }
                m.iter().find_map(|(_, v)| v.device(name)).or_else(|| {
                    self.get(name)
                        .filter(|v| matches!(v, Json::Obj(_)) && v.get("state").is_some())
                })
            }
            Json::Arr(a) => a.iter().find_map(|v| v.device(name)),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An unsigned integer (a number, or a string holding one).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n
                .parse()
                .ok()
                .or_else(|| n.parse::<f64>().ok().map(|f| f as u64)),
            Json::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A boolean (or a string "true"/"false").
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            Json::Str(s) if s == "true" => Some(true),
            Json::Str(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    /// The value as short text, for messages (strings unquoted).
    pub fn text(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => b.to_string(),
            Json::Num(n) => n.clone(),
            Json::Str(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        self.ws();
        ensure!(
            self.peek() == Some(c),
            "expected {:?} at {} in JSON",
            c as char,
            self.i
        );
        self.i += 1;
        Ok(())
    }

    fn lit(&mut self, word: &str, v: Json) -> Result<Json> {
        ensure!(
            self.s[self.i..].starts_with(word.as_bytes()),
            "bad literal at {} in JSON",
            self.i
        );
        self.i += word.len();
        Ok(v)
    }

    fn value(&mut self) -> Result<Json> {
        self.ws();
        match self.peek().context("unexpected end of JSON")? {
            b'{' => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.expect(b':')?;
                    let v = self.value()?;
                    m.push((k, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => bail!("expected ',' or '}}' at {} in JSON", self.i),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => bail!("expected ',' or ']' at {} in JSON", self.i),
                    }
                }
            }
            b'"' => Ok(Json::Str(self.string()?)),
            b't' => self.lit("true", Json::Bool(true)),
            b'f' => self.lit("false", Json::Bool(false)),
            b'n' => self.lit("null", Json::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
                {
                    self.i += 1;
                }
                Ok(Json::Num(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            c => bail!("unexpected {:?} at {} in JSON", c as char, self.i),
        }
    }

    fn string(&mut self) -> Result<String> {
        ensure!(
            self.peek() == Some(b'"'),
            "expected a string at {} in JSON",
            self.i
        );
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek().context("unterminated string in JSON")?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).context("JSON string is not UTF-8"),
                b'\\' => {
                    let e = self.peek().context("unterminated escape in JSON")?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self
                                .s
                                .get(self.i..self.i + 4)
                                .context("short \\u escape in JSON")?;
                            let code = u32::from_str_radix(&String::from_utf8_lossy(hex), 16)
                                .context("bad \\u escape in JSON")?;
                            self.i += 4;
                            let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// launcher ctl
// ---------------------------------------------------------------------------------------------

/// What one `launcher ctl` run came to.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// The command line after `launcher`, for messages.
    pub command: String,
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CtlOutput {
    /// True on exit status 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// stdout and stderr together, for messages.
    pub fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`launcher {}` exited {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `launcher ARGS` with a timeout and collects its output.
pub fn run_launcher(args: &[String], timeout: Duration) -> Result<CtlOutput> {
    let bin = launcher_bin()?;
    let mut child = Command::new(&bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`launcher {}` did not exit within {timeout:?}",
                args.join(" ")
            );
        }
        // A child's exit has no readiness fd here; a short poll period is fine.
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(CtlOutput {
        command: args.join(" "),
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// `launcher ctl --control PATH ...` for one supervisor.
#[derive(Debug, Clone)]
pub struct Ctl {
    /// The supervisor's control socket.
    pub control: PathBuf,
}

impl Ctl {
    /// A client of the control socket at `control`.
    pub fn new(control: impl Into<PathBuf>) -> Ctl {
        Ctl {
            control: control.into(),
        }
    }

    /// Runs `launcher ctl --control PATH ARGS...`, whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Result<CtlOutput> {
        let mut full: Vec<String> = vec![
            "ctl".into(),
            "--control".into(),
            self.control.display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        run_launcher(&full, CTL_TIMEOUT)
    }

    /// Like [`Ctl::run`], but a non-zero exit status is an error; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(out.success(), "{out}");
        Ok(out.stdout)
    }

    /// `ctl --json ARGS...`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Json> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ok(&full)?;
        Json::parse(&out).with_context(|| format!("ctl --json {} printed:\n{out}", args.join(" ")))
    }

    /// `ctl --json status DEV`, reduced to what the tests look at.
    pub fn status(&self, dev: &str) -> Result<DevStatus> {
        let doc = self.json(&["status", dev])?;
        DevStatus::from_json(&doc, dev)
    }

    /// Polls `status DEV` until `pred` holds (errors from `ctl` while the device is between
    /// processes are retried); returns the status that satisfied it.
    pub fn wait_status(
        &self,
        dev: &str,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&DevStatus) -> bool,
    ) -> Result<DevStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status(dev) {
                Ok(st) if pred(&st) => return Ok(st),
                Ok(st) => format!("{st:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {dev} to be {what}; last status: {last}");
            }
            // The control socket offers no change notification: poll it.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the device has made at least `n` more requests' progress than now (the
    /// guest's I/O is flowing through it).
    pub fn wait_io(&self, dev: &str, n: u64, timeout: Duration) -> Result<DevStatus> {
        let base = self.status(dev)?;
        let base_completed = base
            .completed
            .context("status reports no per-queue `completed` counter")?;
        let st = self.wait_status(dev, &format!("{n} requests further"), timeout, |s| {
            s.completed.unwrap_or(0) >= base_completed + n
        })?;
        Ok(st)
    }
}

/// The fields of one device's status the tests check.
#[derive(Debug, Clone)]
pub struct DevStatus {
    /// The device's name.
    pub name: String,
    /// Device process id (None when no process runs).
    pub pid: Option<u32>,
    /// running / asleep / stopped / restarting / failed.
    pub state: String,
    /// How many times the supervisor has started a new process for it.
    pub restarts: Option<u64>,
    /// Whether a front-end is connected.
    pub frontend_connected: Option<bool>,
    /// How the last process ended, if it did.
    pub last_exit: Option<String>,
    /// Capacity in bytes (block).
    pub capacity_bytes: Option<u64>,
    /// Requests completed, summed over queues.
    pub completed: Option<u64>,
    /// The device's whole JSON object.
    pub raw: Json,
}

impl DevStatus {
    /// Picks device `dev` out of a `ctl --json status` document.
    pub fn from_json(doc: &Json, dev: &str) -> Result<DevStatus> {
        let d = doc
            .device(dev)
            .or_else(|| (doc.get("state").is_some()).then_some(doc))
            .ok_or_else(|| anyhow!("no device {dev:?} in status output {doc:?}"))?;
        let state = d
            .get("state")
            .and_then(Json::as_str)
            .ok_or_else(|| anyhow!("status of {dev} has no string `state`: {d:?}"))?
            .to_ascii_lowercase();
        let last_exit = [
            "last_exit_reason",
            "last_exit",
            "exit_reason",
            "last_exit_status",
        ]
        .iter()
        .find_map(|k| d.find_key(k))
        .filter(|v| !matches!(v, Json::Null))
        .map(Json::text);
        let completed: Vec<u64> = d
            .find_all("completed")
            .into_iter()
            .filter_map(Json::as_u64)
            .collect();
        Ok(DevStatus {
            name: dev.to_owned(),
            pid: d
                .get("pid")
                .and_then(Json::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .filter(|&p| p != 0),
            state,
            restarts: d.find_key("restarts").and_then(Json::as_u64),
            frontend_connected: d.find_key("frontend_connected").and_then(Json::as_bool),
            last_exit,
            capacity_bytes: d.find_key("capacity_bytes").and_then(Json::as_u64),
            completed: (!completed.is_empty()).then(|| completed.iter().sum()),
            raw: d.clone(),
        })
    }

    /// Running, with a process and a connected front-end.
    pub fn serving(&self) -> bool {
        self.state == "running" && self.pid.is_some() && self.frontend_connected == Some(true)
    }
}

// ---------------------------------------------------------------------------------------------
// The rig: one supervised block device and a guest
// ---------------------------------------------------------------------------------------------

/// A fresh image served by `launcher start block ... --control CTL` (the supervisor).
#[derive(Debug)]
pub struct SupervisedBlock {
    /// Holds image, sockets, snapshots.
    pub dir: TempDir,
    /// The raw image.
    pub image: PathBuf,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// The control socket.
    pub control: PathBuf,
    /// The device's name (None: started without --name, so the default).
    pub name: String,
    /// The supervisor process.
    pub launcher: Launcher,
    /// A `ctl` client for it.
    pub ctl: Ctl,
}

impl SupervisedBlock {
    /// Creates a sparse image of `size` bytes and starts the supervisor serving it as device
    /// `name` (None: no `--name`, and the device is expected to be called `block0`).
    pub fn new(size: u64, name: Option<&str>, extra: &[&str]) -> Result<SupervisedBlock> {
        ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)?.set_len(size)?;
        let socket = dir.path().join("blk.sock");
        let control = dir.path().join("control.sock");
        let control_s = control.display().to_string();
        let mut args: Vec<&str> = Vec::new();
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        args.extend(["--control", &control_s]);
        args.extend_from_slice(extra);
        let launcher = Launcher::start_block(&socket, &image, &args)?;
        Ok(SupervisedBlock {
            image,
            socket,
            ctl: Ctl::new(&control),
            control,
            name: name.unwrap_or("block0").to_owned(),
            launcher,
            dir,
        })
    }

    /// Boots a guest with this device as `/dev/vda`, its chardev with `reconnect=1`, and
    /// waits until the supervisor reports the front-end connected.
    pub fn boot(&self) -> Result<Guest> {
        let mut disk = VhostUserBlkDisk::new(&self.socket);
        disk.reconnect = true;
        let cfg = GuestConfig {
            vhost_user_blk: vec![disk],
            ..GuestConfig::default()
        };
        let guest = Guest::boot(&GuestImage::locate()?, &cfg)?;
        guest.run_ok("test -b /dev/vda", CMD)?;
        self.ctl.wait_status(
            &self.name,
            "serving a connected front-end",
            RECONNECT_TIMEOUT,
            DevStatus::serving,
        )?;
        Ok(guest)
    }

    /// `ctl --json status` of this device.
    pub fn status(&self) -> Result<DevStatus> {
        self.ctl.status(&self.name)
    }

    /// `ctl ARGS... DEV ...`: runs `ctl` with `{dev}` in `args` replaced by the device name.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "{dev}" { self.name.as_str() } else { a })
            .collect();
        self.ctl.ok(&args)
    }

    /// Prints guest console and supervisor log when `r` is an error.
    pub fn report<T>(&self, guest: &Guest, r: Result<T>) -> Result<T> {
        if r.is_err() {
            eprintln!(
                "---- guest console ({}) ----\n{}",
                guest.log_path().display(),
                guest.console()
            );
            eprintln!("---- launcher ----\n{}", self.launcher.stderr());
        }
        r
    }
}

/// A digest of a file's whole contents (host side).
pub fn file_digest(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    Ok(h.finish())
}

/// The pids of every process (for a pid that must be gone).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends SIGKILL to `pid`.
pub fn sigkill(pid: u32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("kill -9 {pid}"))
}

// ---------------------------------------------------------------------------------------------
// fio in the guest, in the background
// ---------------------------------------------------------------------------------------------

/// Starts `fio_cmd` in the background in the guest; output in /tmp/fio.TAG.log, exit status
/// in /tmp/fio.TAG.rc once it ends.
pub fn fio_start(g: &Guest, tag: &str, fio_cmd: &str) -> Result<()> {
    g.run_ok(
        &format!(
            "rm -f /tmp/fio.{tag}.rc; ({fio_cmd} > /tmp/fio.{tag}.log 2>&1; \
             echo $? > /tmp/fio.{tag}.rc.tmp; mv /tmp/fio.{tag}.rc.tmp /tmp/fio.{tag}.rc) &"
        ),
        CMD,
    )?;
    Ok(())
}

/// Whether background fio `tag` has ended (its log is not checked).
pub fn fio_running(g: &Guest, tag: &str) -> Result<bool> {
    Ok(!g.run(&format!("test -e /tmp/fio.{tag}.rc"), CMD)?.success())
}

/// Waits (in the guest) for background fio `tag` to end, then checks that it exited 0 with
/// `err= 0` and no verify complaint; returns its log.
pub fn fio_finish(g: &Guest, tag: &str, timeout: Duration) -> Result<String> {
    let secs = timeout.as_secs().max(1);
    let waited = g.run(
        &format!(
            "i=0; while [ ! -e /tmp/fio.{tag}.rc ] && [ $i -lt {secs} ]; do sleep 1; i=$((i+1)); done; \
             test -e /tmp/fio.{tag}.rc"
        ),
        timeout + Duration::from_secs(60),
    )?;
    let log = g.run(&format!("cat /tmp/fio.{tag}.log"), CMD)?.stdout;
    ensure!(
        waited.success(),
        "fio {tag} did not finish within {timeout:?}; its log so far:\n{log}"
    );
    let rc = g.run_ok(&format!("cat /tmp/fio.{tag}.rc"), CMD)?;
    ensure!(
        rc.trim() == "0",
        "fio {tag} exited with {}:\n{log}",
        rc.trim()
    );
    ensure!(log.contains("err= 0"), "fio {tag} reported errors:\n{log}");
    ensure!(
        !log.contains("verify:") && !log.to_ascii_lowercase().contains("bad magic"),
        "fio {tag} reported a verify failure:\n{log}"
    );
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reader_finds_devices_and_fields() {
        let doc = Json::parse(
            r#"{"devices":[{"name":"a","pid":null,"state":"stopped"},
                {"name":"blk \"0\"","pid":42,"state":"Running","restarts":3,
                 "last_exit_reason":"killed by signal 9 (SIGKILL)","frontend_connected":true,
                 "queues":[{"completed":5,"bytes":1e3},{"completed":7}],
                 "fields":[["capacity_bytes","1048576"]],"uptime":1.5}]}"#,
        )
        .expect("parse");
        let st = DevStatus::from_json(&doc, "blk \"0\"").expect("device");
        assert_eq!(st.pid, Some(42));
        assert_eq!(st.state, "running");
        assert_eq!(st.restarts, Some(3));
        assert_eq!(st.frontend_connected, Some(true));
        assert_eq!(st.capacity_bytes, Some(1 << 20));
        assert_eq!(st.completed, Some(12));
        assert!(st.last_exit.as_deref().unwrap_or("").contains("SIGKILL"));
        assert!(st.serving());
        let a = DevStatus::from_json(&doc, "a").expect("device a");
        assert_eq!(a.pid, None);
        assert!(DevStatus::from_json(&doc, "b").is_err());
        assert!(Json::parse("{\"x\":1,}").is_err());
        assert!(Json::parse("[1] x").is_err());
        // A single device object, and an object keyed by name.
        let one = Json::parse(r#"{"name":"z","state":"asleep","pid":7}"#).expect("parse");
        assert_eq!(DevStatus::from_json(&one, "z").expect("z").state, "asleep");
        let keyed = Json::parse(r#"{"k":{"state":"failed","pid":0}}"#).expect("parse");
        let k = DevStatus::from_json(&keyed, "k").expect("k");
        assert_eq!((k.state.as_str(), k.pid), ("failed", None));
        assert_eq!(
            Json::parse(r#""\u00e9\n""#).expect("parse"),
            Json::Str("é\n".into())
        );
    }
}
