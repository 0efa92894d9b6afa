//! Two guests talking through a group: the launcher serves two vsock devices of one group
//! (a config file), each in its own jailed process; guest CID 3 reaches guest CID 4's
//! listener and the other way round, data checksummed; a CID outside the group is refused.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::launcher::Launcher;
use vu_tests::supervisor::Ctl;
use vu_tests::vsock::{boot_guest, echo_service, first_word, guest_spawn, guest_wait_file, CMD};

const SIZE: usize = 8 << 20;

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[[device]]
name = "vm3"
kind = "vsock"
socket = "{d}/vm3.sock"
guest_cid = 3
uds_path = "{d}/vm3.v"
group = "pair"

[[device]]
name = "vm4"
kind = "vsock"
socket = "{d}/vm4.sock"
guest_cid = 4
uds_path = "{d}/vm4.v"
group = "other+pair"
"#
    )
}

#[test]
fn guests_of_one_group_reach_each_other_by_cid() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("vsock-sib").tempdir()?;
    let cfg = dir.path().join("vms.toml");
    std::fs::write(&cfg, config(dir.path()))?;
    let args: Vec<String> = vec!["start".into(), "--config".into(), cfg.display().to_string()];
    let launcher = Launcher::spawn(&args, &dir.path().join("vm3.sock"))?;
    launcher.wait_for_nth_line("listening on", 2, Duration::from_secs(60))?;
    let ctl = Ctl::new(launcher.control());
    let (p3, p4) = (ctl.status("vm3")?.pid, ctl.status("vm4")?.pid);
    ensure!(
        p3.is_some() && p4.is_some() && p3 != p4,
        "one process per device: {p3:?} {p4:?}"
    );
    launcher.wait_for_line("linked with live siblings", Duration::from_secs(30))?;

    let g3 = boot_guest(&dir.path().join("vm3.sock"))?;
    let g4 = boot_guest(&dir.path().join("vm4.sock"))?;
    let r = (|| -> Result<()> {
        // 3 -> 4, checksummed.
        guest_spawn(
            &g4,
            "socat -u VSOCK-LISTEN:7000 CREATE:/tmp/in && sha256sum /tmp/in > /tmp/in.sum",
            "/tmp/l.log",
        )?;
        g3.run_ok(
            &format!("head -c {SIZE} /dev/urandom > /tmp/out && sha256sum /tmp/out > /tmp/out.sum"),
            CMD,
        )?;
        // The listener may not be up yet: retry while the connection is refused.
        g3.run_ok(
            "i=0; until socat -u FILE:/tmp/out VSOCK-CONNECT:4:7000; do \
             [ $i -gt 100 ] && exit 1; sleep 0.3; i=$((i+1)); done",
            CMD,
        )?;
        let sent = first_word(&g3.run_ok("cat /tmp/out.sum", CMD)?)?;
        let got = first_word(&guest_wait_file(&g4, "/tmp/in.sum", CMD)?)?;
        ensure!(sent == got, "guest 3 sent {sent}, guest 4 received {got}");

        // 4 -> 3: a request and its answer.
        guest_spawn(&g3, &echo_service(7001, ""), "/tmp/echo.log")?;
        let out = g4.run_ok(
            "i=0; until echo hello-from-4 | socat -t 30 - VSOCK-CONNECT:3:7001 > /tmp/ans 2>/dev/null && \
             [ -s /tmp/ans ]; do [ $i -gt 100 ] && exit 1; sleep 0.3; i=$((i+1)); done; cat /tmp/ans",
            CMD,
        )?;
        ensure!(out.trim() == "hello-from-4", "guest 4 got {out:?}");

        // A CID outside the group (or unknown) is refused, not reached.
        let out = g3.run("echo x | socat -t 5 - VSOCK-CONNECT:5:7000", CMD)?;
        ensure!(!out.success(), "guest 3 reached CID 5: {}", out.stdout);
        let st = ctl.status("vm3")?;
        let out_pkts = st
            .raw
            .find_key("sibling_packets_out")
            .and_then(|v| v.as_u64())
            .context("no sibling_packets_out")?;
        ensure!(out_pkts > 0, "no packets went to the sibling");
        Ok(())
    })();
    if r.is_err() {
        for g in [&g3, &g4] {
            eprintln!(
                "---- guest console ({}) ----\n{}",
                g.log_path().display(),
                g.console()
            );
        }
        eprintln!("---- launcher ----\n{}", launcher.stderr());
    }
    r?;
    g3.poweroff(CMD)?;
    g4.poweroff(CMD)?;
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
