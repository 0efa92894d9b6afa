//! Inspection of a running jailed block device from the host, through /proc: seccomp, no_new_privs,
//! no capabilities in any set, the jail user, its own namespaces, an empty read-only root, the
//! rlimits, and only the expected fds. Also `--jail-user` and `--sandbox none`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
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
    let dir = tempfile::tempdir()?;
    let image = image(dir.path())?;
    let socket = dir.path().join("blk.sock");
    let launcher = Launcher::start_block(&socket, &image, &[])?;
    let pid = launcher.device_pid()?;
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
    for (name, value) in [
        ("Max open files", "1024"),
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

    // Only the expected fds: stdio, image (3), listening socket (4), control channel (5), and
    // the server's shutdown eventfd.
    let fds = fds(pid)?;
    let keys: Vec<u32> = fds.keys().copied().collect();
    ensure!(keys == [0, 1, 2, 3, 4, 5, 6], "unexpected fds: {fds:#?}");
    ensure!(
        fds[&3] == image.display().to_string(),
        "fd 3 is not the image: {fds:#?}"
    );
    ensure!(
        fds[&4].starts_with("socket:"),
        "fd 4 is not a socket: {fds:#?}"
    );
    ensure!(
        fds[&5].starts_with("socket:"),
        "fd 5 is not a socket: {fds:#?}"
    );
    ensure!(
        fds[&6] == "anon_inode:[eventfd]",
        "fd 6 is not the shutdown eventfd: {fds:#?}"
    );
    // fd 4 is the very socket the launcher bound.
    let launcher_fds = self::fds(launcher.pid())?;
    ensure!(
        launcher_fds.values().any(|t| *t == fds[&4]),
        "the device's listening socket is not the launcher's: {fds:#?} vs {launcher_fds:#?}"
    );

    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    ensure!(!socket.exists(), "socket left behind");
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
