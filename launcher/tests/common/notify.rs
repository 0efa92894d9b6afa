//! A NOTIFY_SOCKET listener speaking systemd's datagram protocol (sd_notify(3)): an AF_UNIX
//! datagram socket; each message is `KEY=VALUE` lines; SO_PASSCRED makes the kernel attach the
//! sender's credentials, as systemd checks them (NotifyAccess=main).

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};

/// One notification.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The sender's pid, from SCM_CREDENTIALS.
    pub pid: Option<i32>,
    /// The `KEY=VALUE` lines, in order.
    pub fields: Vec<(String, String)>,
}

impl Notification {
    /// The value of `key`, if the message has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The listening end of NOTIFY_SOCKET.
pub struct NotifyListener {
    sock: UnixDatagram,
    path: PathBuf,
    /// Everything received so far.
    pub seen: Vec<Notification>,
}

impl NotifyListener {
    /// Binds `dir/notify.sock` with SO_PASSCRED.
    pub fn new(dir: &Path) -> NotifyListener {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        setsockopt(&sock, sockopt::PassCred, &true).expect("SO_PASSCRED");
        NotifyListener {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// The value for NOTIFY_SOCKET.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next notification within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Notification> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let (len, pid) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) {
                Ok(m) => m,
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => return None,
                Err(e) => panic!("recvmsg on the notify socket: {e}"),
            };
            let mut pid = None;
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmCredentials(cred) = c {
                    pid = Some(cred.pid());
                }
            }
            (msg.bytes, pid)
        };
        let text = String::from_utf8(buf[..len].to_vec()).expect("notifications are UTF-8");
        assert!(
            text.ends_with('\n') || text.is_empty(),
            "lines end with a newline: {text:?}"
        );
        let fields = text
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('=').expect("KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect();
        let n = Notification { pid, fields };
        self.seen.push(n.clone());
        Some(n)
    }

    /// Waits for a notification with `key` whose value satisfies `pred`.
    pub fn wait_for(
        &mut self,
        key: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<Notification, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no {key}= as expected within {timeout:?}; seen: {:?}",
                    self.seen
                ));
            }
            if let Some(n) = self.recv(left) {
                if n.get(key).is_some_and(&pred) {
                    return Ok(n);
                }
            }
        }
    }

    /// Every notification that arrives within `window`.
    pub fn drain(&mut self, window: Duration) -> Vec<Notification> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            if let Some(n) = self.recv(left) {
                out.push(n);
            }
        }
    }
}
