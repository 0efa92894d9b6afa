//! The supervisor's control socket: a UNIX stream socket of mode 0600 that `launcher ctl`
//! talks to with the framing of `vu_core::control` (versioned, length-prefixed postcard) and
//! [`SupervisorRequest`]/[`SupervisorResponse`]. Only peers running as the launcher's own uid
//! or as root (SO_PEERCRED) are served; others are told why ("permission denied: uid N is not
//! the launcher's uid M or root") in answer to their first request, and closed. One thread
//! per client; every request is answered, a malformed one with an error.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{geteuid, Uid};
use vu_core::control::{self as proto, ControlError};

use super::protocol::{SupervisorRequest, SupervisorResponse};
use super::socket::{self, SocketError, SocketFile};
use super::Shared;

/// How an answer to a peer of another uid starts.
pub const PERMISSION_DENIED: &str = "permission denied";

/// How much of a refused peer's request is read (and dropped) before it is answered.
const REFUSED_READ_MAX: usize = 64 << 10;
/// How long a refused peer's request is waited for.
const REFUSED_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    /// Its directory could not be created.
    #[error("cannot create the control socket directory {dir}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding failed.
    #[error("control socket: {0}")]
    Bind(#[from] SocketError),
    /// Its mode is not 0600.
    #[error("cannot make the control socket {path} private")]
    Mode {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The default control socket path: `$XDG_RUNTIME_DIR/vu-launcher/control.sock`, else
/// `/run/vu-launcher/control.sock` for root, else `/tmp/vu-launcher-UID/control.sock`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("vu-launcher/control.sock"),
        _ if geteuid().is_root() => PathBuf::from("/run/vu-launcher/control.sock"),
        _ => PathBuf::from(format!("/tmp/vu-launcher-{}/control.sock", geteuid())),
    }
}

/// The control socket path: the command line's, else the config file's, else
/// `$VU_LAUNCHER_CONTROL`, else the default (whose directory is created with mode 0700).
pub fn resolve(cli: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, ControlSocketError> {
    if let Some(p) = cli.or(config) {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(crate::cli::CONTROL_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = default_path();
    if let Some(dir) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ControlSocketError::Directory {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(path)
}

/// A bound control socket, not yet served.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    file: Arc<SocketFile>,
}

/// Binds the control socket at `path` with mode 0600 (a stale socket is replaced, a live one
/// is an error). Call while the launcher is single-threaded (the umask is process-wide).
pub fn bind(path: &Path) -> Result<ControlSocket, ControlSocketError> {
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = socket::bind(path);
    umask(old);
    let (listener, file) = bound?;
    // Created 0600 under that umask; checked rather than changed (a chmod would change the
    // ctime by which the file is recognised when it is removed).
    let mode = std::fs::symlink_metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .map_err(|source| ControlSocketError::Mode {
            path: path.to_path_buf(),
            source,
        })?;
    if mode != 0o600 {
        return Err(ControlSocketError::Mode {
            path: path.to_path_buf(),
            source: io::Error::other(format!("mode is {mode:o}, not 600")),
        });
    }
    tracing::info!("control socket {}", path.display());
    Ok(ControlSocket {
        listener,
        file: Arc::new(file),
    })
}

impl ControlSocket {
    /// Serves clients in background threads, answering with `shared`.
    pub fn serve_in_background(&self, shared: Arc<Shared>) {
        let listener = match self.listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the control socket");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || accept_loop(&listener, &shared));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot serve the control socket");
        }
    }

    /// Removes the socket file.
    pub fn remove(&self) {
        self.file.remove();
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || serve_client(stream, &shared));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a control client thread");
        }
    }
}

/// Whether a peer with `uid` may use the control socket.
pub fn peer_allowed(uid: Uid) -> bool {
    uid.is_root() || uid == geteuid()
}

fn serve_client(stream: UnixStream, shared: &Shared) {
    let mut stream = File::from(OwnedFd::from(stream));
    let uid = getsockopt(&stream, PeerCredentials).map(|c| Uid::from_raw(c.uid()));
    match uid {
        Ok(uid) if peer_allowed(uid) => {}
        other => {
            let why = refusal(&other);
            tracing::warn!("control client refused: {why}");
            // Its request is read first (bounded), so that the client's write does not fail
            // on a closed socket before it reads why.
            drop_request(&mut stream);
            let _ = proto::write_frame(&mut stream, &SupervisorResponse::Error(why));
            return;
        }
    }
    loop {
        let raw = match proto::read_raw_frame(&mut stream) {
            Ok(r) => r,
            Err(ControlError::Closed) => return,
            Err(e) => {
                // Out of step (oversized frame, EOF mid-frame): say why and close.
                let _ = proto::write_frame(
                    &mut stream,
                    &SupervisorResponse::Error(format!("{e}; closing the connection")),
                );
                return;
            }
        };
        let resp = match proto::decode::<SupervisorRequest>(&raw) {
            Ok(req) => {
                tracing::debug!(request = ?short(&req), "control request");
                shared.handle(req)
            }
            Err(e) => SupervisorResponse::Error(e.to_string()),
        };
        if let Err(e) = proto::write_frame(&mut stream, &resp) {
            tracing::debug!(error = %e, "cannot answer a control client");
            return;
        }
    }
}

/// What a refused peer is told.
pub fn refusal(peer: &Result<Uid, nix::Error>) -> String {
    match peer {
        Ok(uid) => format!(
            "{PERMISSION_DENIED}: uid {uid} is not the launcher's uid {} or root",
            geteuid()
        ),
        Err(e) => format!("{PERMISSION_DENIED}: the peer's credentials are unreadable ({e})"),
    }
}

/// Reads and drops the first frame of a refused peer: at most [`REFUSED_READ_MAX`] bytes,
/// for at most [`REFUSED_READ_TIMEOUT`].
fn drop_request(stream: &mut File) {
    use std::io::Read;
    let Ok(sock) = stream
        .try_clone()
        .map(|f| UnixStream::from(OwnedFd::from(f)))
    else {
        return;
    };
    let _ = sock.set_read_timeout(Some(REFUSED_READ_TIMEOUT));
    let mut len = [0u8; 4];
    if (&sock).read_exact(&mut len).is_err() {
        return;
    }
    let mut left = (u32::from_le_bytes(len) as usize).min(REFUSED_READ_MAX);
    let mut buf = [0u8; 4096];
    while left > 0 {
        match (&sock).read(&mut buf[..left.min(4096)]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n,
        }
    }
}

/// The request without its bulk (snapshots), for logs.
fn short(req: &SupervisorRequest) -> String {
    match req {
        SupervisorRequest::Restore(n, data) => format!("Restore({n:?}, {} bytes)", data.len()),
        other => format!("{other:?}"),
    }
}
