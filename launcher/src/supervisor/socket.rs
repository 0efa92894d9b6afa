//! The vhost-user listening socket: checked before binding so that errors name the path, and
//! removed again when the launcher exits (only if it is still the one we created). A socket
//! the launcher inherited (`--fd`, socket activation: see `listen.rs`) is never removed.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use vu_core::backend_server::ServeError;

/// Longest socket path the kernel takes (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why the socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The directory the socket goes in does not exist.
    #[error("directory {dir} for socket {socket} does not exist")]
    NoDirectory {
        /// The missing directory.
        dir: PathBuf,
        /// The socket path.
        socket: PathBuf,
    },
    /// The path is too long for a UNIX socket address.
    #[error("socket path {path} is {len} bytes long; the limit is {MAX_SOCKET_PATH}")]
    TooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Something other than a socket is at the path; we never delete it.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A live server listens on the path.
    #[error("socket {0} is in use by another server")]
    InUse(PathBuf),
    /// Binding failed otherwise.
    #[error("cannot create socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A bound socket file, removed by [`SocketFile::remove`] or on drop; or the address of an
/// inherited socket, never removed.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (st_dev, st_ino, st_ctime, st_ctime_nsec) of the file we bound: an inode number alone
    /// may be reused by a replacement. `None`: not ours (inherited), never removed.
    id: Option<(u64, u64, i64, i64)>,
    removed: AtomicBool,
}

impl SocketFile {
    /// An inherited socket's address (its path, or a description such as "fd 3" when it has
    /// none): shown, never removed.
    pub fn inherited(shown: PathBuf) -> SocketFile {
        SocketFile {
            path: shown,
            id: None,
            removed: AtomicBool::new(false),
        }
    }

    /// The socket path (for an inherited socket without one, what stands for it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the launcher created this socket file (and removes it on exit).
    pub fn is_ours(&self) -> bool {
        self.id.is_some()
    }

    /// Removes the socket file if it is still the one we bound (another server may have
    /// replaced it since). Idempotent. Does nothing for an inherited socket.
    pub fn remove(&self) {
        let Some(id) = self.id else { return };
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if file_id(&m) == id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the socket");
                }
            }
            Ok(_) => tracing::warn!(
                socket = %self.path.display(),
                "the socket was replaced by someone else; leaving it"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.path.display(), error = %e, "cannot inspect the socket")
            }
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

/// Binds a vhost-user listening socket at `path`, replacing a stale socket file.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(SocketError::NoDirectory {
            dir: dir.to_path_buf(),
            socket: path.to_path_buf(),
        });
    }
    // vu_core::bind_socket deletes whatever refuses connections; make sure that is a socket.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(SocketError::NotASocket(path.to_path_buf()))
        }
        _ => {}
    }
    let listener = vu_core::bind_socket(path).map_err(|e| match e {
        ServeError::InUse(_) => SocketError::InUse(path.to_path_buf()),
        ServeError::Socket { source, .. } => SocketError::Bind {
            path: path.to_path_buf(),
            source,
        },
        other => SocketError::Bind {
            path: path.to_path_buf(),
            source: io::Error::other(other.to_string()),
        },
    })?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: Some(file_id(&meta)),
        removed: AtomicBool::new(false),
    };
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_replaces_stale_and_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        // A stale socket: bound, then the listener dropped.
        drop(UnixListener::bind(&path).expect("bind"));
        let (l, f) = bind(&path).expect("replaces stale socket");
        assert!(matches!(bind(&path), Err(SocketError::InUse(_))));
        drop(l);
        f.remove();
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("precious");
        std::fs::write(&path, b"data").expect("write");
        assert!(matches!(bind(&path), Err(SocketError::NotASocket(_))));
        assert!(path.exists());
    }

    #[test]
    fn leaves_a_replaced_socket_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let (l, f) = bind(&path).expect("bind");
        drop(l);
        // Moved away (so its inode stays in use) and replaced by another server's socket.
        std::fs::rename(&path, dir.path().join("moved.sock")).expect("rename");
        let _other = UnixListener::bind(&path).expect("rebind");
        f.remove();
        assert!(path.exists());
    }

    #[test]
    fn an_inherited_socket_is_never_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let _l = UnixListener::bind(&path).expect("bind");
        let f = SocketFile::inherited(path.clone());
        assert!(!f.is_ours());
        f.remove();
        drop(f);
        assert!(path.exists());
    }

    #[test]
    fn missing_directory_and_long_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope").join("s.sock");
        assert!(matches!(bind(&path), Err(SocketError::NoDirectory { .. })));
        let long = dir.path().join("x".repeat(200));
        assert!(matches!(bind(&long), Err(SocketError::TooLong { .. })));
    }
}
