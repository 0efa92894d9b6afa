//! virtio-net (virtio 1.2, section 5.1) over a tap, one tap queue per queue pair.
//!
//! `tap.rs` opens the tap in the parent (before the jail); the device gets only the
//! descriptors. `config.rs` holds the feature bits, config space and offload mapping,
//! `backend.rs` the descriptors (a tap queue, or a socket standing in for one), `rx.rs` and
//! `tx.rs` the two queue handlers of a pair, `stats.rs` the counters. Queue 2i receives
//! (tap to guest) and queue 2i+1 transmits for pair i; each has its own worker thread. The
//! front-end keeps the control queue (QEMU's `-netdev vhost-user` does).

mod backend;
mod config;
mod error;
mod metrics;
mod rx;
mod stats;
pub mod tap;
mod tun;
mod tx;
mod uring;

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vu_core::{DeviceError, QueueHandler, VhostUserDevice};

pub use error::NetError;
pub use stats::NetStats;

use backend::{Kind, TapFd};
use config::{
    config_bytes, device_features, guest_gso, has, hdr_len, offload_names, tap_offloads,
    CONFIG_SIZE, DEFAULT_MTU, ETH_VLAN_HLEN, HDR_LEN, MAX_FRAME,
};
use rx::{RxHandler, RxMode};
use stats::Counters;
use tx::TxHandler;

/// Most queue pairs: vhost-user addresses 256 vrings.
pub const MAX_QUEUE_PAIRS: u16 = 128;

/// What to serve and how.
#[derive(Debug)]
pub struct NetConfig {
    /// One descriptor per queue pair: a tap queue opened with IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR (and IFF_MULTI_QUEUE for more than one pair), as [`tap::open_tap`] gives
    /// them; or a SOCK_SEQPACKET/SOCK_DGRAM socket that carries one frame with its virtio-net
    /// header per message (tests, benchmarks: no offloads are set on it).
    pub taps: Vec<File>,
    /// Queue pairs (1 to 128); the device has twice as many queues.
    pub queue_pairs: u16,
    /// Largest queue size (power of two, 4 to 32768).
    pub queue_size: u16,
    /// MTU offered in the config space (VIRTIO_NET_F_MTU); 1500 if unset.
    pub mtu: Option<u16>,
    /// MAC address offered in the config space (VIRTIO_NET_F_MAC); none if unset (QEMU
    /// supplies the guest's MAC itself).
    pub mac: Option<[u8; 6]>,
}

/// Negotiated state, what a snapshot keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NetState {
    queue_pairs: u16,
    features: u64,
}

#[derive(Debug)]
struct Negotiated {
    features: u64,
    /// Offloads set on the tap (TUN_F_*).
    offloads: u32,
    /// Header length set on the tap.
    hdr_len: usize,
}

/// A virtio-net device.
#[derive(Debug)]
pub struct NetDevice {
    taps: Vec<Arc<TapFd>>,
    counters: Vec<Arc<Counters>>,
    queue_pairs: u16,
    queue_size: u16,
    mtu: u16,
    mac: Option<[u8; 6]>,
    state: Mutex<Negotiated>,
}

fn check_config(cfg: &NetConfig) -> Result<(), NetError> {
    if cfg.queue_pairs == 0 || cfg.queue_pairs > MAX_QUEUE_PAIRS {
        return Err(NetError::BadQueuePairs(cfg.queue_pairs));
    }
    if cfg.taps.len() != usize::from(cfg.queue_pairs) {
        return Err(NetError::TapCount {
            taps: cfg.taps.len(),
            queue_pairs: cfg.queue_pairs,
        });
    }
    let qs = cfg.queue_size;
    if !qs.is_power_of_two() || !(4..=32768).contains(&qs) {
        return Err(NetError::BadQueueSize(qs));
    }
    if let Some(mtu) = cfg.mtu {
        if mtu < 68 {
            return Err(NetError::BadMtu(mtu));
        }
    }
    if let Some(mac) = cfg.mac {
        if mac == [0; 6] || mac[0] & 1 != 0 {
            return Err(NetError::BadMac(format_mac(&mac)));
        }
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff` (six hexadecimal bytes separated by colons); `NetDevice::new`
/// refuses the all-zero address and multicast ones.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::BadMac(s.to_string());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl NetDevice {
    /// Checks the configuration and the descriptors, makes them non-blocking, and sets the
    /// taps to the 12-byte header and no offloads until a driver negotiates features.
    pub fn new(cfg: NetConfig) -> Result<Arc<Self>, NetError> {
        check_config(&cfg)?;
        let mut taps = Vec::with_capacity(cfg.taps.len());
        for (pair, file) in cfg.taps.into_iter().enumerate() {
            let t = TapFd::probe(file, pair)?;
            if cfg.queue_pairs > 1 && t.kind() == (Kind::Tap { multi_queue: false }) {
                return Err(NetError::NotMultiQueue(cfg.queue_pairs));
            }
            taps.push(Arc::new(t));
        }
        if taps[0].kind() != Kind::Socket {
            let fd = taps[0].file().as_fd();
            tun::set_vnet_hdr_sz(fd, HDR_LEN).map_err(|e| NetError::Probe(0, e))?;
            tun::set_offload(fd, 0).map_err(|e| NetError::Probe(0, e))?;
        }
        let counters = (0..cfg.queue_pairs)
            .map(|_| Arc::new(Counters::default()))
            .collect();
        Ok(Arc::new(NetDevice {
            taps,
            counters,
            queue_pairs: cfg.queue_pairs,
            queue_size: cfg.queue_size,
            mtu: cfg.mtu.unwrap_or(DEFAULT_MTU),
            mac: cfg.mac,
            state: Mutex::new(Negotiated {
                features: 0,
                offloads: 0,
                hdr_len: HDR_LEN,
            }),
        }))
    }

    /// Counters since the device was built, summed over queue pairs.
    pub fn stats(&self) -> NetStats {
        let mut s = NetStats::default();
        for c in &self.counters {
            c.add_to(&mut s);
        }
        s
    }

    /// Counters of one queue pair.
    pub fn pair_stats(&self, pair: usize) -> Option<NetStats> {
        self.counters.get(pair).map(|c| {
            let mut s = NetStats::default();
            c.add_to(&mut s);
            s
        })
    }

    /// Offloads currently set on the tap (TUN_F_* bits).
    pub fn tap_offloads(&self) -> u32 {
        self.lock().offloads
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Negotiated> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the tap follow `features`: header length and offloads.
    fn apply(&self, features: u64) -> Result<(), DeviceError> {
        self.set_tap(features, hdr_len(features), tap_offloads(features))
    }

    /// Sets the tap's header length and offloads (device-wide, so through the first
    /// queue's descriptor). If the offloads cannot be set, none are (the kernel then
    /// segments and checksums everything itself) and that is logged.
    fn set_tap(&self, features: u64, len: usize, offloads: u32) -> Result<(), DeviceError> {
        let mut st = self.lock();
        st.features = features;
        let tap = &self.taps[0];
        if tap.kind() == Kind::Socket {
            st.hdr_len = len;
            return Ok(());
        }
        let fd = tap.file().as_fd();
        if len != st.hdr_len {
            tun::set_vnet_hdr_sz(fd, len)?;
            st.hdr_len = len;
        }
        if offloads != st.offloads {
            match tun::set_offload(fd, offloads) {
                Ok(()) => st.offloads = offloads,
                Err(e) => {
                    tracing::warn!(offloads = %offload_names(offloads), error = %e, "cannot set the tap's offloads; using none");
                    tun::set_offload(fd, 0)?;
                    st.offloads = 0;
                }
            }
        }
        Ok(())
    }

    fn rx_mode(&self, features: u64, hdr_len: usize) -> RxMode {
        let mergeable = has(features, VIRTIO_NET_F_MRG_RXBUF);
        let frame = if guest_gso(features) {
            MAX_FRAME
        } else {
            usize::from(self.mtu) + ETH_VLAN_HLEN
        };
        RxMode {
            hdr_len,
            mergeable,
            want: hdr_len + frame,
        }
    }
}

impl VhostUserDevice for NetDevice {
    fn name(&self) -> &str {
        "net"
    }

    fn num_queues(&self) -> usize {
        2 * usize::from(self.queue_pairs)
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn device_features(&self) -> u64 {
        device_features(self.mac.is_some())
    }

    fn set_features(&self, features: u64) -> Result<(), DeviceError> {
        self.apply(features)
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    /// QEMU's multi-queue vhost-user-net runs one vhost device per queue pair on the one
    /// connection: SET_MEM_TABLE goes out once, but (before QEMU 9) ADD_MEM_REG goes out for
    /// each pair, the same regions every time, and the second pair's start fails on the
    /// duplicates. Without CONFIGURE_MEM_SLOTS every QEMU sends the table once.
    fn withheld_protocol_features(&self) -> u64 {
        vu_core::message::protocol::CONFIGURE_MEM_SLOTS
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let cfg = config_bytes(self.mac.unwrap_or_default(), self.queue_pairs, self.mtu);
        if let Some(src) = offset
            .checked_add(buf.len())
            .and_then(|end| cfg.get(offset..end))
        {
            buf.copy_from_slice(src);
        }
    }

    fn write_config(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        Err(DeviceError::InvalidArgument(format!(
            "config bytes {offset}+{} are read-only",
            data.len()
        )))
    }

    fn start_queue(&self, index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        let pair = index / 2;
        let (Some(tap), Some(counters)) = (self.taps.get(pair), self.counters.get(pair)) else {
            return Err(DeviceError::InvalidArgument(format!("queue {index}")));
        };
        let (features, hdr_len) = {
            let st = self.lock();
            (st.features, st.hdr_len)
        };
        Ok(if index.is_multiple_of(2) {
            let mode = self.rx_mode(features, hdr_len);
            Box::new(RxHandler::new(tap.clone(), counters.clone(), mode))
        } else {
            Box::new(TxHandler::new(tap.clone(), counters.clone(), hdr_len))
        })
    }

    fn reset(&self) {
        if let Err(e) = self.set_tap(0, HDR_LEN, 0) {
            tracing::warn!(error = %e, "cannot reset the tap's header size and offloads");
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        let state = NetState {
            queue_pairs: self.queue_pairs,
            features: self.lock().features,
        };
        postcard::to_allocvec(&state).map_err(|e| DeviceError::Other(e.to_string()))
    }

    fn restore(&self, data: &[u8]) -> Result<(), DeviceError> {
        let state: NetState = postcard::from_bytes(data)
            .map_err(|e| DeviceError::Restore(format!("net state does not decode: {e}")))?;
        if state.queue_pairs != self.queue_pairs {
            return Err(DeviceError::Restore(format!(
                "the snapshot's device has {} queue pairs, this one {}",
                state.queue_pairs, self.queue_pairs
            )));
        }
        self.apply(state.features)
    }

    fn metrics(&self) -> Vec<vu_core::Metric> {
        metrics::metrics(&self.stats(), self.queue_pairs, self.mtu, self.mac.as_ref())
    }

    fn status_fields(&self) -> Vec<(String, String)> {
        let (offloads, hdr) = {
            let st = self.lock();
            (st.offloads, st.hdr_len)
        };
        let mut f = vec![
            ("queue_pairs".to_string(), self.queue_pairs.to_string()),
            ("mtu".to_string(), self.mtu.to_string()),
            (
                "mac".to_string(),
                self.mac.as_ref().map_or("none".to_string(), format_mac),
            ),
            ("offloads".to_string(), offload_names(offloads)),
            ("header_bytes".to_string(), hdr.to_string()),
        ];
        for (k, v) in self.stats().fields() {
            f.push((k.to_string(), v.to_string()));
        }
        f
    }
}

#[cfg(test)]
mod tests;
