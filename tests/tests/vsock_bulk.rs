//! 64 MiB each way between a host program and a guest, at the same time, checksummed: host
//! to guest through `--uds-path` (`CONNECT <port>`), guest to host through
//! `<uds-path>_<port>` (connected by the launcher for the jailed device).

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use anyhow::{ensure, Result};
use vu_tests::vsock::{
    first_word, guest_spawn, guest_wait_file, pattern, read_all, sha256_hex, VsockRig, CMD,
};

const SIZE: usize = 64 << 20;
const TO_GUEST: u32 = 5000;
const TO_HOST: u32 = 6000;

#[test]
fn sixty_four_mib_each_way_arrive_intact() -> Result<()> {
    let rig = VsockRig::start(3, &[])?;
    let listener = rig.listen(TO_HOST)?;
    let guest = rig.boot()?;
    let r = (|| -> Result<()> {
        // The guest makes its 64 MiB first (urandom under TCG takes a while).
        guest.run_ok(
            &format!("head -c {SIZE} /dev/urandom > /tmp/g2h && sha256sum /tmp/g2h > /tmp/g2h.sum"),
            CMD,
        )?;
        guest_spawn(
            &guest,
            &format!("socat -u VSOCK-LISTEN:{TO_GUEST} CREATE:/tmp/h2g && sha256sum /tmp/h2g > /tmp/h2g.sum"),
            "/tmp/h2g.log",
        )?;
        let data = pattern(SIZE, 0x5eed);
        let want_h2g = sha256_hex(&data)?;
        let (mut to_guest, host_port) = rig.connect(TO_GUEST)?;
        ensure!(host_port >= 1 << 30, "OK line port {host_port}");
        // Guest to host, while the host writes to the guest.
        guest_spawn(
            &guest,
            &format!("socat -u FILE:/tmp/g2h VSOCK-CONNECT:2:{TO_HOST}"),
            "/tmp/g2h.log",
        )?;
        let reader = std::thread::spawn(move || -> Result<Vec<u8>> {
            let (mut s, _) = listener.accept()?;
            read_all(&mut s, SIZE + 1)
        });
        to_guest.write_all(&data)?;
        to_guest.shutdown(Shutdown::Write)?;
        let got = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
        ensure!(
            got.len() == SIZE,
            "the host read {} bytes of {SIZE}",
            got.len()
        );
        let got_g2h = sha256_hex(&got)?;
        let want_g2h = first_word(&guest_wait_file(
            &guest,
            "/tmp/g2h.sum",
            Duration::from_secs(5),
        )?)?;
        ensure!(
            got_g2h == want_g2h,
            "guest to host: sent {want_g2h}, received {got_g2h}"
        );
        let got_h2g = first_word(&guest_wait_file(&guest, "/tmp/h2g.sum", CMD)?)?;
        ensure!(
            got_h2g == want_h2g,
            "host to guest: sent {want_h2g}, received {got_h2g}"
        );
        Ok(())
    })();
    rig.report(&guest, r)?;
    guest.poweroff(CMD)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
