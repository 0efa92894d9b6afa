//! The vsock kind in the launcher: options, opening (CIDs, the --uds-path socket), the
//! companion's broker and sibling links, and the policy's vhost-user rules. The registry is
//! one per process: each test uses CIDs of its own.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Command, FromArgMatches};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use vu_devices::vsock::broker::{Reply, Request};

use super::*;
use crate::jail::policy::{self, Action, Op, Source, Verdict};
use crate::jail::seccomp::{load_policy, EMBEDDED_POLICIES};
use crate::kinds::Companion;

fn args(line: &[&str]) -> Result<VsockArgs, clap::Error> {
    let cmd = VsockArgs::augment_args(Command::new("vsock"));
    let m = cmd.try_get_matches_from(std::iter::once("vsock").chain(line.iter().copied()))?;
    VsockArgs::from_arg_matches(&m)
}

fn opts(cid: u64, uds: &Path, group: Option<&str>) -> VsockArgs {
    let cid = cid.to_string();
    let uds = uds.to_string_lossy().into_owned();
    let mut line = vec!["--guest-cid", &cid, "--uds-path", &uds];
    if let Some(g) = group {
        line.extend(["--group", g]);
    }
    args(&line).expect("valid options")
}

#[test]
fn options_are_vhost_device_vsocks() {
    let a = args(&["--uds-path", "/run/v.sock"]).expect("defaults");
    assert_eq!(a.guest_cid, 3);
    assert_eq!(a.tx_buffer_size, 64 * 1024);
    assert_eq!(a.queue_size, 1024);
    assert!(a.groups().is_empty());
    let a = args(&[
        "--guest-cid=4294967294",
        "--uds-path=/v",
        "--tx-buffer-size=1",
        "--queue-size=256",
        "--groups=a+b",
        "--max-connections=10",
    ])
    .expect("all options");
    assert_eq!(a.guest_cid, 4_294_967_294);
    assert_eq!(a.groups(), ["a", "b"]);
    assert_eq!(a.max_connections, 10);
    assert_eq!(Vsock::open_files(&a), DEFAULT_OPEN_FILES + 10);
    for bad in [
        &["--guest-cid=0", "--uds-path=/v"][..],
        &["--guest-cid=1", "--uds-path=/v"],
        &["--guest-cid=2", "--uds-path=/v"],
        &["--guest-cid=4294967295", "--uds-path=/v"],
        &["--guest-cid=4294967296", "--uds-path=/v"],
        &["--guest-cid=x", "--uds-path=/v"],
        &["--uds-path=/v", "--tx-buffer-size=0"],
        &["--uds-path=/v", "--tx-buffer-size=67108865"],
        &["--uds-path=/v", "--queue-size=100"],
        &["--uds-path=/v", "--group=a b"],
        &["--uds-path=/v", "--max-connections=0"],
        &[],
    ] {
        assert!(args(bad).is_err(), "{bad:?} accepted");
    }
    let e = parse_guest_cid("2").expect_err("host CID");
    assert!(e.contains("reserved"), "{e}");
}

#[test]
fn cids_are_unique_and_errors_name_both_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Vsock::open(&opts(101, &dir.path().join("a"), None), "vm-a").expect("first");
    let e = Vsock::open(&opts(101, &dir.path().join("b"), None), "vm-b")
        .expect_err("same CID")
        .to_string();
    assert!(e.contains("101") && e.contains("vm-a"), "{e}");
    // Refused before binding: nothing left behind.
    assert!(!dir.path().join("b").exists());
    drop(a);
    assert!(!dir.path().join("a").exists(), "the uds socket is removed");
    Vsock::open(&opts(101, &dir.path().join("b"), None), "vm-b").expect("CID free again");
}

#[test]
fn the_uds_path_is_bound_like_the_vhost_user_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    drop(UnixListener::bind(&uds).expect("stale socket"));
    let o = Vsock::open(&opts(102, &uds, None), "vm").expect("replaces a stale socket");
    assert_eq!(o.fds.len(), 1);
    UnixStream::connect(&uds).expect("listening");
    let e = Vsock::open(&opts(103, &uds, None), "vm2").expect_err("in use");
    assert!(e.to_string().contains("in use"), "{e}");
    drop(o);
    let file = dir.path().join("precious");
    std::fs::write(&file, b"x").expect("write");
    let e = Vsock::open(&opts(104, &file, None), "vm3").expect_err("not a socket");
    assert!(e.to_string().contains("not a socket"), "{e}");
    let long = dir.path().join("x".repeat(MAX_UDS_PATH));
    let e = Vsock::open(&opts(105, &long, None), "vm4").expect_err("too long");
    assert!(e.to_string().contains("_<port>"), "{e}");
}

/// One message from a device's end of its broker socket, waiting up to 10 s.
fn recv_reply(sock: &OwnedFd) -> (Reply, Option<OwnedFd>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fd = None;
                for c in m.cmsgs().expect("cmsgs") {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel installed these fds for us with this message.
                        fd = raw.first().map(|&r| unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
                let n = m.bytes;
                return (Reply::decode(&buf[..n]).expect("a reply"), fd);
            }
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("no reply: {e}"),
        }
    }
}

fn companion(o: Opened) -> Box<dyn Companion> {
    o.companion.expect("vsock has a companion")
}

#[test]
fn the_broker_connects_only_to_uds_path_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let host = UnixListener::bind(dir.path().join("v.sock_5000")).expect("host program");
    let mut c = companion(Vsock::open(&opts(110, &uds, None), "vm").expect("open"));
    let fds = c.before_spawn().expect("fresh fds");
    assert_eq!(fds.len(), 1);
    let dev = fds.into_iter().next().expect("device end");
    c.spawned(1);
    let send = |req: Request| {
        nix::sys::socket::send(dev.as_raw_fd(), &req.encode(), MsgFlags::empty()).expect("send")
    };
    send(Request::Connect { id: 7, port: 5000 });
    let (r, fd) = recv_reply(&dev);
    assert_eq!(r, Reply::Connected { id: 7 });
    let mut theirs = UnixStream::from(fd.expect("the stream"));
    let (mut ours, _) = host.accept().expect("the host program got it");
    theirs.write_all(b"ping").expect("write");
    let mut b = [0u8; 4];
    ours.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"ping");
    send(Request::Connect { id: 8, port: 5001 });
    let (r, fd) = recv_reply(&dev);
    assert_eq!(
        r,
        Reply::Failed {
            id: 8,
            errno: libc::ENOENT
        }
    );
    assert!(fd.is_none());
    // The process ends: the broker stops and a new process gets a new broker.
    c.exited();
    let fresh = c.before_spawn().expect("fresh fds");
    assert_eq!(fresh.len(), 1);
    drop(dev);
}

/// Reads the SIBLING_LINK a device end got: (peer cid, link).
fn link_from(dev: &OwnedFd) -> (u64, OwnedFd) {
    match recv_reply(dev) {
        (Reply::SiblingLink { peer_cid }, Some(fd)) => (peer_cid, fd),
        other => panic!("not a sibling link: {other:?}"),
    }
}

fn linked(a: &OwnedFd, b: &OwnedFd) -> bool {
    let msg = b"hello";
    nix::sys::socket::send(a.as_raw_fd(), msg, MsgFlags::MSG_DONTWAIT).expect("send on a link");
    let mut buf = [0u8; 8];
    let n = nix::sys::socket::recv(b.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap_or(0);
    &buf[..n] == msg
}

#[test]
fn siblings_get_fresh_links_when_one_respawns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a =
        companion(Vsock::open(&opts(120, &dir.path().join("a"), Some("g120")), "a").expect("a"));
    let mut b =
        companion(Vsock::open(&opts(121, &dir.path().join("b"), Some("x+g120")), "b").expect("b"));
    // Not in the group: never linked.
    let mut c =
        companion(Vsock::open(&opts(122, &dir.path().join("c"), Some("other")), "c").expect("c"));
    let c_end = c.before_spawn().expect("c").remove(0);
    c.spawned(3);
    let a_end = a.before_spawn().expect("a").remove(0);
    a.spawned(1);
    let b_end = b.before_spawn().expect("b").remove(0);
    b.spawned(2);
    let (peer, a_link) = link_from(&a_end);
    assert_eq!(peer, 121);
    let (peer, b_link) = link_from(&b_end);
    assert_eq!(peer, 120);
    assert!(linked(&a_link, &b_link) && linked(&b_link, &a_link));

    // b's process dies (its ends close with it) and a new one starts.
    b.exited();
    drop((b_end, b_link));
    let b2_end = b.before_spawn().expect("b2").remove(0);
    b.spawned(4);
    let (peer, a_link2) = link_from(&a_end);
    assert_eq!(peer, 121);
    let (peer, b2_link) = link_from(&b2_end);
    assert_eq!(peer, 120);
    assert!(linked(&a_link2, &b2_link));
    // The old link's other end is gone: the device sees a hang-up and resets its flows.
    let mut buf = [0u8; 1];
    let n = nix::sys::socket::recv(a_link.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
    assert_eq!(n, Ok(0), "old link not closed");

    // A device whose process is down is skipped; c never hears of anyone.
    a.exited();
    let b3_end = {
        b.exited();
        let e = b.before_spawn().expect("b3").remove(0);
        b.spawned(5);
        e
    };
    let mut buf = [0u8; 32];
    std::thread::sleep(Duration::from_millis(50));
    for end in [&b3_end, &c_end] {
        let r = nix::sys::socket::recv(end.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT);
        assert_eq!(r, Err(nix::errno::Errno::EAGAIN), "unexpected message");
    }
}

/// vsock.policy restates vhost_user.policy's rules: every call vu-core may make is still
/// allowed for a vsock device.
#[test]
fn the_vsock_policy_allows_everything_vhost_user_allows() {
    let vsock = load_policy("vsock", None).expect("vsock policy");
    let base = policy::parse("vhost_user.policy", Source::Embedded(EMBEDDED_POLICIES))
        .expect("vhost_user policy");
    assert!(!base.rules.is_empty());
    for r in &base.rules {
        let v = vsock
            .rule(&r.syscall)
            .unwrap_or_else(|| panic!("vsock policy has no rule for {}", r.syscall));
        match &r.action {
            Action::Allow => assert_eq!(v.action, Action::Allow, "{}", r.syscall),
            Action::Errno(e) => assert_eq!(v.action, Action::Errno(*e), "{}", r.syscall),
            Action::AllowIf(expr) => {
                for clause in &expr.clauses {
                    let mut args = [0u64; 6];
                    for c in clause {
                        assert_eq!(c.op, Op::Eq, "{}: extend this test", r.syscall);
                        args[usize::from(c.arg)] = c.value;
                    }
                    assert!(
                        matches!(vsock.verdict(v.nr, &args), Verdict::Allow(_)),
                        "{} {args:?} allowed by vhost_user.policy, not by vsock's",
                        r.syscall
                    );
                }
            }
        }
    }
}
