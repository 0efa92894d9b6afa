//! The launcher's vsock devices: their guest CIDs (unique within a launcher), their groups,
//! and the broker of each one's live process, through which siblings are paired.
//!
//! When a device process starts ([`Registration::went_live`]), every live device that shares
//! a group with it gets a fresh link: one SOCK_SEQPACKET socketpair per pair, one end handed
//! to each device over its broker (SIBLING_LINK). A respawned device thus gets new links and
//! its siblings replace their old ones (whose other end died with the old process, so their
//! stale flows are reset). The launcher keeps no end of any link.
//!
//! The hand-over happens on one thread of the launcher ([`links`]), in the order the links
//! were made, so the supervisor thread never waits on a device's socket and a later link for
//! a pair always arrives after an earlier one.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vu_devices::vsock::broker::{link_pair, BrokerError, LinkSender};

/// Longest group name.
pub const MAX_GROUP_NAME: usize = 64;

/// How long a link may wait for room in a device's broker socket before it is dropped.
const LINK_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between attempts while a broker socket is full.
const LINK_RETRY: Duration = Duration::from_millis(10);

/// The sibling groups of a device (`--group a+b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups(Vec<String>);

impl Groups {
    /// Parses `NAME[+NAME...]`: each name 1 to 64 letters, digits, '-', '_' or '.'.
    pub fn parse(s: &str) -> Result<Groups, String> {
        let mut names: Vec<String> = Vec::new();
        for name in s.split('+') {
            let ok = !name.is_empty()
                && name.len() <= MAX_GROUP_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(format!(
                    "group name {name:?}: use 1 to {MAX_GROUP_NAME} letters, digits, '-', '_' \
                     or '.', names separated by '+'"
                ));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        Ok(Groups(names))
    }

    /// The names, each once.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// Why a device cannot join.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Another vsock device of this launcher has the CID.
    #[error("guest CID {cid} is already the CID of vsock device {other}; CIDs are unique within a launcher")]
    CidInUse {
        /// The CID.
        cid: u64,
        /// The device that has it.
        other: String,
    },
}

#[derive(Debug)]
struct Member {
    device: String,
    cid: u64,
    groups: HashSet<String>,
    /// The broker of the device's live process, if it has one.
    live: Mutex<Option<LinkSender>>,
}

impl Member {
    fn live(&self) -> MutexGuard<'_, Option<LinkSender>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn siblings_with(&self, other: &Member) -> bool {
        other.cid != self.cid && !self.groups.is_disjoint(&other.groups)
    }
}

static MEMBERS: Mutex<Vec<Arc<Member>>> = Mutex::new(Vec::new());

fn members() -> MutexGuard<'static, Vec<Arc<Member>>> {
    MEMBERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device's place in the registry; leaving it (drop) frees the CID.
#[derive(Debug)]
pub struct Registration(Arc<Member>);

/// Adds `device` with `cid` in `groups`; refuses a CID another device has.
pub fn register(device: &str, cid: u64, groups: &[String]) -> Result<Registration, RegistryError> {
    let mut all = members();
    if let Some(m) = all.iter().find(|m| m.cid == cid) {
        return Err(RegistryError::CidInUse {
            cid,
            other: m.device.clone(),
        });
    }
    let m = Arc::new(Member {
        device: device.to_string(),
        cid,
        groups: groups.iter().cloned().collect(),
        live: Mutex::new(None),
    });
    all.push(m.clone());
    Ok(Registration(m))
}

impl Registration {
    /// The device's new process serves its broker through `sender`: link it with every live
    /// sibling. Returns how many links were made.
    pub fn went_live(&self, sender: LinkSender) -> io::Result<usize> {
        let all = members();
        *self.0.live() = Some(sender.clone());
        let mut jobs = Vec::new();
        for other in all.iter().filter(|o| self.0.siblings_with(o)) {
            let Some(theirs) = other.live().clone() else {
                continue;
            };
            let (ours_end, their_end) = link_pair()?;
            jobs.push(Job::new(sender.clone(), other.cid, ours_end, &other.device));
            jobs.push(Job::new(theirs, self.0.cid, their_end, &self.0.device));
        }
        let n = jobs.len() / 2;
        // Queued while the registry is locked: links reach the link thread in the order
        // they were made.
        for j in jobs {
            links()
                .send(j)
                .map_err(|_| io::Error::other("the link thread is gone"))?;
        }
        drop(all);
        Ok(n)
    }

    /// The device's process ended: no new links for it until the next one is live.
    pub fn went_down(&self) {
        let _all = members();
        *self.0.live() = None;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut all = members();
        *self.0.live() = None;
        all.retain(|m| !Arc::ptr_eq(m, &self.0));
    }
}

/// One end of a link for one device.
struct Job {
    to: LinkSender,
    peer_cid: u64,
    end: OwnedFd,
    /// The device that receives it, for messages.
    device: String,
}

impl Job {
    fn new(to: LinkSender, peer_cid: u64, end: OwnedFd, device: &str) -> Job {
        Job {
            to,
            peer_cid,
            end,
            device: device.to_string(),
        }
    }

    /// Hands the end over, waiting (on the link thread) while the broker socket is full.
    fn deliver(self) {
        let deadline = Instant::now() + LINK_DEADLINE;
        loop {
            match self.to.send_sibling_link(self.peer_cid, self.end.as_fd()) {
                Ok(()) => {
                    tracing::debug!(device = %self.device, peer_cid = self.peer_cid, "vsock: sibling link handed over");
                    return;
                }
                Err(BrokerError::Io(e))
                    if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(LINK_RETRY);
                }
                Err(e) => {
                    // The process is gone (its successor gets a fresh link) or is not reading.
                    tracing::warn!(device = %self.device, peer_cid = self.peer_cid, error = %e,
                        "vsock: a sibling link could not be handed over");
                    return;
                }
            }
        }
    }
}

/// The link thread's queue, started on first use.
fn links() -> &'static Sender<Job> {
    static LINKS: OnceLock<Sender<Job>> = OnceLock::new();
    LINKS.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("vsock-links".into())
            .spawn(move || deliver_all(rx));
        if let Err(e) = spawned {
            // The receiver is gone with the closure: sends fail and say so.
            tracing::error!(error = %e, "vsock: cannot start the sibling link thread");
        }
        tx
    })
}

fn deliver_all(rx: Receiver<Job>) {
    for job in rx {
        job.deliver();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse() {
        assert_eq!(Groups::parse("a").map(|g| g.0), Ok(vec!["a".to_string()]));
        assert_eq!(
            Groups::parse("a+b.c+a").map(|g| g.0),
            Ok(vec!["a".to_string(), "b.c".to_string()])
        );
        for bad in ["", "+", "a+", "a b", "a/b", &"x".repeat(65)] {
            assert!(Groups::parse(bad).is_err(), "{bad:?}");
        }
    }
}
