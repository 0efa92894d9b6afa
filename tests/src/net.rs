//! Shared pieces of the end-to-end net tests: a network namespace of the test's own with a
//! multi-queue tap in it, a launcher serving the tap (started inside the namespace), a guest
//! whose NIC is that device (`-netdev vhost-user ... -device virtio-net-pci`), and TCP peers
//! on the host side of the tap (threads inside the namespace) that move data to and from the
//! guest's busybox `nc` with SHA-256 sums compared at both ends.
//!
//! Addresses: the tap is 10.77.0.1/24 and the guest 10.77.0.2/24, inside the test's own
//! namespace (every test has its own, so parallel tests do not meet).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tempfile::TempDir;

use crate::guest::{qemu_available, Guest, GuestConfig, GuestImage};
use crate::launcher::Launcher;
use crate::netns::TestNetns;
use crate::supervisor::Ctl;

/// The tap's name inside the test's namespace.
pub const TAP: &str = "vutap0";
/// The host end of the link (the tap's address).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The guest's address.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The guest's MAC address (QEMU's `-device ... mac=`).
pub const GUEST_MAC: &str = "52:54:00:77:00:02";
/// Timeout for one guest command that moves data (TCG on a loaded machine is slow).
pub const NET_CMD: Duration = Duration::from_secs(900);
/// How long a host peer waits for the guest to connect or to send more.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(600);

/// A tap in a namespace of the test's own, served by `launcher start net`.
#[derive(Debug)]
pub struct NetRig {
    /// The launcher, running inside the namespace (dropped first: killed).
    pub launcher: Launcher,
    /// Holds the vhost-user socket.
    pub dir: TempDir,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Queue pairs served.
    pub queue_pairs: u16,
    /// The namespace (dropped last: deleted).
    pub netns: TestNetns,
}

impl NetRig {
    /// A fresh namespace with a multi-queue tap (10.77.0.1/24) and `launcher start net
    /// --tap vutap0 --queue-pairs N --name net0 EXTRA...` inside it.
    pub fn new(queue_pairs: u16, extra: &[&str]) -> Result<NetRig> {
        ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
        let netns = TestNetns::new("net")?;
        netns.add_tap(TAP, true, Some(&format!("{HOST_IP}/24")))?;
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("net.sock");
        let mut args: Vec<String> = [
            "start",
            "net",
            "--name",
            "net0",
            "--socket",
            &socket.display().to_string(),
            "--tap",
            TAP,
            "--queue-pairs",
            &queue_pairs.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let launcher = netns.run(|| Launcher::spawn(&args, &socket))?;
        Ok(NetRig {
            launcher,
            dir,
            socket,
            queue_pairs,
            netns,
        })
    }

    /// `launcher ctl` for this launcher.
    pub fn ctl(&self) -> Ctl {
        Ctl::new(self.launcher.control())
    }

    /// The guest's configuration: `cpus` vCPUs and the net device (QEMU reconnects to the
    /// socket with `reconnect`).
    pub fn guest_config(&self, cpus: u32, reconnect: bool) -> GuestConfig {
        GuestConfig {
            cpus,
            mem_mib: 768,
            extra_args: net_qemu_args(&self.socket, self.queue_pairs, reconnect),
            ..GuestConfig::default()
        }
    }

    /// Boots a guest on the device and brings its interface up (see [`guest_net_up`]).
    pub fn boot(&self, cpus: u32, reconnect: bool) -> Result<Guest> {
        let guest = Guest::boot(&GuestImage::locate()?, &self.guest_config(cpus, reconnect))?;
        guest_net_up(&guest)?;
        Ok(guest)
    }

    /// On failure, prints the guest's console and the launcher's log.
    pub fn report<T>(&self, guest: &Guest, r: Result<T>) -> Result<T> {
        if r.is_err() {
            eprintln!(
                "---- guest console ({}) ----\n{}",
                guest.log_path().display(),
                guest.console()
            );
            eprintln!("---- launcher ----\n{}", self.launcher.stderr());
        }
        r
    }
}

/// QEMU arguments for a vhost-user-net NIC on `socket` with `queue_pairs` queue pairs: the
/// chardev, `-netdev vhost-user` and `virtio-net-pci` with `mq=on` (and an MSI-X vector per
/// queue), no option ROM (`romfile=`: nothing boots from the network).
pub fn net_qemu_args(socket: &std::path::Path, queue_pairs: u16, reconnect: bool) -> Vec<String> {
    let mut chardev = format!(
        "socket,id=vunet0,path={}",
        socket.display().to_string().replace(',', ",,")
    );
    if reconnect {
        chardev.push_str(",reconnect=1");
    }
    // QEMU 7.2 (Debian's 7.2.22) dies of SIGSEGV in vhost_net_start (binding the MSI-X
    // vector notifiers) with any vhost-user-net back-end under TCG, DPDK's testpmd as well:
    // there the NIC gets no MSI-X (`vectors=0`, legacy interrupts). Later QEMUs get a vector
    // per queue and one for the configuration.
    let vectors = if qemu_major() == Some(7) {
        0
    } else {
        2 * u32::from(queue_pairs) + 2
    };
    vec![
        "-chardev".into(),
        chardev,
        "-netdev".into(),
        format!("vhost-user,id=n0,chardev=vunet0,queues={queue_pairs}"),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mq=on,vectors={vectors},romfile=,mac={GUEST_MAC}"),
    ]
}

/// The major version of the QEMU the tests run (`crate::qemu::qemu_version`).
pub fn qemu_major() -> Option<u32> {
    let text = crate::qemu::qemu_version();
    let version = text.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
}

/// Brings the guest's eth0 up as 10.77.0.2/24 and waits until it answers a ping to the host
/// end (the first may be lost while the link comes up).
pub fn guest_net_up(g: &Guest) -> Result<()> {
    g.run_ok(
        &format!(
            "ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0 && \
             i=0; until ping -c 1 -W 2 {HOST_IP} >/dev/null; do \
             i=$((i+1)); [ $i -lt 60 ] || exit 1; done"
        ),
        NET_CMD,
    )?;
    Ok(())
}

/// The virtio feature bits the guest's driver negotiated for its net device, from
/// `/sys/bus/virtio/devices/*/features` (one '0'/'1' per bit, bit 0 first).
pub fn guest_net_features(g: &Guest) -> Result<u64> {
    let out = g.run_ok(
        "for d in /sys/bus/virtio/devices/*; do \
         [ \"$(cat $d/device)\" = 0x0001 ] && cat $d/features; done",
        NET_CMD,
    )?;
    let bits = out.trim();
    ensure!(
        !bits.is_empty() && bits.bytes().all(|b| b == b'0' || b == b'1'),
        "no net device features in the guest: {out:?}"
    );
    Ok(bits
        .bytes()
        .take(64)
        .enumerate()
        .filter(|(_, b)| *b == b'1')
        .fold(0u64, |acc, (i, _)| acc | 1 << i))
}

/// A plan for [`transfer`]: `flows` TCP connections each way, `bytes` each.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Connections per direction (run at once).
    pub flows: usize,
    /// Bytes per connection.
    pub bytes: u64,
    /// The first port: guest-to-host flows use PORT+i, host-to-guest PORT+100+i.
    pub port: u16,
}

/// What [`transfer`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Moved {
    /// Bytes from the guest to the host.
    pub to_host: u64,
    /// Bytes from the host to the guest.
    pub to_guest: u64,
    /// Wall time of the transfer (both directions at once).
    pub elapsed: Duration,
}

/// Moves `plan.bytes` over each of `plan.flows` connections in each direction at once:
/// random data written by the guest to files first (their SHA-256 taken in the guest), sent
/// with busybox `nc` to host listeners that sum what arrives; and data from host senders,
/// summed as sent, received by `nc -l` in the guest and summed there. Every sum must match.
/// `progress` counts the bytes the host peers have moved so far (for a test that acts
/// mid-transfer).
pub fn transfer(
    netns: &TestNetns,
    g: &Guest,
    plan: Plan,
    progress: &Arc<AtomicU64>,
) -> Result<Moved> {
    let files: Vec<String> = (0..plan.flows).map(|i| format!("/tmp/tx{i}")).collect();
    let mut sent_by_guest = Vec::new();
    for f in &files {
        let out = g.run_ok(
            &format!(
                "head -c {} /dev/urandom > {f} && sha256sum < {f}",
                plan.bytes
            ),
            NET_CMD,
        )?;
        sent_by_guest.push(sha_of(&out)?);
    }
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..plan.flows {
        let port = plan.port + i as u16;
        receivers.push(host_receive(netns, port, progress.clone())?);
        let port = plan.port + 100 + i as u16;
        senders.push(host_send(
            netns,
            port,
            plan.bytes,
            i as u64 + 1,
            progress.clone(),
        )?);
    }
    let mut script = String::new();
    for i in 0..plan.flows {
        let port = plan.port + 100 + i as u16;
        script.push_str(&format!("nc -l -p {port} | sha256sum > /tmp/rx{i} & "));
    }
    for (i, f) in files.iter().enumerate() {
        let port = plan.port + i as u16;
        script.push_str(&format!("nc {HOST_IP} {port} < {f} & "));
    }
    script.push_str("wait; ");
    for i in 0..plan.flows {
        script.push_str(&format!("cat /tmp/rx{i}; "));
    }
    let started = Instant::now();
    let ran = g.run_ok(&script, NET_CMD);
    let elapsed = started.elapsed();
    let out = match ran {
        Ok(out) => out,
        Err(e) => {
            // The host peers time out on their own; their errors say which flow stalled.
            let peers: Vec<String> = receivers
                .into_iter()
                .map(|r| join(r).err().map(|e| format!("{e:#}")))
                .chain(
                    senders
                        .into_iter()
                        .map(|s| join(s).err().map(|e| format!("{e:#}"))),
                )
                .flatten()
                .collect();
            return Err(e.context(format!("host peers: {peers:?}")));
        }
    };
    let got_by_guest: Vec<String> = out.lines().map(sha_of).collect::<Result<_>>()?;
    ensure!(
        got_by_guest.len() == plan.flows,
        "the guest summed {} flows, not {}: {out}",
        got_by_guest.len(),
        plan.flows
    );
    let mut moved = Moved {
        to_host: 0,
        to_guest: 0,
        elapsed,
    };
    for (i, r) in receivers.into_iter().enumerate() {
        let (n, sha) = join(r)?;
        ensure!(
            n == plan.bytes,
            "flow {i} to the host: {n} bytes arrived, {} were sent",
            plan.bytes
        );
        ensure!(
            sha == sent_by_guest[i],
            "flow {i} to the host: the host summed {sha}, the guest sent {}",
            sent_by_guest[i]
        );
        moved.to_host += n;
    }
    for (i, s) in senders.into_iter().enumerate() {
        let sha = join(s)?;
        ensure!(
            sha == got_by_guest[i],
            "flow {i} to the guest: the host sent {sha}, the guest summed {}",
            got_by_guest[i]
        );
        moved.to_guest += plan.bytes;
    }
    Ok(moved)
}

fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a host peer thread panicked"))?
}

/// The hex digest at the start of a `sha256sum` output line.
fn sha_of(line: &str) -> Result<String> {
    let d = line.split_whitespace().next().unwrap_or_default();
    ensure!(
        d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a sha256sum line: {line:?}"
    );
    Ok(d.to_ascii_lowercase())
}

/// `sha256sum` reading a pipe: the host's own tool sums what the peers move.
struct Summer(Child);

impl Summer {
    fn new() -> Result<Summer> {
        Ok(Summer(
            Command::new("sha256sum")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("running sha256sum (coreutils)")?,
        ))
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.0
            .stdin
            .as_mut()
            .context("sha256sum has no stdin")?
            .write_all(data)
            .context("feeding sha256sum")
    }

    fn finish(mut self) -> Result<String> {
        drop(self.0.stdin.take());
        let mut out = String::new();
        self.0
            .stdout
            .take()
            .context("sha256sum has no stdout")?
            .read_to_string(&mut out)?;
        let st = self.0.wait()?;
        ensure!(st.success(), "sha256sum exited with {st}");
        sha_of(&out)
    }
}

/// Waits up to `timeout` for `fd` to be readable (a connection to accept).
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    Ok(poll(&mut fds, PollTimeout::from(ms))? > 0)
}

/// Listens on 10.77.0.1:`port` in the namespace (bound before this returns) and, on a
/// thread, takes one connection and reads it to its end: (bytes, their SHA-256).
pub fn host_receive(
    netns: &TestNetns,
    port: u16,
    progress: Arc<AtomicU64>,
) -> Result<JoinHandle<Result<(u64, String)>>> {
    let listener = netns.run(|| {
        TcpListener::bind(SocketAddrV4::new(HOST_IP, port))
            .with_context(|| format!("binding {HOST_IP}:{port}"))
    })?;
    let h = std::thread::Builder::new()
        .name(format!("recv-{port}"))
        .spawn(move || {
            let deadline = Instant::now() + PEER_TIMEOUT;
            loop {
                if wait_readable(listener.as_fd(), Duration::from_secs(1))? {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "nobody connected to {HOST_IP}:{port}"
                );
            }
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(PEER_TIMEOUT))?;
            let mut sum = Summer::new()?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("receiving on port {port} after {total} bytes")
                        })
                    }
                };
                sum.feed(&buf[..n])?;
                total += n as u64;
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok((total, sum.finish()?))
        })?;
    Ok(h)
}

/// On a thread in the namespace: connects to the guest's 10.77.0.2:`port` (retrying until
/// its `nc -l` listens), writes `bytes` of a pseudo-random stream (`seed`), closes, and
/// returns the SHA-256 of what it wrote.
pub fn host_send(
    netns: &TestNetns,
    port: u16,
    bytes: u64,
    seed: u64,
    progress: Arc<AtomicU64>,
) -> Result<JoinHandle<Result<String>>> {
    netns.spawn(&format!("send-{port}"), move || {
        let addr = SocketAddr::V4(SocketAddrV4::new(GUEST_IP, port));
        let deadline = Instant::now() + PEER_TIMEOUT;
        let mut s = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    // Refused until the guest's listener is up: retry, but not in a spin.
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
            }
        };
        s.set_write_timeout(Some(PEER_TIMEOUT))?;
        let mut sum = Summer::new()?;
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            rng.fill(&mut buf[..n]);
            s.write_all(&buf[..n])
                .with_context(|| format!("sending to {addr} with {left} bytes left"))?;
            sum.feed(&buf[..n])?;
            left -= n as u64;
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        s.shutdown(std::net::Shutdown::Write)?;
        // The guest's nc closes once it has read everything.
        s.set_read_timeout(Some(PEER_TIMEOUT))?;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        sum.finish()
    })
}

/// A small, fast pseudo-random stream (xorshift64*): test data, not secrets.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A `launcher ctl --json status` field of the device's own (its `fields`), as a number.
pub fn status_number(st: &crate::supervisor::DevStatus, key: &str) -> Result<u64> {
    let v = st
        .raw
        .find_key(key)
        .with_context(|| format!("no {key} in the status: {:?}", st.raw))?;
    match v.as_u64() {
        Some(n) => Ok(n),
        None => v
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{key} is not a number: {v:?}")),
    }
}

/// Per-queue `completed` counters of a status, in queue order.
pub fn queue_completed(st: &crate::supervisor::DevStatus) -> Vec<u64> {
    st.raw
        .find_all("completed")
        .into_iter()
        .filter_map(crate::supervisor::Json::as_u64)
        .collect()
}
