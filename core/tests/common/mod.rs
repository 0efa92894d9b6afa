//! Shared pieces of the socketpair tests: a minimal device, a front-end that frames
//! vhost-user messages by hand (12-byte header + payload, fds as SCM_RIGHTS), memfds and a
//! driver-side split ring written straight into the guest-memory memfd.
//!
//! Request codes and payload layouts are written out here from the vhost-user specification,
//! not taken from `vu_core::message`, so the tests check the wire format independently.

#![allow(dead_code)]

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use vu_core::backend_client::ConfigNotifier;
use vu_core::handler::{Handler, HandlerStatus};
use vu_core::{
    BackendServer, ConnectionEnd, DeviceError, Progress, QueueHandler, QueueIo, VhostUserDevice,
};

/// How long any single wait may take. Generous: the tests run on a loaded 2-core machine,
/// and a passing test never waits this long.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Header flag bits (spec: "Message Specification").
pub const VERSION: u32 = 0x1;
pub const FLAG_REPLY: u32 = 1 << 2;
pub const FLAG_NEED_REPLY: u32 = 1 << 3;

/// Front-end request codes, from the specification.
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const RESET_DEVICE: u32 = 34;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    pub const SET_STATUS: u32 = 39;
    pub const GET_STATUS: u32 = 40;
}

/// Virtio / vhost feature bits.
pub mod feat {
    pub const DEVICE_BIT: u64 = 1 << 5;
    pub const LOG_ALL: u64 = 1 << 26;
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
    /// Everything the test device plus the core offer.
    pub const OFFERED: u64 =
        DEVICE_BIT | LOG_ALL | INDIRECT_DESC | EVENT_IDX | PROTOCOL_FEATURES | VERSION_1;
}

/// Protocol feature bits.
pub mod proto {
    pub const MQ: u64 = 1 << 0;
    pub const LOG_SHMFD: u64 = 1 << 1;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const BACKEND_REQ: u64 = 1 << 5;
    pub const CONFIG: u64 = 1 << 9;
    pub const INFLIGHT_SHMFD: u64 = 1 << 12;
    pub const RESET_DEVICE: u64 = 1 << 13;
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    /// What the core offers for a device with a config space.
    pub const OFFERED: u64 = MQ
        | LOG_SHMFD
        | REPLY_ACK
        | BACKEND_REQ
        | CONFIG
        | INFLIGHT_SHMFD
        | RESET_DEVICE
        | CONFIGURE_MEM_SLOTS
        | STATUS;
}

// ---------------------------------------------------------------------------------------
// The test device.
// ---------------------------------------------------------------------------------------

/// Initial config space: bytes 0x10..0x20. Bytes 0..8 are read-only, 8..16 writable.
pub const CONFIG_INIT: [u8; 16] = [
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
pub const MAX_QUEUE_SIZE: u16 = 256;
pub const NUM_QUEUES: usize = 2;

/// Two queues, a 16-byte config space, and a queue handler that completes every request
/// with length 0 (or, with `pattern`, writes the pattern into the writable buffers first and
/// completes with the bytes written).
#[derive(Debug)]
pub struct TestDevice {
    config: Mutex<[u8; 16]>,
    pattern: Option<Vec<u8>>,
    notifier: Mutex<Option<Arc<ConfigNotifier>>>,
    pub features: Mutex<Vec<u64>>,
    pub resets: AtomicUsize,
    pub starts: AtomicUsize,
    pub stops: AtomicUsize,
}

impl TestDevice {
    pub fn new() -> Self {
        TestDevice {
            config: Mutex::new(CONFIG_INIT),
            pattern: None,
            notifier: Mutex::new(None),
            features: Mutex::new(Vec::new()),
            resets: AtomicUsize::new(0),
            starts: AtomicUsize::new(0),
            stops: AtomicUsize::new(0),
        }
    }

    pub fn with_pattern(pattern: &[u8]) -> Self {
        TestDevice {
            pattern: Some(pattern.to_vec()),
            ..TestDevice::new()
        }
    }

    pub fn config(&self) -> [u8; 16] {
        *self.config.lock().expect("config lock")
    }

    pub fn has_notifier(&self) -> bool {
        self.notifier.lock().expect("notifier lock").is_some()
    }
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new()
    }
}

struct TestQueue {
    pattern: Option<Vec<u8>>,
}

impl QueueHandler for TestQueue {
    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while let Some(head) = q.pop() {
            let len = match &self.pattern {
                Some(p) => q.chain(head).write_at(0, p) as u32,
                None => 0,
            };
            q.complete(head, len);
        }
        Progress::Drained
    }
}

impl VhostUserDevice for TestDevice {
    fn name(&self) -> &str {
        "test"
    }

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn device_features(&self) -> u64 {
        feat::DEVICE_BIT
    }

    fn set_features(&self, features: u64) -> Result<(), DeviceError> {
        self.features.lock().expect("features lock").push(features);
        Ok(())
    }

    fn config_size(&self) -> usize {
        16
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let c = self.config.lock().expect("config lock");
        buf.copy_from_slice(&c[offset..offset + buf.len()]);
    }

    fn write_config(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        if offset < 8 {
            return Err(DeviceError::Unsupported("bytes 0..8 are read-only"));
        }
        let mut c = self.config.lock().expect("config lock");
        c[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn start_queue(&self, _index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(TestQueue {
            pattern: self.pattern.clone(),
        }))
    }

    fn stop_queue(&self, _index: usize) {
        self.stops.fetch_add(1, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
        *self.config.lock().expect("config lock") = CONFIG_INIT;
    }

    fn set_config_notifier(&self, notifier: Arc<ConfigNotifier>) {
        *self.notifier.lock().expect("notifier lock") = Some(notifier);
    }
}

// ---------------------------------------------------------------------------------------
// Payload builders (native byte order, as the specification says).
// ---------------------------------------------------------------------------------------

pub fn u64_payload(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut p = index.to_ne_bytes().to_vec();
    p.extend_from_slice(&num.to_ne_bytes());
    p
}

pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64) -> Vec<u8> {
    let mut p = index.to_ne_bytes().to_vec();
    p.extend_from_slice(&flags.to_ne_bytes());
    for v in [desc, used, avail, log] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

/// One memory region description: guest address, size, user address, mmap offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub gpa: u64,
    pub size: u64,
    pub uva: u64,
    pub offset: u64,
}

impl Region {
    pub fn bytes(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(32);
        for v in [self.gpa, self.size, self.uva, self.offset] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        p
    }
}

/// SET_MEM_TABLE payload; `pad_to_8` adds room for 8 regions as QEMU does.
pub fn mem_table(regions: &[Region], pad_to_8: bool) -> Vec<u8> {
    let mut p = (regions.len() as u32).to_ne_bytes().to_vec();
    p.extend_from_slice(&0u32.to_ne_bytes());
    for r in regions {
        p.extend_from_slice(&r.bytes());
    }
    if pad_to_8 {
        p.resize(8 + 8 * 32, 0);
    }
    p
}

/// ADD_MEM_REG / REM_MEM_REG payload.
pub fn single_region(r: &Region) -> Vec<u8> {
    let mut p = 0u64.to_ne_bytes().to_vec();
    p.extend_from_slice(&r.bytes());
    p
}

/// GET/SET_CONFIG payload.
pub fn config_msg(offset: u32, size: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut p = offset.to_ne_bytes().to_vec();
    p.extend_from_slice(&size.to_ne_bytes());
    p.extend_from_slice(&flags.to_ne_bytes());
    p.extend_from_slice(data);
    p
}

/// SET_LOG_BASE payload.
pub fn log_description(size: u64, offset: u64) -> Vec<u8> {
    let mut p = size.to_ne_bytes().to_vec();
    p.extend_from_slice(&offset.to_ne_bytes());
    p
}

/// GET/SET_INFLIGHT_FD payload (24 bytes, padded as QEMU sends it).
pub fn inflight_description(size: u64, offset: u64, num_queues: u16, queue_size: u16) -> Vec<u8> {
    let mut p = size.to_ne_bytes().to_vec();
    p.extend_from_slice(&offset.to_ne_bytes());
    p.extend_from_slice(&num_queues.to_ne_bytes());
    p.extend_from_slice(&queue_size.to_ne_bytes());
    p.extend_from_slice(&[0u8; 4]);
    p
}

pub fn read_u64(b: &[u8]) -> u64 {
    u64::from_ne_bytes(b[..8].try_into().expect("8 bytes"))
}

pub fn read_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes(b[..4].try_into().expect("4 bytes"))
}

pub fn read_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes(b[..2].try_into().expect("2 bytes"))
}

// ---------------------------------------------------------------------------------------
// File descriptors.
// ---------------------------------------------------------------------------------------

/// A memfd of `len` zero bytes.
pub fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create("vu-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("size the memfd");
    f
}

pub fn eventfd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .expect("eventfd")
}

/// Waits until `fd` is readable; false on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::Error::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The hand-framed front-end.
// ---------------------------------------------------------------------------------------

/// A message received from the back-end.
#[derive(Debug)]
pub struct Received {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Received {
    /// Asserts this is a well-formed reply to `request` with a payload of `len` bytes.
    pub fn assert_reply(&self, request: u32, len: usize) {
        assert_eq!(self.request, request, "reply echoes the request code");
        assert_eq!(
            self.flags,
            VERSION | FLAG_REPLY,
            "reply flags: version 1 and REPLY, nothing else"
        );
        assert_eq!(self.size as usize, len, "reply size for request {request}");
        assert_eq!(self.payload.len(), len);
    }
}

/// Outcome of reading from a socket the server may have closed.
#[derive(Debug)]
pub enum ReadOutcome {
    Message(Received),
    Closed,
}

/// Front-end side of the connection, framing messages by hand.
#[derive(Debug)]
pub struct Frontend {
    sock: UnixStream,
}

impl Frontend {
    pub fn new(sock: UnixStream) -> Self {
        sock.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        sock.set_write_timeout(Some(TIMEOUT))
            .expect("write timeout");
        Frontend { sock }
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Raw bytes with optional fds attached to the first byte. Errors are returned, not
    /// panicked on: after a protocol error the server may already have closed.
    pub fn try_send_raw(&self, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            let iov = [IoSlice::new(&bytes[sent..])];
            let cmsgs = [ControlMessage::ScmRights(fds)];
            let cm: &[ControlMessage] = if sent == 0 && !fds.is_empty() {
                &cmsgs
            } else {
                &[]
            };
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cm,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => sent += n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn send_raw(&self, bytes: &[u8], fds: &[RawFd]) {
        self.try_send_raw(bytes, fds).expect("send to the back-end");
    }

    /// Header (request, flags, size) + payload.
    pub fn frame(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + payload.len());
        b.extend_from_slice(&request.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        b.extend_from_slice(payload);
        b
    }

    pub fn send_flags(&self, request: u32, flags: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.send_raw(&Self::frame(request, flags, payload), &raw);
    }

    /// A request without NEED_REPLY.
    pub fn send(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_flags(request, VERSION, payload, fds);
    }

    /// A request with NEED_REPLY.
    pub fn send_need_reply(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_flags(request, VERSION | FLAG_NEED_REPLY, payload, fds);
    }

    /// Reads one message or EOF/ECONNRESET (the server closed). Panics on timeout.
    pub fn read(&self) -> ReadOutcome {
        let mut hdr = [0u8; 12];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < hdr.len() {
            let mut cmsg = nix::cmsg_space!([RawFd; 8]);
            let mut iov = [IoSliceMut::new(&mut hdr[got..])];
            let msg = match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) if got == 0 => return ReadOutcome::Closed,
                Err(nix::Error::EAGAIN) => {
                    panic!("no message from the back-end within {TIMEOUT:?}")
                }
                Err(e) => panic!("recvmsg: {e}"),
            };
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` for us via SCM_RIGHTS and
                        // nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            if msg.bytes == 0 {
                assert_eq!(got, 0, "back-end closed in the middle of a header");
                return ReadOutcome::Closed;
            }
            got += msg.bytes;
        }
        let request = read_u32(&hdr[0..]);
        let flags = read_u32(&hdr[4..]);
        let size = read_u32(&hdr[8..]);
        assert!(size <= 4096, "back-end sent a {size}-byte payload");
        let mut payload = vec![0u8; size as usize];
        (&self.sock)
            .read_exact(&mut payload)
            .expect("read the reply payload");
        ReadOutcome::Message(Received {
            request,
            flags,
            size,
            payload,
            fds,
        })
    }

    /// Reads one message; panics if the server closed instead.
    pub fn recv(&self) -> Received {
        match self.read() {
            ReadOutcome::Message(m) => m,
            ReadOutcome::Closed => panic!("back-end closed the connection"),
        }
    }

    /// Reads a REPLY_ACK for `request` and returns its value.
    pub fn recv_ack(&self, request: u32) -> u64 {
        let m = self.recv();
        m.assert_reply(request, 8);
        assert!(m.fds.is_empty(), "an ack carries no fds");
        read_u64(&m.payload)
    }

    /// Sends `request` with NEED_REPLY and expects a zero (success) ack.
    pub fn ok(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_need_reply(request, payload, fds);
        assert_eq!(self.recv_ack(request), 0, "request {request} was refused");
    }

    /// Sends `request` with NEED_REPLY and expects a non-zero (failure) ack.
    pub fn refused(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_need_reply(request, payload, fds);
        assert_ne!(
            self.recv_ack(request),
            0,
            "malformed request {request} was acknowledged as a success"
        );
    }

    /// Sends a request that has an explicit reply and returns that reply, checked.
    pub fn call(
        &self,
        request: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        reply_len: usize,
    ) -> Received {
        self.send(request, payload, fds);
        let m = self.recv();
        m.assert_reply(request, reply_len);
        m
    }

    /// GET_FEATURES and the offered value. Used as a barrier: since the back-end handles
    /// messages in order, a GET_FEATURES reply arriving next proves nothing else (no
    /// stray ack) was sent before it.
    pub fn sync(&self) {
        self.send(req::GET_FEATURES, &[], &[]);
        let m = self.recv();
        assert_eq!(
            m.request,
            req::GET_FEATURES,
            "an unexpected message arrived before the GET_FEATURES reply"
        );
        m.assert_reply(req::GET_FEATURES, 8);
        assert_eq!(read_u64(&m.payload), feat::OFFERED);
    }

    /// Asserts that the back-end closed the connection.
    pub fn expect_closed(&self) {
        match self.read() {
            ReadOutcome::Closed => {}
            ReadOutcome::Message(m) => panic!(
                "expected the back-end to close; got request {} flags {:#x} size {}",
                m.request, m.flags, m.size
            ),
        }
    }

    /// Half-closes our side: the back-end sees EOF.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    /// Writes through `std::io::Write` (no fds), for fragmented sends.
    pub fn write_all(&self, bytes: &[u8]) {
        (&self.sock).write_all(bytes).expect("write");
    }
}

// ---------------------------------------------------------------------------------------
// The harness: a real BackendServer serving one end of a socketpair in a thread.
// ---------------------------------------------------------------------------------------

pub struct Harness {
    pub fe: Frontend,
    pub server: Arc<BackendServer>,
    pub device: Arc<TestDevice>,
    end: mpsc::Receiver<ConnectionEnd>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_device(TestDevice::new())
    }

    pub fn with_device(device: TestDevice) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("unused.sock")).expect("bind");
        let device = Arc::new(device);
        let server = Arc::new(BackendServer::new(device.clone(), listener).expect("server"));
        let (fe_end, be_end) = UnixStream::pair().expect("socketpair");
        let (tx, rx) = mpsc::channel();
        let s = server.clone();
        std::thread::Builder::new()
            .name("vu-test-server".into())
            .spawn(move || {
                let end = s.serve_stream(be_end);
                let _ = tx.send(end);
            })
            .expect("spawn the server thread");
        Harness {
            fe: Frontend::new(fe_end),
            server,
            device,
            end: rx,
            _dir: dir,
        }
    }

    pub fn handler(&self) -> Arc<Mutex<Handler>> {
        self.server.handler()
    }

    pub fn status(&self) -> HandlerStatus {
        self.handler().lock().expect("handler lock").status()
    }

    /// Waits for `serve_stream` to return. Panics if the server thread panicked or did not
    /// return in time.
    pub fn wait_end(&self) -> ConnectionEnd {
        match self.end.recv_timeout(TIMEOUT) {
            Ok(end) => end,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the server thread panicked"),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("serve_stream did not return"),
        }
    }

    /// Closes the front-end side and returns how the server saw the connection end.
    pub fn close(&self) -> ConnectionEnd {
        self.fe.shutdown_write();
        self.wait_end()
    }

    /// Asserts the server closed the connection after a protocol error and returned
    /// normally.
    pub fn expect_protocol_error(&self) {
        self.fe.expect_closed();
        assert_eq!(self.wait_end(), ConnectionEnd::ProtocolError);
    }

    /// The usual opening: features, protocol features (`protocol`), owner.
    pub fn negotiate(&self, features: u64, protocol: u64) {
        let m = self.fe.call(req::GET_FEATURES, &[], &[], 8);
        assert_eq!(read_u64(&m.payload), feat::OFFERED);
        self.fe.send(req::SET_FEATURES, &u64_payload(features), &[]);
        let m = self.fe.call(req::GET_PROTOCOL_FEATURES, &[], &[], 8);
        assert_eq!(read_u64(&m.payload), proto::OFFERED);
        self.fe
            .send(req::SET_PROTOCOL_FEATURES, &u64_payload(protocol), &[]);
        if protocol & proto::REPLY_ACK != 0 {
            self.fe.ok(req::SET_OWNER, &[], &[]);
        } else {
            self.fe.send(req::SET_OWNER, &[], &[]);
            self.fe.sync();
        }
    }

    /// `negotiate` with VERSION_1 + PROTOCOL_FEATURES and every offered protocol feature.
    pub fn negotiate_all(&self) {
        self.negotiate(feat::VERSION_1 | feat::PROTOCOL_FEATURES, proto::OFFERED);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Make sure the server thread ends even if a test failed half-way.
        let _ = self.server.shutdown_handle().write(1);
    }
}

// ---------------------------------------------------------------------------------------
// Guest memory and a driver-side split ring.
// ---------------------------------------------------------------------------------------

/// Guest memory: one memfd region at guest address 0, mapped by the "front-end" at `UVA`.
pub const UVA: u64 = 0x7f00_0000_0000;
pub const MEM_SIZE: u64 = 0x10000;

/// Ring layout inside guest memory, each on its own 4 KiB page.
pub const DESC_GPA: u64 = 0x1000;
pub const AVAIL_GPA: u64 = 0x2000;
pub const USED_GPA: u64 = 0x3000;
pub const READ_BUF_GPA: u64 = 0x5000;
pub const WRITE_BUF_GPA: u64 = 0x8000;
pub const RING_SIZE: u16 = 8;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// The driver's view of guest memory, written with pwrite into the shared memfd.
#[derive(Debug)]
pub struct GuestMemory {
    pub file: File,
}

impl GuestMemory {
    pub fn new() -> Self {
        GuestMemory {
            file: memfd(MEM_SIZE),
        }
    }

    pub fn region() -> Region {
        Region {
            gpa: 0,
            size: MEM_SIZE,
            uva: UVA,
            offset: 0,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.file
            .write_all_at(data, gpa)
            .expect("write guest memory");
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.file
            .read_exact_at(&mut b, gpa)
            .expect("read guest memory");
        b
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.write(DESC_GPA + 16 * i as u64, &d);
    }

    /// Puts `head` in avail slot `slot` and publishes avail idx `idx`.
    pub fn offer(&self, slot: u16, head: u16, idx: u16) {
        self.write(
            AVAIL_GPA + 4 + 2 * (slot % RING_SIZE) as u64,
            &head.to_le_bytes(),
        );
        self.write(AVAIL_GPA + 2, &idx.to_le_bytes());
    }

    pub fn used_idx(&self) -> u16 {
        u16::from_le_bytes(self.read(USED_GPA + 2, 2).try_into().expect("2 bytes"))
    }

    /// (id, len) of used element `slot`.
    pub fn used_elem(&self, slot: u16) -> (u32, u32) {
        let b = self.read(USED_GPA + 4 + 8 * (slot % RING_SIZE) as u64, 8);
        (
            u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            u32::from_le_bytes(b[4..].try_into().expect("4 bytes")),
        )
    }
}

impl Default for GuestMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// A started ring on queue `q` of the harness: mem table, num, base, addr, call, kick,
/// enable.
#[derive(Debug)]
pub struct Ring {
    pub mem: GuestMemory,
    pub kick: EventFd,
    pub call: EventFd,
    pub err: EventFd,
}

impl Ring {
    /// Sets up queue `q` over fresh guest memory and enables it. Expects REPLY_ACK and
    /// PROTOCOL_FEATURES negotiated.
    pub fn start(h: &Harness, q: u32, addr_flags: u32, log_addr: u64) -> Ring {
        let ring = Ring::setup(h, q, addr_flags, log_addr);
        h.fe.ok(req::SET_VRING_ENABLE, &vring_state(q, 1), &[]);
        ring
    }

    /// Sets up and starts (SET_VRING_KICK) queue `q` over fresh guest memory, without
    /// SET_VRING_ENABLE. Expects REPLY_ACK negotiated.
    pub fn setup(h: &Harness, q: u32, addr_flags: u32, log_addr: u64) -> Ring {
        Ring::setup_with(h, q, addr_flags, log_addr, GuestMemory::new())
    }

    /// `setup` over guest memory the test prepared (e.g. with requests already offered).
    pub fn setup_with(
        h: &Harness,
        q: u32,
        addr_flags: u32,
        log_addr: u64,
        mem: GuestMemory,
    ) -> Ring {
        h.fe.ok(
            req::SET_MEM_TABLE,
            &mem_table(&[GuestMemory::region()], false),
            &[mem.fd()],
        );
        let ring = Ring {
            mem,
            kick: eventfd(),
            call: eventfd(),
            err: eventfd(),
        };
        h.fe.ok(req::SET_VRING_NUM, &vring_state(q, RING_SIZE as u32), &[]);
        h.fe.ok(req::SET_VRING_BASE, &vring_state(q, 0), &[]);
        h.fe.ok(
            req::SET_VRING_ADDR,
            &vring_addr(
                q,
                addr_flags,
                UVA + DESC_GPA,
                UVA + USED_GPA,
                UVA + AVAIL_GPA,
                log_addr,
            ),
            &[],
        );
        h.fe.ok(
            req::SET_VRING_CALL,
            &u64_payload(q as u64),
            &[ring.call.as_fd()],
        );
        h.fe.ok(
            req::SET_VRING_ERR,
            &u64_payload(q as u64),
            &[ring.err.as_fd()],
        );
        h.fe.ok(
            req::SET_VRING_KICK,
            &u64_payload(q as u64),
            &[ring.kick.as_fd()],
        );
        ring
    }

    /// The usual request: 16 readable bytes at READ_BUF_GPA, 512 writable at WRITE_BUF_GPA,
    /// descriptors 0 -> 1, offered in avail slot `n` as avail idx `n + 1`.
    pub fn offer_request(&self, n: u16) {
        self.mem.set_desc(0, READ_BUF_GPA, 16, DESC_F_NEXT, 1);
        self.mem.set_desc(1, WRITE_BUF_GPA, 512, DESC_F_WRITE, 0);
        self.mem.offer(n, 0, n + 1);
    }

    /// Kicks and waits until the back-end signals the call eventfd.
    pub fn kick_and_wait(&self) {
        self.kick.write(1).expect("kick");
        assert!(
            wait_readable(self.call.as_fd(), TIMEOUT),
            "no used-buffer notification within {TIMEOUT:?}"
        );
        let _ = self.call.read();
    }
}

/// Reads byte `page / 8` of a dirty log and tells whether `page`'s bit is set.
pub fn log_bit(log: &File, page: u64) -> bool {
    let mut b = [0u8; 1];
    log.read_exact_at(&mut b, page / 8).expect("read log");
    b[0] & (1 << (page % 8)) != 0
}
