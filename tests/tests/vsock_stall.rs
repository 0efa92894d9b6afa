//! A host program that stops reading: the guest's sender stalls (the device holds at most
//! its per-connection buffer, the guest has no credit left), nothing is lost, and it resumes
//! when the program reads again.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vu_tests::supervisor::Ctl;
use vu_tests::vsock::{
    first_word, guest_spawn, guest_wait_file, read_all, sha256_hex, VsockRig, CMD,
};

const SIZE: usize = 16 << 20;
const PORT: u32 = 6200;
/// The device's per-connection buffer (--tx-buffer-size).
const TX_BUFFER: usize = 64 << 10;

fn bytes_from_guest(ctl: &Ctl) -> Result<u64> {
    let st = ctl.status("vsock0")?;
    st.raw
        .find_key("bytes_from_guest")
        .and_then(|v| v.as_u64())
        .context("status has no bytes_from_guest")
}

fn guest_done(g: &vu_tests::guest::Guest) -> Result<bool> {
    Ok(g.run("test -e /tmp/stall.done", CMD)?.success())
}

#[test]
fn a_host_reader_that_stops_stalls_the_guest_without_loss() -> Result<()> {
    let rig = VsockRig::start(3, &["--tx-buffer-size", &TX_BUFFER.to_string()])?;
    let ctl = Ctl::new(rig.launcher.control());
    let listener = rig.listen(PORT)?;
    let guest = rig.boot()?;
    let r = (|| -> Result<()> {
        guest.run_ok(
            &format!(
                "head -c {SIZE} /dev/urandom > /tmp/data && sha256sum /tmp/data > /tmp/data.sum"
            ),
            CMD,
        )?;
        guest_spawn(
            &guest,
            &format!(
                "socat -u FILE:/tmp/data VSOCK-CONNECT:2:{PORT}; echo exit=$? > /tmp/stall.done"
            ),
            "/tmp/stall.log",
        )?;
        let (mut s, _) = listener.accept()?;
        // Read the first MiB, then stop reading.
        let mut head = vec![0u8; 1 << 20];
        s.read_exact(&mut head)?;
        // Wait until the flow has stopped: the device's count stands still for 3 s.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = bytes_from_guest(&ctl)?;
        let mut still_since = Instant::now();
        while still_since.elapsed() < Duration::from_secs(3) {
            ensure!(
                Instant::now() < deadline,
                "the guest never stalled ({last} bytes)"
            );
            std::thread::sleep(Duration::from_millis(250));
            let now = bytes_from_guest(&ctl)?;
            if now != last {
                last = now;
                still_since = Instant::now();
            }
        }
        ensure!(
            !guest_done(&guest)?,
            "the guest finished sending while nobody read"
        );
        // What left the guest: what was read, what waits in the host socket, and at most the
        // device's buffer (the host socket holds far less than the rest).
        let stalled = usize::try_from(last)?;
        ensure!(
            stalled < head.len() + (4 << 20),
            "{stalled} bytes left the guest while the host read {} (the device should hold at most {TX_BUFFER} more than the socket)",
            head.len()
        );
        ensure!(stalled < SIZE, "everything was sent");
        // Resume: the rest arrives, intact.
        let mut rest = read_all(&mut s, SIZE)?;
        let mut all = head;
        all.append(&mut rest);
        ensure!(
            all.len() == SIZE,
            "the host read {} bytes of {SIZE}",
            all.len()
        );
        let got = sha256_hex(&all)?;
        let want = first_word(&guest.run_ok("cat /tmp/data.sum", CMD)?)?;
        ensure!(got == want, "sent {want}, received {got}");
        let done = guest_wait_file(&guest, "/tmp/stall.done", Duration::from_secs(60))?;
        ensure!(
            done.contains("exit=0"),
            "the guest's sender ended with {done}"
        );
        Ok(())
    })();
    rig.report(&guest, r)?;
    guest.poweroff(CMD)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
