//! For the `metrics_*` tests: a launcher serving a block and an rng device with `--metrics` on
//! a free loopback port, a plain HTTP/1.0 client, and the text format read into samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{launcher, sparse_image, Running, READY_TIMEOUT};

/// How long one HTTP exchange may take on a loaded machine.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A launcher with `disk0` (block) and `rng0` (rng) whose metrics are at `addr`.
pub struct MetricsRig {
    /// The launcher.
    pub launcher: Running,
    /// Its metrics endpoint.
    pub addr: SocketAddr,
    /// Its control socket.
    pub control: PathBuf,
}

/// The config file of [`MetricsRig`] in `dir` (`extra` goes at the top level).
pub fn rig_config(dir: &Path, extra: &str) -> PathBuf {
    let image = sparse_image(dir, "disk0.img", 8 << 20);
    let d = dir.display();
    let cfg = dir.join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"control = "{d}/control.sock"
{extra}

[[device]]
name = "disk0"
kind = "block"
socket = "{d}/disk0.sock"
file = "{}"

[[device]]
name = "rng0"
kind = "rng"
socket = "{d}/rng0.sock"
"#,
            image.display()
        ),
    )
    .expect("write config");
    cfg
}

impl MetricsRig {
    /// Starts the launcher with `--metrics 127.0.0.1:0` and waits until both devices serve
    /// and the metrics endpoint is announced.
    pub fn start(dir: &Path) -> MetricsRig {
        let cfg = rig_config(dir, "");
        let mut cmd: Command = launcher();
        cmd.args(["start", "--metrics", "127.0.0.1:0", "--config"])
            .arg(&cfg);
        let mut r = Running::start(cmd, &dir.join("disk0.sock"));
        r.find_line(
            &format!("listening on {}", dir.join("rng0.sock").display()),
            READY_TIMEOUT,
        )
        .expect("rng0 is ready");
        let line = r
            .find_line("serving metrics on http://", READY_TIMEOUT)
            .expect("metrics announced");
        let addr = announced_addr(&line);
        MetricsRig {
            launcher: r,
            addr,
            control: dir.join("control.sock"),
        }
    }

    /// The exposition, scraped over HTTP (the status must be 200).
    pub fn scrape(&self) -> String {
        let (status, head, body) = http_get(self.addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{head}\n{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        body
    }
}

/// The address in a "serving metrics on http://ADDR/metrics" line.
pub fn announced_addr(line: &str) -> SocketAddr {
    let rest = &line[line.find("http://").expect("url") + "http://".len()..];
    let addr = &rest[..rest.find("/metrics").expect("path")];
    addr.parse().expect("socket address")
}

/// `GET path` over HTTP/1.0 (the answer ends at EOF): status, head, body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let raw = http_exchange(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )?;
    Ok(split_response(&raw))
}

/// Sends `request` as it is and reads the answer to EOF.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

/// Status code, head and body of a raw response.
pub fn split_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The value of the sample `name` whose labels include every one of `labels`
/// (`key="value"` as written, no escapes needed in these tests).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (n, rest) = l.split_at(l.find(['{', ' ']).unwrap_or(l.len()));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `promtool check metrics` on `text`: its exit status and what it said.
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (package prometheus; tests/scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}
