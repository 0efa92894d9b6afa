//! Inspection of a running jailed device of every kind from the host, through /proc: seccomp,
//! no_new_privs, no capabilities in any set, the jail user, its own namespaces, an empty
//! read-only root, the rlimits, and only the expected fds (stdio, the kind's own fds such as
//! the image or the entropy source, the listening socket, the control channel, the server's
//! shutdown eventfd). Also `--jail-user` and `--sandbox none`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use vu_tests::kinds::{kinds, minimal};
use vu_tests::launcher::Launcher;

fn image(dir: &Path) -> Result<PathBuf> {
    let image = dir.join("disk.img");
    std::fs::File::create(&image)?.set_len(64 << 20)?;
    Ok(image)
}

/// The value of `Name:` in /proc/PID/status.
fn status_field(status: &str, name: &str) -> Result<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {name}: in status:\n{status}"))
}

fn status(pid: u32) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).context("read status")
}

fn fds(pid: u32) -> Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let fd: u32 = e.file_name().to_string_lossy().parse()?;
        let target = std::fs::read_link(e.path())?;
        out.insert(fd, target.display().to_string());
    }
    Ok(out)
}

#[test]
fn a_jailed_device_shows_its_jail_in_proc() -> Result<()> {
    for kind in kinds() {
        inspect(kind).with_context(|| format!("a jailed {kind} device"))?;
    }
    Ok(())
}

fn inspect(kind: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("dev.sock");
    let m = minimal(kind, dir.path(), "dev")?;
    let launcher = vu_tests::kinds::spawn(kind, &m.start_args(&socket, &[]), &socket)?;
    let pid = launcher.device_pid()?;
    credentials(pid)?;
    root_and_namespaces(pid, m.open_files(&socket)?)?;
    own_fds(pid, launcher.pid(), &m.fds)?;
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    ensure!(!socket.exists(), "socket left behind");
    Ok(())
}

/// Seccomp, no_new_privs, no capabilities, the jail user, pid 1 of its namespace, 3 threads.
fn credentials(pid: u32) -> Result<()> {
    let st = status(pid)?;
    ensure!(
        status_field(&st, "Seccomp")? == "2",
        "not in seccomp filter mode:\n{st}"
    );
    ensure!(
        status_field(&st, "NoNewPrivs")? == "1",
        "no_new_privs not set:\n{st}"
    );
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        ensure!(
            status_field(&st, set)? == "0000000000000000",
            "{set} is not empty:\n{st}"
        );
    }
    // The default jail user, on the host; no supplementary groups (the launcher's are dropped).
    ensure!(
        status_field(&st, "Uid")? == "65534\t65534\t65534\t65534",
        "not running as the jail uid:\n{st}"
    );
    ensure!(
        status_field(&st, "Gid")? == "65534\t65534\t65534\t65534",
        "not running as the jail gid:\n{st}"
    );
    ensure!(status_field(&st, "Groups")?.is_empty(), "has groups:\n{st}");
    // pid 1 of its own pid namespace.
    let nspid = status_field(&st, "NSpid")?;
    ensure!(nspid == format!("{pid}\t1"), "NSpid is {nspid:?}");
    // No thread but the main one, the signal thread and the control thread (the supervisor's
    // requests) before a front-end connects.
    ensure!(status_field(&st, "Threads")? == "3", "threads:\n{st}");
    Ok(())
}

/// An empty read-only tmpfs root, namespaces of its own, the rlimits.
fn root_and_namespaces(pid: u32, open_files: u64) -> Result<()> {
    // Its root is the empty tmpfs, and the only mount it has: read-only, nodev, nosuid, noexec.
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))?.collect();
    ensure!(root.is_empty(), "the device's root is not empty: {root:?}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mounts: Vec<&str> = mountinfo.lines().collect();
    ensure!(mounts.len() == 1, "more than one mount:\n{mountinfo}");
    let fields: Vec<&str> = mounts[0].split_whitespace().collect();
    ensure!(
        fields.get(4) == Some(&"/"),
        "the mount is not /: {mountinfo}"
    );
    let opts = fields.get(5).copied().unwrap_or_default();
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        ensure!(
            opts.split(',').any(|x| x == o),
            "root mount lacks {o}: {mountinfo}"
        );
    }
    ensure!(
        mountinfo.contains(" - tmpfs "),
        "the root is not a tmpfs: {mountinfo}"
    );

    // Its own namespaces.
    for ns in ["net", "mnt", "pid", "user", "ipc", "uts", "cgroup"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))?;
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"))?;
        ensure!(
            theirs != ours,
            "the device shares our {ns} namespace ({ours:?})"
        );
    }

    // rlimits.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let open_files = open_files.to_string();
    for (name, value) in [
        ("Max open files", open_files.as_str()),
        ("Max core file size", "0"),
        ("Max data size", "1073741824"),
    ] {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in limits"))?;
        let v: Vec<&str> = line[name.len()..].split_whitespace().collect();
        ensure!(
            v.first() == Some(&value) && v.get(1) == Some(&value),
            "{name}: {line}"
        );
    }

    Ok(())
}

/// Only the expected fds: stdio, the kind's own (3...), the listening socket (the very one
/// the launcher bound), the control channel and the server's shutdown eventfd; after them,
/// only anonymous inodes the device made itself.
fn own_fds(pid: u32, launcher: u32, own_fds: &[String]) -> Result<()> {
    let fds = fds(pid)?;
    let own = own_fds.len() as u32;
    let keys: Vec<u32> = fds.keys().copied().collect();
    let want: Vec<u32> = (0..own + 6).collect();
    ensure!(keys.starts_with(&want), "unexpected fds: {fds:#?}");
    // Beyond those, only what the device made itself (its epoll sets, eventfds and timers):
    // nothing it could have reached on the host.
    for (fd, target) in fds.range(own + 6..) {
        ensure!(
            [
                "anon_inode:[eventfd]",
                "anon_inode:[eventpoll]",
                "anon_inode:[timerfd]"
            ]
            .contains(&target.as_str()),
            "fd {fd} ({target}) is neither passed nor the device's own: {fds:#?}"
        );
    }
    for (i, target) in own_fds.iter().enumerate() {
        let fd = 3 + i as u32;
        let ok = if target == vu_tests::kinds::SOCKET {
            fds[&fd].starts_with(target.as_str())
        } else {
            fds[&fd] == *target
        };
        ensure!(ok, "fd {fd} is not {target}: {fds:#?}");
    }
    let (listen, control, shutdown) = (own + 3, own + 4, own + 5);
    ensure!(
        fds[&listen].starts_with("socket:"),
        "fd {listen} is not a socket: {fds:#?}"
    );
    ensure!(
        fds[&control].starts_with("socket:"),
        "fd {control} is not a socket: {fds:#?}"
    );
    ensure!(
        fds[&shutdown] == "anon_inode:[eventfd]",
        "fd {shutdown} is not the shutdown eventfd: {fds:#?}"
    );
    let launcher_fds = self::fds(launcher)?;
    ensure!(
        launcher_fds.values().any(|t| *t == fds[&listen]),
        "the device's listening socket is not the launcher's: {fds:#?} vs {launcher_fds:#?}"
    );
    Ok(())
}

#[test]
fn the_jail_user_is_configurable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = image(dir.path())?;
    let socket = dir.path().join("blk.sock");
    let launcher = Launcher::start_block(&socket, &image, &["--jail-user", "4242:4343"])?;
    let st = status(launcher.device_pid()?)?;
    ensure!(
        status_field(&st, "Uid")? == "4242\t4242\t4242\t4242",
        "{st}"
    );
    ensure!(
        status_field(&st, "Gid")? == "4343\t4343\t4343\t4343",
        "{st}"
    );
    ensure!(status_field(&st, "Seccomp")? == "2", "{st}");
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

#[test]
fn sandbox_none_runs_unjailed_and_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = image(dir.path())?;
    let socket = dir.path().join("blk.sock");
    let launcher = Launcher::start_block(&socket, &image, &["--sandbox", "none"])?;
    let log = launcher.stderr();
    ensure!(
        log.contains("WITHOUT A JAIL") && log.contains("debugging only"),
        "no warning:\n{log}"
    );
    let pid = launcher.device_pid()?;
    let st = status(pid)?;
    ensure!(status_field(&st, "Seccomp")? == "0", "{st}");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    ensure!(
        theirs == std::fs::read_link("/proc/self/ns/net")?,
        "new netns"
    );
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    ensure!(!socket.exists(), "socket left behind");
    Ok(())
}
