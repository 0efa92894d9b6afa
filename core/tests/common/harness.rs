//! The harness: a real `BackendServer` serving one end of a socketpair in a thread, the
//! test's `Frontend` on the other.

use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};

use vu_core::handler::{Handler, HandlerStatus};
use vu_core::{BackendServer, ConnectionEnd};

use super::{feat, proto, read_u64, req, u64_payload, Frontend, TestDevice, TIMEOUT};

/// A server and the front-end connected to it.
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
