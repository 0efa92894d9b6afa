//! A real Prometheus server (Debian's `prometheus`) scrapes a launcher's `--metrics` endpoint
//! on loopback: its HTTP API reports the target `up == 1` and our `vu_` series with the right
//! labels. Prometheus runs from a config the test writes, with its storage in a temporary
//! directory, and is killed at the end.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::{http_get, MetricsRig};

/// Prometheus starts, replays an empty WAL and scrapes within this on a loaded machine.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(180);

/// Kills the server when the test ends, however it ends.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        // A free loopback port for its web API (released just before it binds it).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: vu\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("prometheus runs (package prometheus; tests/scripts/setup.sh installs it)");
        Prometheus { child, addr, log }
    }

    /// The result vector of an instant query, or why there is none yet.
    fn query(&self, q: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(q));
        let (status, head, body) = http_get(self.addr, &path).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{head}\n{body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        v["data"]["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no result: {body}"))
    }

    /// Queries until `pred` holds for the result.
    fn wait(
        &mut self,
        q: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let last = match self.query(q) {
                Ok(r) if pred(&r) => return r,
                Ok(r) => format!("{r:?}"),
                Err(e) => e,
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "query {q} never matched; last: {last}\nprometheus log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sample value of one result of an instant query.
fn value(r: &serde_json::Value) -> Option<f64> {
    r["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_launcher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = MetricsRig::start(dir.path());
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).expect("prometheus dir");
    let mut prom = Prometheus::start(&prom_dir, rig.addr);

    let target = rig.addr.to_string();
    let up = prom.wait(&format!("up{{job=\"vu\",instance=\"{target}\"}}"), |r| {
        r.len() == 1 && value(&r[0]) == Some(1.0)
    });
    assert_eq!(up[0]["metric"]["instance"], target.as_str());

    let running = prom.wait(
        "vu_device_state{device=\"disk0\",kind=\"block\",state=\"running\"}",
        |r| r.len() == 1 && value(&r[0]) == Some(1.0),
    );
    assert_eq!(running[0]["metric"]["job"], "vu");

    let rng = prom.wait("vu_rng_source_state{state=\"ok\"}", |r| !r.is_empty());
    assert_eq!(rng[0]["metric"]["device"], "rng0");
    assert_eq!(rng[0]["metric"]["kind"], "rng");
    assert_eq!(value(&rng[0]), Some(1.0));

    let queues = prom.wait("vu_queue_requests_total", |r| r.len() == 2);
    for q in &queues {
        assert_eq!(q["metric"]["queue"], "0", "{q}");
    }

    // Prometheus took every sample of the scrape: none was dropped as malformed.
    let scraped = prom.wait("scrape_samples_scraped{job=\"vu\"}", |r| !r.is_empty());
    let lines = rig.scrape().lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(value(&scraped[0]), Some(lines as f64));
}
