//! 200 concurrent connections each way between host programs and one guest: all open at
//! the same time before any closes, every byte echoed or answered.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use vu_tests::vsock::{echo_service, guest_spawn, guest_wait_file, VsockRig, CMD};

const N: usize = 200;
const ECHO: u32 = 5100;
const HOST: u32 = 6100;

/// Accepts guest connections (on a thread of its own, as fast as they come) until `n` of
/// them have sent their line; streams that close without one (a client that gave up) are
/// left aside. Returns the streams with their lines, all open at once.
fn concurrent_clients(listener: UnixListener, n: usize) -> Result<Vec<(UnixStream, Vec<u8>)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            if s.map(|s| tx.send(s)).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut good = Vec::with_capacity(n);
    let mut given_up = 0;
    while good.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(mut s) = rx.recv_timeout(left) else {
            bail!(
                "{} guest clients connected and sent a line, {given_up} gave up",
                good.len()
            );
        };
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') && line.len() < 32 {
            match s.read(&mut b) {
                Ok(1) => line.push(b[0]),
                _ => break,
            }
        }
        if line.ends_with(b"\n") {
            good.push((s, line));
        } else {
            given_up += 1;
        }
    }
    Ok(good)
}

#[test]
fn two_hundred_concurrent_connections_each_way() -> Result<()> {
    let rig = VsockRig::start(3, &[])?;
    let listener = rig.listen(HOST)?;
    let guest = rig.boot()?;
    let r = (|| -> Result<()> {
        // Host to guest: 200 streams to an echo server (one socat child per connection).
        guest_spawn(&guest, &echo_service(ECHO, "backlog=512"), "/tmp/echo.log")?;
        let mut streams: Vec<UnixStream> = Vec::with_capacity(N);
        for _ in 0..N {
            streams.push(rig.connect(ECHO)?.0);
        }
        for (i, s) in streams.iter_mut().enumerate() {
            s.write_all(format!("host-{i:04}\n").as_bytes())?;
        }
        for (i, s) in streams.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            let mut b = [0u8; 10];
            s.read_exact(&mut b)?;
            ensure!(
                b == *format!("host-{i:04}\n").as_bytes(),
                "stream {i} echoed {b:?}"
            );
        }
        drop(streams);

        // Guest to host: 200 guest clients connected at once; the host answers only once all
        // of them are connected. A guest gives up connecting after 2 s (its kernel's
        // default), which a loaded TCG guest starting 200 clients may hit: a client that
        // failed tries again, and a stream whose client gave up is left aside.
        guest_spawn(
            &guest,
            &format!(
                "for i in $(seq 1 {N}); do \
                   (until echo guest-$i | socat -t 300 - VSOCK-CONNECT:2:{HOST} > /tmp/r$i 2>/dev/null \
                      && [ -s /tmp/r$i ]; do sleep 1; done) & \
                 done; wait; cat /tmp/r* | sort > /tmp/answers; echo done > /tmp/many.done"
            ),
            "/tmp/many.log",
        )?;
        let conns = concurrent_clients(listener, N)?;
        for (mut s, line) in conns {
            s.write_all(b"ok ")?;
            s.write_all(&line)?;
        }
        guest_wait_file(&guest, "/tmp/many.done", CMD)?;
        let answers = guest.run_ok("cat /tmp/answers", CMD)?;
        let mut want: Vec<String> = (1..=N).map(|i| format!("ok guest-{i}")).collect();
        want.sort();
        let got: Vec<&str> = answers.lines().collect();
        ensure!(
            got == want,
            "guest clients got {} answers: {:?}...",
            got.len(),
            &got[..got.len().min(5)]
        );
        Ok(())
    })();
    rig.report(&guest, r)?;
    guest.poweroff(CMD)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
