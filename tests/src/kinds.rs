//! What the tests that cover every device kind (`launcher::kinds::KINDS`) need to start a
//! device of each: its own options on the command line and as config-file keys, and what its
//! kind-specific fds are in the device process. A kind added to the launcher must be added
//! here too: the tests that iterate over the kinds fail, naming this file, until it is.

use std::path::Path;

use anyhow::{bail, Result};

/// A device of one kind with its simplest configuration.
#[derive(Debug, Clone)]
pub struct Minimal {
    /// The kind.
    pub kind: String,
    /// Its options after `launcher start KIND --socket S` (files created in the test's dir).
    pub cli: Vec<String>,
    /// The same as config-file lines (`key = value`) of a `[[device]]` table.
    pub toml: Vec<String>,
    /// What `/proc/PID/fd/N` of the device process names for each fd of the kind's
    /// `FdSpec`s, its `FDS` then its `PROCESS_FDS`, in order (numbered from 3 on); [`SOCKET`]
    /// stands for any socket.
    pub fds: Vec<String>,
}

/// The kinds the launcher knows, in its order.
pub fn kinds() -> Vec<&'static str> {
    launcher::kinds::KINDS.iter().map(|k| k.name()).collect()
}

/// In [`Minimal::fds`]: any socket (`socket:[INODE]`).
pub const SOCKET: &str = "socket:";

/// `kind`'s simplest configuration; files it needs are created in `dir`, named after
/// `name`.
pub fn minimal(kind: &str, dir: &Path, name: &str) -> Result<Minimal> {
    let m = match kind {
        "block" => {
            let image = dir.join(format!("{name}.img"));
            std::fs::File::create(&image)?.set_len(16 << 20)?;
            let image = image.display().to_string();
            Minimal {
                kind: kind.into(),
                cli: vec!["--file".into(), image.clone()],
                toml: vec![format!("file = \"{image}\"")],
                fds: vec![image],
            }
        }
        "rng" => Minimal {
            kind: kind.into(),
            cli: Vec::new(),
            toml: Vec::new(),
            fds: vec!["/dev/urandom".into()],
        },
        "vsock" => {
            // Guest CIDs are unique within a launcher: each configuration gets its own.
            static NEXT_CID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(3);
            let cid = NEXT_CID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let uds = dir.join(format!("{name}.vsock")).display().to_string();
            Minimal {
                kind: kind.into(),
                cli: vec![
                    "--guest-cid".into(),
                    cid.to_string(),
                    "--uds-path".into(),
                    uds.clone(),
                ],
                toml: vec![
                    format!("guest_cid = {cid}"),
                    format!("uds_path = \"{uds}\""),
                ],
                // The --uds-path listener, then the broker socketpair (per process).
                fds: vec![SOCKET.into(), SOCKET.into()],
            }
        }
        "net" => {
            // A tap of its own in the kinds' network namespace (see `in_kinds_netns`).
            static NEXT_TAP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let tap = format!(
                "vkt{}",
                NEXT_TAP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            in_kinds_netns(|| {
                for args in [
                    vec![
                        "tuntap",
                        "add",
                        "dev",
                        &tap,
                        "mode",
                        "tap",
                        "multi_queue",
                        "vnet_hdr",
                    ],
                    vec!["link", "set", &tap, "up"],
                ] {
                    let out = std::process::Command::new("ip").args(&args).output()?;
                    anyhow::ensure!(
                        out.status.success(),
                        "ip {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Ok(())
            })?;
            Minimal {
                kind: kind.into(),
                cli: vec!["--tap".into(), tap.clone()],
                toml: vec![format!("tap = \"{tap}\"")],
                // One queue pair: one tap queue.
                fds: vec!["/dev/net/tun".into()],
            }
        }
        other => bail!(
            "tests/src/kinds.rs has no configuration for the device kind `{other}`: add one \
             so that the tests over every kind cover it"
        ),
    };
    Ok(m)
}

/// Whether a device of `kind` must be started inside the kinds' network namespace (its
/// launcher opens a tap there: net).
pub fn needs_netns(kind: &str) -> bool {
    kind == "net"
}

/// Runs `f` on a thread inside a network namespace of this test process's own (made on first
/// use by a thread that unshares its namespace; it lives as long as the process and goes with
/// it, taps included). A launcher started from `f` runs there.
pub fn in_kinds_netns<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    use std::os::fd::AsFd;
    static NETNS: std::sync::OnceLock<std::result::Result<std::fs::File, String>> =
        std::sync::OnceLock::new();
    let ns = NETNS.get_or_init(|| {
        std::thread::spawn(|| -> std::result::Result<std::fs::File, String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            for knob in ["all", "default"] {
                // No IPv6: the kernel would send its own frames on the taps.
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1");
            }
            std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("the netns thread panicked".into()))
    });
    let ns = match ns {
        Ok(f) => f,
        Err(e) => bail!("cannot make the kinds' network namespace: {e}"),
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow::anyhow!("entering the kinds' network namespace: {e}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in the kinds' network namespace panicked"))?
    })
}

/// `Launcher::spawn` for a device of `kind` (inside the kinds' namespace where it needs one).
pub fn spawn(kind: &str, args: &[String], socket: &Path) -> Result<crate::launcher::Launcher> {
    if needs_netns(kind) {
        in_kinds_netns(|| crate::launcher::Launcher::spawn(args, socket))
    } else {
        crate::launcher::Launcher::spawn(args, socket)
    }
}

/// `Launcher::try_spawn` for a device of `kind` (see [`spawn`]).
pub fn try_spawn(kind: &str, args: &[String], socket: &Path) -> Result<crate::launcher::Spawned> {
    if needs_netns(kind) {
        in_kinds_netns(|| crate::launcher::Launcher::try_spawn(args, socket))
    } else {
        crate::launcher::Launcher::try_spawn(args, socket)
    }
}

impl Minimal {
    /// `start KIND --socket SOCKET <cli> <extra>`.
    pub fn start_args(&self, socket: &Path, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "start".into(),
            self.kind.clone(),
            "--socket".into(),
            socket.display().to_string(),
        ];
        v.extend(self.cli.iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// The descriptor limit (RLIMIT_NOFILE) the kind asks for its device with these options.
    pub fn open_files(&self, socket: &Path) -> Result<u64> {
        use clap::Parser;
        let mut argv = vec!["launcher".to_string()];
        argv.extend(self.start_args(socket, &[]));
        match launcher::cli::Cli::try_parse_from(argv)?.command {
            launcher::cli::Command::Start(s) => match &s.device {
                Some(d) => Ok(d.options.open_files()),
                None => bail!("no device in {:?}", self.start_args(socket, &[])),
            },
            _ => bail!("not `launcher start`"),
        }
    }

    /// A `[[device]]` table named `name` on `socket`.
    pub fn toml_device(&self, name: &str, socket: &Path) -> String {
        let mut t = format!(
            "[[device]]\nname = \"{name}\"\nkind = \"{}\"\nsocket = \"{}\"\n",
            self.kind,
            socket.display()
        );
        for line in &self.toml {
            t.push_str(line);
            t.push('\n');
        }
        t.push('\n');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_minimal_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        for k in kinds() {
            let m = minimal(k, dir.path(), "x").unwrap_or_else(|e| panic!("{e:#}"));
            let fds = launcher::kinds::find(k).map(|k| k.all_fds().len());
            assert_eq!(Some(m.fds.len()), fds, "{k}: one expected fd per FdSpec");
            assert!(m.start_args(Path::new("/s"), &[]).contains(&k.to_owned()));
            assert!(m
                .toml_device("d", Path::new("/s"))
                .contains(&format!("kind = \"{k}\"")));
        }
        assert!(minimal("floppy", dir.path(), "x").is_err());
    }
}
