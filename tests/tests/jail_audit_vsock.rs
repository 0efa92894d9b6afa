//! Coverage audit of the vsock device's seccomp policy (`vsock_device.policy`) against real
//! guests, under strace (see `vu_tests::audit`): zero calls outside the policy, every rule
//! exercised or marked `cold-path:`.
//!
//! * `host`: one guest; 8 MiB each way at once (host half-close, guest half-close); 50
//!   concurrent connections each way; a host reader that pauses (credit updates); a host
//!   program's CONNECT to a port nobody listens on, a malformed CONNECT line, a guest
//!   connecting to a host port nobody listens on (the broker's FAILED); the device killed,
//!   respawned and re-plugged, then used again; the launcher's shutdown (SIGTERM).
//! * `siblings`: two devices of a group (config file), two guests: 4 MiB from CID 3 to 4 and
//!   a request and answer from 4 to 3 over the link.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::audit::{run_audit, Run};
use vu_tests::guest::Guest;
use vu_tests::launcher::Launcher;
use vu_tests::supervisor::{sigkill, Ctl};
use vu_tests::vsock::{
    boot_guest, boot_pluggable, connect_guest, echo_service, first_word, guest_spawn,
    guest_wait_file, pattern, read_all, replug, sha256_hex, VsockRig, CMD,
};

#[test]
fn vsock_policy_covers_the_workload_and_nothing_is_unexplained() -> Result<()> {
    run_audit(
        "vsock",
        vec![
            Run {
                name: "host",
                extra: &[],
                workload: Box::new(host),
            },
            Run {
                name: "siblings",
                extra: &[],
                workload: Box::new(siblings),
            },
        ],
    )
}

const SIZE: usize = 8 << 20;
const ECHO: u32 = 5000;
const BULK_IN: u32 = 5001;
const BULK_OUT: u32 = 6001;
const MANY: u32 = 6002;

fn host() -> Result<()> {
    let rig = VsockRig::start(3, &[])?;
    let monitor = rig.dir.path().join("mon.sock");
    let guest = boot_pluggable(&rig.socket, &monitor)?;
    let r = host_traffic(&rig, &guest).and_then(|()| {
        // The launcher's child is strace here: ask the launcher for its device.
        let pid = Ctl::new(rig.launcher.control())
            .status("vsock0")?
            .pid
            .context("no device process")?;
        sigkill(pid)?;
        rig.launcher
            .wait_for_nth_line("listening on", 2, Duration::from_secs(60))?;
        replug(&guest, &monitor, &rig.socket, 0, || Ok(()))?;
        echo(&rig, 1)
    });
    rig.report(&guest, r)?;
    guest.poweroff(CMD)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

fn echo(rig: &VsockRig, n: usize) -> Result<()> {
    let mut streams = Vec::new();
    for _ in 0..n {
        streams.push(rig.connect(ECHO)?.0);
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(format!("echo-{i:04}\n").as_bytes())?;
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let mut b = [0u8; 10];
        s.read_exact(&mut b)?;
        ensure!(b == *format!("echo-{i:04}\n").as_bytes(), "echo {i}: {b:?}");
    }
    Ok(())
}

fn host_traffic(rig: &VsockRig, g: &Guest) -> Result<()> {
    let out = rig.listen(BULK_OUT)?;
    let many = rig.listen(MANY)?;
    guest_spawn(g, &echo_service(ECHO, "backlog=128"), "/tmp/e.log")?;
    echo(rig, 50)?;

    // 8 MiB each way at once; both sides half-close.
    g.run_ok(
        &format!("head -c {SIZE} /dev/urandom > /tmp/o && sha256sum /tmp/o > /tmp/o.sum"),
        CMD,
    )?;
    guest_spawn(
        g,
        &format!("socat -u VSOCK-LISTEN:{BULK_IN} CREATE:/tmp/i && sha256sum /tmp/i > /tmp/i.sum"),
        "/tmp/i.log",
    )?;
    let data = pattern(SIZE, 7);
    let (mut to_guest, _) = rig.connect(BULK_IN)?;
    guest_spawn(
        g,
        &format!("socat -u FILE:/tmp/o VSOCK-CONNECT:2:{BULK_OUT}"),
        "/tmp/o.log",
    )?;
    let (mut from_guest, _) = out.accept()?;
    let reader = std::thread::spawn(move || -> Result<Vec<u8>> {
        let mut head = vec![0u8; 1 << 20];
        from_guest.read_exact(&mut head)?;
        // A pause: the guest runs out of credit, then gets updates as the host reads.
        std::thread::sleep(Duration::from_secs(2));
        head.extend(read_all(&mut from_guest, SIZE)?);
        Ok(head)
    });
    to_guest.write_all(&data)?;
    to_guest.shutdown(Shutdown::Write)?;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    ensure!(
        sha256_hex(&got)? == first_word(&g.run_ok("cat /tmp/o.sum", CMD)?)?,
        "guest to host"
    );
    let sum = first_word(&guest_wait_file(g, "/tmp/i.sum", CMD)?)?;
    ensure!(sum == sha256_hex(&data)?, "host to guest");

    many_and_refused(rig, g, many)
}

/// 50 guest clients at once, then connections the device or the broker refuses.
fn many_and_refused(
    rig: &VsockRig,
    g: &Guest,
    many: std::os::unix::net::UnixListener,
) -> Result<()> {
    guest_spawn(
        g,
        &format!(
            "for i in $(seq 1 50); do (echo g$i | socat -t 120 - VSOCK-CONNECT:2:{MANY} > /tmp/m$i) & \
             done; wait; echo done > /tmp/m.done"
        ),
        "/tmp/m.log",
    )?;
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(many.accept()?.0);
    }
    for c in &mut conns {
        let mut b = [0u8; 2];
        c.read_exact(&mut b)?;
        c.write_all(b"ok\n")?;
    }
    drop(conns);
    guest_wait_file(g, "/tmp/m.done", CMD)?;

    // Refusals: no guest listener; a malformed line; no host listener (the broker fails).
    let e = connect_guest(&rig.uds, 5999, Duration::from_secs(3));
    ensure!(e.is_err(), "CONNECT to a closed guest port succeeded");
    let mut bad = std::os::unix::net::UnixStream::connect(&rig.uds)?;
    bad.write_all(b"HELLO there\n")?;
    bad.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    let out = g.run("echo x | socat -t 5 - VSOCK-CONNECT:2:6999", CMD)?;
    ensure!(
        !out.success(),
        "the guest reached a host port nobody listens on"
    );
    Ok(())
}

fn siblings_config(dir: &Path) -> String {
    let d = dir.display();
    let dev = |name: &str, cid: u32| {
        format!(
            "[[device]]\nname = \"{name}\"\nkind = \"vsock\"\nsocket = \"{d}/{name}.sock\"\n\
             guest_cid = {cid}\nuds_path = \"{d}/{name}.v\"\ngroup = \"pair\"\n"
        )
    };
    format!("{}\n{}", dev("vm3", 3), dev("vm4", 4))
}

fn siblings() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("vsock-audit").tempdir()?;
    let cfg = dir.path().join("vms.toml");
    std::fs::write(&cfg, siblings_config(dir.path()))?;
    let args: Vec<String> = vec!["start".into(), "--config".into(), cfg.display().to_string()];
    let launcher = Launcher::spawn(&args, &dir.path().join("vm3.sock"))?;
    launcher.wait_for_nth_line("listening on", 2, Duration::from_secs(60))?;
    let g3 = boot_guest(&dir.path().join("vm3.sock"))?;
    let g4 = boot_guest(&dir.path().join("vm4.sock"))?;
    let r = (|| -> Result<()> {
        guest_spawn(
            &g4,
            "socat -u VSOCK-LISTEN:7000 CREATE:/tmp/in && sha256sum /tmp/in > /tmp/in.sum",
            "/tmp/l.log",
        )?;
        g3.run_ok(
            "head -c 4194304 /dev/urandom > /tmp/out && sha256sum /tmp/out > /tmp/out.sum",
            CMD,
        )?;
        g3.run_ok(
            "i=0; until socat -u FILE:/tmp/out VSOCK-CONNECT:4:7000; do \
             [ $i -gt 100 ] && exit 1; sleep 0.3; i=$((i+1)); done",
            CMD,
        )?;
        let sent = first_word(&g3.run_ok("cat /tmp/out.sum", CMD)?)?;
        ensure!(
            sent == first_word(&guest_wait_file(&g4, "/tmp/in.sum", CMD)?)?,
            "3 to 4"
        );
        guest_spawn(&g3, &echo_service(7001, ""), "/tmp/echo.log")?;
        let out = g4.run_ok(
            "i=0; until echo hi4 | socat -t 30 - VSOCK-CONNECT:3:7001 > /tmp/ans 2>/dev/null && [ -s /tmp/ans ]; \
             do [ $i -gt 100 ] && exit 1; sleep 0.3; i=$((i+1)); done; cat /tmp/ans",
            CMD,
        )?;
        ensure!(out.trim() == "hi4", "4 to 3: {out:?}");
        Ok(())
    })();
    if r.is_err() {
        eprintln!("---- launcher ----\n{}", launcher.stderr());
    }
    r?;
    g3.poweroff(CMD)?;
    g4.poweroff(CMD)?;
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
