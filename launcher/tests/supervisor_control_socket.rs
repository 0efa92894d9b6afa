//! The control socket: private (mode 0600), peers of another uid refused (SO_PEERCRED), every
//! request answered, a malformed frame answered with an error while the supervisor keeps
//! serving, and removed on exit.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use common::start_supervised;
use launcher::supervisor::control_socket;
use launcher::supervisor::protocol::{self, SupervisorRequest, SupervisorResponse};
use nix::sys::signal::Signal;
use vu_core::control::{self as proto, CONTROL_VERSION};

fn call(stream: &mut UnixStream, req: &SupervisorRequest) -> SupervisorResponse {
    protocol::call(stream, req).expect("the supervisor answers")
}

#[test]
fn the_control_socket_is_private_and_removed_on_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, _, control) = start_supervised(dir.path(), "d0", &[]);
    let mode = std::fs::symlink_metadata(&control)
        .expect("control socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    r.stop_with(Signal::SIGTERM);
    assert!(!control.exists(), "control socket left behind");
}

#[test]
fn malformed_frames_get_an_error_and_the_supervisor_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, _, control) = start_supervised(dir.path(), "d0", &[]);

    let mut s = UnixStream::connect(&control).expect("connect");
    // Garbage in a well-formed frame: an error, and the connection stays usable.
    s.write_all(&[4, 0, 0, 0, 1, 0, 0xff, 0xff]).expect("write");
    let resp: SupervisorResponse = proto::read_frame(&mut s).expect("an answer");
    assert!(matches!(resp, SupervisorResponse::Error(_)), "{resp:?}");
    assert!(matches!(
        call(&mut s, &SupervisorRequest::List),
        SupervisorResponse::Devices(d) if d.len() == 1
    ));

    // A newer protocol version: refused by name.
    let env = proto::Envelope {
        version: CONTROL_VERSION + 1,
        body: SupervisorRequest::List,
    };
    let body = postcard_bytes(&env);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame).expect("write");
    match proto::read_frame::<SupervisorResponse>(&mut s).expect("an answer") {
        SupervisorResponse::Error(e) => assert!(e.contains("version"), "{e}"),
        other => panic!("{other:?}"),
    }

    // An oversized frame: an error, then the connection is closed.
    let mut s2 = UnixStream::connect(&control).expect("connect");
    s2.write_all(&u32::MAX.to_le_bytes()).expect("write");
    let resp: SupervisorResponse = proto::read_frame(&mut s2).expect("an answer");
    assert!(matches!(resp, SupervisorResponse::Error(_)), "{resp:?}");
    let mut rest = Vec::new();
    s2.read_to_end(&mut rest).expect("closed");

    // An unknown device is an error naming it; the supervisor still serves.
    match call(&mut s, &SupervisorRequest::Sleep("nope".into())) {
        SupervisorResponse::Error(e) => assert!(e.contains("\"nope\""), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut s3 = UnixStream::connect(&control).expect("a new client");
    assert!(matches!(
        call(&mut s3, &SupervisorRequest::Status(Some("d0".into()))),
        SupervisorResponse::Devices(d) if d[0].state == "running"
    ));
    r.stop_with(Signal::SIGTERM);
}

/// The envelope's postcard encoding, as `write_frame` makes it (the version first).
fn postcard_bytes(env: &proto::Envelope<SupervisorRequest>) -> Vec<u8> {
    let mut buf = Vec::new();
    proto::write_frame(&mut buf, &env.body).expect("encode");
    // Replace the version (a varint right after the length) by the envelope's.
    let mut body = buf[4..].to_vec();
    assert_eq!(body[0] as u16, CONTROL_VERSION);
    body[0] = env.version as u8;
    body
}

#[test]
fn another_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch to another uid");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The directory must be traversable by the other user for it to reach the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let (mut r, _, control) = start_supervised(dir.path(), "d0", &[]);

    // Mode 0600: the other user cannot even connect.
    assert_eq!(as_nobody(&control), Outcome::ConnectRefused);

    // Even with the file opened up, SO_PEERCRED refuses it.
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    assert_eq!(as_nobody(&control), Outcome::PermissionDenied);

    // The owner is still served.
    let mut s = UnixStream::connect(&control).expect("connect");
    assert!(matches!(
        call(&mut s, &SupervisorRequest::List),
        SupervisorResponse::Devices(_)
    ));
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn launcher_ctl_of_another_uid_is_told_why() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch to another uid");
        return;
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_launcher"));
    let traversable = bin
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if !traversable {
        eprintln!("skipped: {} is not reachable by uid 65534", bin.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let (mut r, _, control) = start_supervised(dir.path(), "d0", &[]);
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    for args in [&["list"][..], &["status", "d0"], &["--json", "stop", "d0"]] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(bin)
            .arg("ctl")
            .arg("--control")
            .arg(&control)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run setpriv (util-linux)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        let me = nix::unistd::geteuid();
        assert!(
            text.contains(&format!(
                "permission denied: uid 65534 is not the launcher's uid {me} or root"
            )),
            "{args:?}: {text}"
        );
        assert!(!text.contains("Broken pipe"), "{args:?}: {text}");
    }
    // The device was not stopped.
    let mut s = UnixStream::connect(&control).expect("connect");
    assert!(matches!(
        call(&mut s, &SupervisorRequest::Status(Some("d0".into()))),
        SupervisorResponse::Devices(d) if d[0].state == "running"
    ));
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn a_stale_control_socket_is_replaced_and_a_live_one_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = dir.path().join("control.sock");
    // What a launcher killed with SIGKILL leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&control).expect("bind"));
    assert!(control.exists());
    let (mut r, _, control2) = start_supervised(dir.path(), "d0", &[]);
    assert_eq!(control, control2);
    let mut s = UnixStream::connect(&control).expect("the new launcher serves it");
    assert!(matches!(
        call(&mut s, &SupervisorRequest::List),
        SupervisorResponse::Devices(_)
    ));
    // A second launcher on the same control socket is refused, and the first keeps it.
    let image = common::sparse_image(dir.path(), "other.img", 1 << 20);
    let mut cmd = common::start_block(&dir.path().join("other.sock"), &image, &["--control"]);
    cmd.arg(&control);
    let out = common::output(cmd);
    common::assert_fails(&out, 1, &["in use"]);
    let mut s = UnixStream::connect(&control).expect("still served");
    assert!(matches!(
        call(&mut s, &SupervisorRequest::List),
        SupervisorResponse::Devices(_)
    ));
    r.stop_with(Signal::SIGTERM);
    assert!(!control.exists());
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    ConnectRefused,
    PermissionDenied,
    Other(i32),
}

/// Forks a child that becomes uid/gid 65534, connects to `control`, sends `List` and checks
/// the answer. The child makes only raw system calls on buffers prepared before the fork.
fn as_nobody(control: &std::path::Path) -> Outcome {
    let mut request = Vec::new();
    proto::write_frame(&mut request, &SupervisorRequest::List).expect("encode");
    let mut expected = Vec::new();
    let why = control_socket::refusal(&Ok(nix::unistd::Uid::from_raw(65534)));
    assert!(
        why.starts_with("permission denied: uid 65534 is not the launcher's uid "),
        "{why}"
    );
    proto::write_frame(&mut expected, &SupervisorResponse::Error(why)).expect("encode");
    let path = control.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    assert!(path.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let mut reply = vec![0u8; expected.len()];

    // SAFETY: the child only makes raw system calls on the buffers above (no allocation, no
    // locks) and ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        nobody_child(&addr, &request, &mut reply, &expected);
    }
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("wait");
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Outcome::PermissionDenied,
        nix::sys::wait::WaitStatus::Exited(_, 20) => Outcome::ConnectRefused,
        nix::sys::wait::WaitStatus::Exited(_, c) => Outcome::Other(c),
        other => panic!("child {other:?}"),
    }
}

/// The forked child of [`as_nobody`]: exit status 0 when refused with "permission denied",
/// 20 when it cannot connect, others on unexpected failures.
// One sequence of raw system calls between fork and _exit, kept in one block to read as such.
#[allow(clippy::multiple_unsafe_ops_per_block)]
fn nobody_child(addr: &libc::sockaddr_un, request: &[u8], reply: &mut [u8], expected: &[u8]) -> ! {
    // SAFETY: raw system calls on integers and on buffers prepared before the fork; nothing
    // allocates or takes a lock, and the process ends with _exit.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(65534, 65534, 65534) != 0
            || libc::setresuid(65534, 65534, 65534) != 0
        {
            libc::_exit(10);
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            libc::_exit(11);
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd, std::ptr::from_ref(addr).cast(), len) != 0 {
            libc::_exit(20);
        }
        // The supervisor reads the request before it answers: the write succeeds.
        if libc::write(fd, request.as_ptr().cast(), request.len()) != request.len() as isize {
            libc::_exit(14);
        }
        let mut got = 0usize;
        while got < reply.len() {
            let n = libc::read(fd, reply.as_mut_ptr().add(got).cast(), reply.len() - got);
            if n <= 0 {
                libc::_exit(12);
            }
            got += n as usize;
        }
        if reply == expected {
            libc::_exit(0);
        }
        libc::_exit(13)
    }
}

#[test]
fn launchers_killed_by_tests_leave_no_control_socket_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Named on the command line.
    let (r, _, control) = start_supervised(dir.path(), "d0", &[]);
    r.signal(Signal::SIGKILL);
    drop(r);
    assert!(!control.exists(), "{} left behind", control.display());
    // The harness's own per-launcher default (VU_LAUNCHER_CONTROL).
    let image = common::sparse_image(dir.path(), "d1.img", 1 << 20);
    let sock = dir.path().join("d1.sock");
    let cmd = common::start_block(&sock, &image, &[]);
    let control = cmd
        .get_envs()
        .find(|(k, _)| *k == "VU_LAUNCHER_CONTROL")
        .and_then(|(_, v)| v.map(std::path::PathBuf::from))
        .expect("the harness names a control socket");
    let r = common::Running::start(cmd, &sock);
    assert!(control.exists());
    drop(r);
    assert!(!control.exists(), "{} left behind", control.display());
}
