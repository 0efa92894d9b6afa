//! The net device's jail, seen from the host: seccomp, no capabilities, the jail user, a
//! network namespace of its own (with nothing in it), and no fds but its tap queues
//! (/dev/net/tun, one per queue pair), the listening socket, the control channel and the
//! server's eventfd. A forbidden system call kills it (SIGSYS) and the launcher says so.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use vu_tests::launcher::{Launcher, Spawned};
use vu_tests::netns::TestNetns;

fn fds(pid: u32) -> Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let fd: u32 = e.file_name().to_string_lossy().parse()?;
        out.insert(fd, std::fs::read_link(e.path())?.display().to_string());
    }
    Ok(out)
}

fn status_field(pid: u32, name: &str) -> Result<String> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    st.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {name}: in status"))
}

fn args(socket: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "start",
        "net",
        "--socket",
        &socket.display().to_string(),
        "--tap",
        "vutap0",
        "--queue-pairs",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn the_net_device_has_its_tap_queues_and_nothing_else() -> Result<()> {
    let ns = TestNetns::new("netjail")?;
    ns.add_tap("vutap0", true, None)?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("net.sock");
    let a = args(&socket, &[]);
    let launcher = ns.run(|| Launcher::spawn(&a, &socket))?;
    let pid = launcher.device_pid()?;

    ensure!(
        status_field(pid, "Seccomp")? == "2",
        "not in seccomp filter mode"
    );
    ensure!(
        status_field(pid, "NoNewPrivs")? == "1",
        "no_new_privs not set"
    );
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        ensure!(
            status_field(pid, set)? == "0000000000000000",
            "{set} is not empty"
        );
    }
    ensure!(
        status_field(pid, "Uid")? == "65534\t65534\t65534\t65534",
        "not the jail user"
    );
    // Its own network namespace: neither the host's nor the tap's.
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    let launchers = std::fs::read_link(format!("/proc/{}/ns/net", launcher.pid()))?;
    ensure!(
        theirs != launchers && theirs != std::fs::read_link("/proc/self/ns/net")?,
        "the device shares a network namespace: {theirs:?}"
    );
    // Nothing in it but a loopback (down): the device cannot reach any network.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .context("the device's /proc/PID/net/dev")?;
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    ensure!(
        ifaces == ["lo"],
        "interfaces in the device's namespace: {ifaces:?}"
    );

    // stdio, two tap queues (3, 4), the socket (5), the control channel (6), the server's
    // shutdown eventfd (7).
    let fds = fds(pid)?;
    let keys: Vec<u32> = fds.keys().copied().collect();
    ensure!(keys == [0, 1, 2, 3, 4, 5, 6, 7], "unexpected fds: {fds:#?}");
    for fd in [3, 4] {
        ensure!(
            fds[&fd] == "/dev/net/tun",
            "fd {fd} is not a tap queue: {fds:#?}"
        );
    }
    for fd in [5, 6] {
        ensure!(
            fds[&fd].starts_with("socket:"),
            "fd {fd} is not a socket: {fds:#?}"
        );
    }
    ensure!(fds[&7] == "anon_inode:[eventfd]", "fd 7: {fds:#?}");
    // The queues are the launcher's own (it opened them and keeps them for the next process).
    let launcher_fds = self::fds(launcher.pid())?;
    let taps = launcher_fds
        .values()
        .filter(|t| *t == "/dev/net/tun")
        .count();
    ensure!(
        taps == 2,
        "the launcher holds {taps} tap queues: {launcher_fds:#?}"
    );

    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

#[test]
fn a_forbidden_syscall_kills_the_net_device() -> Result<()> {
    let ns = TestNetns::new("netkill")?;
    ns.add_tap("vutap0", true, None)?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("net.sock");
    let a = args(&socket, &["--test-forbidden-syscall"]);
    let (status, stderr) = match ns.run(|| Launcher::try_spawn(&a, &socket))? {
        Spawned::Exited { status, stderr } => (status, stderr),
        Spawned::Ready(_) => bail!("the net device survived a forbidden system call"),
    };
    ensure!(status.code() == Some(1), "exit status {status}:\n{stderr}");
    ensure!(
        stderr.contains("FORBIDDEN-SYSCALL: calling ptrace")
            && !stderr.contains("FORBIDDEN-SYSCALL: ptrace returned"),
        "the trigger did not run or the call returned:\n{stderr}"
    );
    let report = stderr
        .lines()
        .find(|l| l.contains("launcher: error:"))
        .unwrap_or_default();
    for needle in ["device net (pid", "SIGSYS", "seccomp violation"] {
        ensure!(
            report.contains(needle),
            "report lacks {needle:?}:\n{stderr}"
        );
    }
    Ok(())
}
