//! A test guest for the vsock device: plays the guest's virtio-vsock driver on the core's
//! real handler (RX buffers posted and refilled, TX packets placed and kicked), plus the
//! guest side of a stream's credit, so tests can script connections packet by packet.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vu_devices::vsock::packet::{op, ty, Header, HEADER_LEN, HOST_CID};
use vu_devices::vsock::{VsockConfig, VsockDevice};

use super::Frontend;

/// Ring size the test guest uses.
pub const QSIZE: u16 = 256;
/// Payload room of each receive buffer (the Linux driver's 4 KiB).
pub const RX_PAYLOAD: u32 = 4096;
/// Receive buffers kept posted.
pub const RX_POSTED: usize = 128;
/// Guest memory per receive head.
const RX_STRIDE: u64 = 44 + 32768;

/// A packet the guest received.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub h: Header,
    pub data: Vec<u8>,
}

/// The test guest.
pub struct Guest {
    pub fe: Frontend,
    pub dev: Arc<VsockDevice>,
    pub cid: u64,
    rx_addr: HashMap<u16, u64>,
    rx_size: u32,
    tx_next: u64,
    tx_outstanding: usize,
    /// Whether consumed receive buffers are posted again.
    pub refill: bool,
    pub inbox: VecDeque<Pkt>,
    /// Descriptors per TX packet: 1 (header and payload together) or 2.
    pub tx_split: bool,
}

impl Guest {
    /// A guest driving `dev` with `queues` rings (2 as QEMU, 3 as crosvm), RX buffers posted.
    pub fn new(dev: Arc<VsockDevice>, queues: usize) -> Self {
        let cid = dev.guest_cid();
        let fe = Frontend::new(dev.clone(), queues, QSIZE);
        let mut g = Guest {
            fe,
            dev,
            cid,
            rx_addr: HashMap::new(),
            rx_size: HEADER_LEN as u32 + RX_PAYLOAD,
            tx_next: 0,
            tx_outstanding: 0,
            refill: true,
            inbox: VecDeque::new(),
            tx_split: true,
        };
        g.tx_next = g.fe.buffer_area(1).0;
        g.post_rx(RX_POSTED);
        g
    }

    /// Posts `n` receive buffers of `rx_size` bytes and kicks.
    pub fn post_rx(&mut self, n: usize) {
        let (base, _) = self.fe.buffer_area(0);
        for _ in 0..n {
            // Each head's buffer lives in its own slot.
            let head = self.fe.next_head(0);
            let addr = base + u64::from(head) * RX_STRIDE;
            let sub = self.fe.submit_fixed(0, &[(addr, self.rx_size, true)]);
            assert_eq!(sub.head, head);
            self.rx_addr.insert(head, addr);
        }
        self.fe.kick(0);
    }

    /// Receive buffers from now on are `payload` bytes past the header.
    pub fn set_rx_payload(&mut self, payload: u32) {
        assert!(u64::from(HEADER_LEN as u32 + payload) <= RX_STRIDE);
        self.rx_size = HEADER_LEN as u32 + payload;
    }

    /// Takes what the device wrote into receive buffers; posts them again if `refill`.
    pub fn poll(&mut self) -> usize {
        let used = self.fe.used_now(0);
        let n = used.len();
        for (id, len) in used {
            let head = id as u16;
            let addr = self.rx_addr.remove(&head).expect("known rx head");
            let bytes = self.fe.read(addr, len as usize);
            if (len as usize) < HEADER_LEN {
                self.inbox.push_back(Pkt {
                    h: Header::default(),
                    data: bytes,
                });
                continue;
            }
            let h = Header::decode(&bytes).expect("header");
            let data = bytes[HEADER_LEN..].to_vec();
            assert_eq!(h.len as usize, data.len(), "used length matches the header");
            self.inbox.push_back(Pkt { h, data });
        }
        if self.refill && n > 0 {
            self.post_rx(n);
        }
        n
    }

    /// The first received packet for which `pred` holds (others stay in the inbox), within
    /// `timeout`.
    pub fn recv_where(&mut self, timeout: Duration, pred: impl Fn(&Pkt) -> bool) -> Option<Pkt> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.inbox.iter().position(&pred) {
                return self.inbox.remove(i);
            }
            if self.poll() == 0 {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// The next packet, within 10 s (panics otherwise).
    pub fn recv(&mut self) -> Pkt {
        self.recv_where(Duration::from_secs(10), |_| true)
            .expect("a packet from the device within 10 s")
    }

    /// The next packet between `local` (guest port) and `peer` port, within 10 s.
    pub fn recv_for(&mut self, local: u32, peer: u32) -> Pkt {
        self.recv_where(Duration::from_secs(10), |p| {
            p.h.dst_port == local && p.h.src_port == peer
        })
        .unwrap_or_else(|| panic!("a packet for {local}<-{peer} within 10 s"))
    }

    /// Places TX packets (header bytes as given, then payload) and kicks; does not wait.
    pub fn submit_raw(&mut self, pkts: &[(Vec<u8>, Vec<u8>)]) {
        let (base, size) = self.fe.buffer_area(1);
        for (head, payload) in pkts {
            let total = (head.len() + payload.len()) as u64;
            if self.tx_next + total + 16 > base + size {
                // Start over at the beginning once what is placed there was used.
                self.fe.kick(1);
                self.wait_tx();
                self.tx_next = base;
            }
            let a = self.tx_next;
            self.fe.write(a, head);
            self.fe.write(a + head.len() as u64, payload);
            self.tx_next = (a + total + 16).next_multiple_of(16);
            if self.tx_split && !payload.is_empty() {
                self.fe.submit_fixed(
                    1,
                    &[
                        (a, head.len() as u32, false),
                        (a + head.len() as u64, payload.len() as u32, false),
                    ],
                );
            } else {
                self.fe.submit_fixed(1, &[(a, total as u32, false)]);
            }
            self.tx_outstanding += 1;
        }
        self.fe.kick(1);
    }

    /// TX packets the device has finished with since the last look.
    pub fn tx_done(&mut self) -> usize {
        let n = self.fe.used_now(1).len();
        self.tx_outstanding -= n;
        n
    }

    /// Waits until every TX packet placed so far is used (10 s).
    pub fn wait_tx(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.tx_outstanding > 0 {
            if self.tx_done() == 0 {
                assert!(Instant::now() < deadline, "TX packets not used within 10 s");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Sends packets and waits until the device took them.
    pub fn send(&mut self, pkts: &[(Header, &[u8])]) {
        let raw: Vec<(Vec<u8>, Vec<u8>)> = pkts
            .iter()
            .map(|(h, d)| (h.encode().to_vec(), d.to_vec()))
            .collect();
        self.submit_raw(&raw);
        self.wait_tx();
    }

    /// Sends one packet and waits.
    pub fn send1(&mut self, h: Header, data: &[u8]) {
        self.send(&[(h, data)]);
    }

    /// A header from this guest.
    pub fn header(&self, dst_cid: u64, src_port: u32, dst_port: u32, op_code: u16) -> Header {
        Header {
            src_cid: self.cid,
            dst_cid,
            src_port,
            dst_port,
            len: 0,
            ty: ty::STREAM,
            op: op_code,
            flags: 0,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
        }
    }
}

/// The guest side of one stream: addresses and both credits.
#[derive(Debug, Clone)]
pub struct Stream {
    pub port: u32,
    pub peer_cid: u64,
    pub peer_port: u32,
    pub buf_alloc: u32,
    /// Bytes the guest consumed (its fwd_cnt).
    pub fwd_cnt: u32,
    /// fwd_cnt as last told to the peer.
    pub fwd_told: u32,
    pub tx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
}

impl Stream {
    pub fn new(port: u32, peer_cid: u64, peer_port: u32, buf_alloc: u32) -> Self {
        Stream {
            port,
            peer_cid,
            peer_port,
            buf_alloc,
            fwd_cnt: 0,
            fwd_told: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// A header for this stream with the guest's credit.
    pub fn header(&mut self, g: &Guest, op_code: u16) -> Header {
        let mut h = g.header(self.peer_cid, self.port, self.peer_port, op_code);
        h.buf_alloc = self.buf_alloc;
        h.fwd_cnt = self.fwd_cnt;
        self.fwd_told = self.fwd_cnt;
        h
    }

    /// Takes the peer's credit from a packet it sent.
    pub fn absorb(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the guest may still send.
    pub fn peer_free(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Whether this packet belongs to the stream.
    pub fn owns(&self, p: &Pkt) -> bool {
        p.h.dst_port == self.port && p.h.src_port == self.peer_port && p.h.src_cid == self.peer_cid
    }

    /// Sends `data` as RW packets within the peer's credit, waiting for credit updates
    /// (any packet of the stream that arrives meanwhile is handed to `other`).
    pub fn write_all(&mut self, g: &mut Guest, data: &[u8], mut other: impl FnMut(&mut Self, Pkt)) {
        let mut off = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while off < data.len() {
            let free = self.peer_free() as usize;
            if free == 0 {
                let me = self.clone();
                let p = g
                    .recv_where(Duration::from_millis(50), |p| me.owns(p))
                    .inspect(|p| self.absorb(&p.h));
                if let Some(p) = p {
                    if p.h.op != op::CREDIT_UPDATE {
                        other(self, p);
                    }
                }
                assert!(Instant::now() < deadline, "no credit from the peer in 20 s");
                continue;
            }
            let n = free.min(data.len() - off).min(16 * 1024);
            let mut h = self.header(g, op::RW);
            h.len = n as u32;
            g.send1(h, &data[off..off + n]);
            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
            off += n;
        }
    }

    /// Receives `want` bytes of RW data, telling the peer about consumed buffer as a
    /// driver does. Other packets of the stream go to `other`.
    pub fn read_exact(
        &mut self,
        g: &mut Guest,
        want: usize,
        mut other: impl FnMut(Pkt),
    ) -> Vec<u8> {
        let mut got = Vec::with_capacity(want);
        while got.len() < want {
            let me = self.clone();
            let p = g
                .recv_where(Duration::from_secs(20), |p| me.owns(p))
                .expect("stream data within 20 s");
            self.absorb(&p.h);
            if p.h.op == op::RW {
                got.extend_from_slice(&p.data);
                self.fwd_cnt = self.fwd_cnt.wrapping_add(p.data.len() as u32);
                if self.fwd_cnt.wrapping_sub(self.fwd_told) >= self.buf_alloc / 2 {
                    let h = self.header(g, op::CREDIT_UPDATE);
                    g.send1(h, &[]);
                }
            } else if p.h.op == op::CREDIT_REQUEST {
                let h = self.header(g, op::CREDIT_UPDATE);
                g.send1(h, &[]);
            } else if p.h.op != op::CREDIT_UPDATE {
                other(p);
            }
        }
        got
    }
}

/// Recognisable bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Reads exactly `n` bytes from a host stream (with a generous timeout).
pub fn host_read(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("host read");
    v
}

/// Reads a `\n`-terminated line from a host stream, byte by byte; None once the stream
/// is closed (end of file, or reset because the device closed it with bytes unread).
pub fn host_line(s: &mut UnixStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(_) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into()),
            Ok(_) => line.push(b[0]),
            // Closed with our bytes unread.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("host line: {e}"),
        }
    }
}

/// Writes to a host stream.
pub fn host_write(s: &mut UnixStream, data: &[u8]) {
    s.write_all(data).expect("host write");
}

/// The host CID, for headers.
pub const HOST: u64 = HOST_CID;

/// For streams on which any packet but data and credit is a test failure.
pub fn no_packet(p: Pkt) {
    panic!("unexpected packet {:?}", p.h);
}

/// Hybrid vsock: a device for guest CID 3 whose host programs connect to its `--uds-path`
/// listener at `path` (in a temporary directory), driven by a test guest with two queues.
pub struct Hybrid {
    pub g: Guest,
    pub path: PathBuf,
    /// Holds `path`.
    pub dir: TempDir,
}

impl Hybrid {
    /// The device, configured as `VsockConfig::new(3)` but for the listener.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// The device, its configuration adjusted by `tweak` (the listener is set already).
    pub fn start_with(tweak: impl FnOnce(&mut VsockConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.sock");
        let mut cfg = VsockConfig::new(3);
        cfg.listener = Some(UnixListener::bind(&path).expect("bind"));
        tweak(&mut cfg);
        let dev = VsockDevice::new(cfg).expect("device");
        Hybrid {
            g: Guest::new(dev, 2),
            path,
            dir,
        }
    }

    /// A host program connected to guest port `port`, accepted by the guest with a 256 KiB
    /// receive buffer: the host's stream and the guest's.
    pub fn connect(&mut self, port: u32) -> (UnixStream, Stream) {
        let (host, st, _) = self.connect_with_request(port);
        (host, st)
    }

    /// As `connect`, also returning the header of the REQUEST the guest received.
    pub fn connect_with_request(&mut self, port: u32) -> (UnixStream, Stream, Header) {
        let mut host = UnixStream::connect(&self.path).expect("connect");
        host_write(&mut host, format!("CONNECT {port}\n").as_bytes());
        let req = self.g.recv();
        assert_eq!((req.h.op, req.h.dst_port), (op::REQUEST, port));
        let mut st = Stream::new(port, HOST, req.h.src_port, 256 * 1024);
        st.absorb(&req.h);
        let h = st.header(&self.g, op::RESPONSE);
        self.g.send1(h, &[]);
        assert_eq!(
            host_line(&mut host).expect("OK line"),
            format!("OK {}", req.h.src_port)
        );
        (host, st, req.h)
    }
}
