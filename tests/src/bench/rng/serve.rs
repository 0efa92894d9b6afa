//! `vu-bench serve-rng`: our rng device served without the jail by this process, until the
//! launcher knows the rng kind. The source is opened as the launcher will open it: read-only
//! and, for anything but a regular file, non-blocking.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vu_core::{bind_socket, BackendServer};
use vu_devices::rng::{RngConfig, RngDevice};

/// Usage of `vu-bench serve-rng`.
pub const SERVE_USAGE: &str = "\
usage: vu-bench serve-rng --socket PATH [--source FILE] [--queue-size N]
                          [--max-bytes N --period MS]

Serves our virtio-rng device (no jail) on PATH until killed; prints \"listening on PATH\".
  --source FILE      entropy source [/dev/urandom]
  --queue-size N     largest queue size a front-end may set [1024]
  --max-bytes N      rate limit: at most N bytes per period (with --period)
  --period MS        rate limit period in milliseconds (with --max-bytes)
";

/// Opens `path` for reading as the launcher does (O_NONBLOCK unless it is a regular file).
pub fn open_source(path: &Path) -> Result<File> {
    let regular = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .is_file();
    let mut o = OpenOptions::new();
    o.read(true);
    if !regular {
        o.custom_flags(libc::O_NONBLOCK);
    }
    o.open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// Runs `vu-bench serve-rng ARGS`.
pub fn serve_rng<I: IntoIterator<Item = String>>(args: I) -> Result<()> {
    let (mut socket, mut source) = (None, PathBuf::from("/dev/urandom"));
    let (mut queue_size, mut max_bytes, mut period) = (1024u16, None, None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "-h" | "--help" => {
                print!("{SERVE_USAGE}");
                return Ok(());
            }
            "--socket" => socket = Some(PathBuf::from(v()?)),
            "--source" => source = PathBuf::from(v()?),
            "--queue-size" => queue_size = v()?.parse().context("--queue-size")?,
            "--max-bytes" => max_bytes = Some(v()?.parse().context("--max-bytes")?),
            "--period" => period = Some(Duration::from_millis(v()?.parse().context("--period")?)),
            other => bail!("serve-rng: unknown argument `{other}`\n\n{SERVE_USAGE}"),
        }
    }
    let socket = socket.context("serve-rng needs --socket")?;
    let device = RngDevice::new(RngConfig {
        source: open_source(&source)?,
        queue_size,
        max_bytes,
        period,
    })
    .map_err(|e| anyhow!("rng device: {e}"))?;
    let listener = bind_socket(&socket).map_err(|e| anyhow!("bind {}: {e}", socket.display()))?;
    let server = BackendServer::new(device, listener).map_err(|e| anyhow!("server: {e}"))?;
    println!("listening on {}", socket.display());
    server.serve().map_err(|e| anyhow!("serve: {e}"))
}
