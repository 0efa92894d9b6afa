//! The net kind (`launcher start net`): a tap served as a vhost-user-net device (virtio net,
//! device id 1). The launcher opens the tap in its own network namespace (the operator runs it
//! inside the tap's, e.g. with `ip netns exec`): one queue per queue pair, with IFF_TAP |
//! IFF_NO_PI | IFF_VNET_HDR (and IFF_MULTI_QUEUE for several pairs) and the 12-byte header.
//! The jailed device gets only those descriptors; it has no network of its own. The launcher
//! keeps reading the tap's own counters for `launcher ctl status` (frames the kernel dropped
//! while the device could not take them).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use clap::Args;
use nix::sys::stat::SFlag;
use vu_devices::net::tap::{open_tap, tap_stats, TapError};
use vu_devices::net::{format_mac, parse_mac, NetConfig, NetDevice, MAX_QUEUE_PAIRS};

use super::{Companion, DeviceEnv, DeviceKind, FdSpec, KindError, Opened, Prepared};
use crate::cli::common::parse_queue_size;

/// The net kind.
#[derive(Debug)]
pub struct Net;

/// The tap's queues in the device process: one per queue pair, in pair order.
pub const FD_TAP: FdSpec = FdSpec {
    flag: "fd-tap",
    what: "a tap queue",
    types: &[SFlag::S_IFCHR],
    repeats: true,
};

/// The largest queue size a front-end may set by default (QEMU's virtio-net takes at most
/// 1024 for `rx_queue_size` and `tx_queue_size`).
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;

/// The options of `launcher start net` (after the common ones), the keys of a `kind = "net"`
/// device in a config file, and what the device process is given back.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(next_help_heading = "Network")]
pub struct NetArgs {
    /// The tap to serve: an existing tap interface in the launcher's network namespace
    /// (create it with `ip tuntap add dev NAME mode tap multi_queue vnet_hdr`; run the
    /// launcher in its namespace, e.g. `ip netns exec NS launcher start net ...`). The
    /// launcher attaches one queue per queue pair; the jailed device only gets those.
    #[arg(long, value_name = "NAME")]
    pub tap: String,

    /// Queue pairs (1 to 128): one receive and one transmit queue each, each with its own
    /// thread and tap queue. More than one needs a tap created with `multi_queue`; the
    /// guest uses min(vCPUs, queue pairs) (QEMU: -netdev vhost-user,queues=N and
    /// -device virtio-net-pci,mq=on).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUE_PAIRS)))]
    pub queue_pairs: u16,

    /// Largest size of each virtqueue the front-end may set, in descriptors: a power of two
    /// from 4 to 32768 (QEMU's rx_queue_size and tx_queue_size: 256 by default, at most 1024).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUE_SIZE, value_parser = parse_queue_size)]
    pub queue_size: u16,

    /// MTU offered to the guest (VIRTIO_NET_F_MTU), 68 to 65535; the tap's own MTU is the
    /// operator's to set to match. [default: 1500]
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u16).range(68..))]
    pub mtu: Option<u16>,

    /// MAC address offered in the config space (VIRTIO_NET_F_MAC), aa:bb:cc:dd:ee:ff, unicast.
    /// QEMU gives the guest the MAC of its own -device option instead.
    #[arg(long, value_name = "MAC", value_parser = parse_mac_arg)]
    pub mac: Option<[u8; 6]>,
}

/// A unicast MAC address.
fn parse_mac_arg(s: &str) -> Result<[u8; 6], String> {
    let mac = parse_mac(s).map_err(|e| e.to_string())?;
    if mac == [0; 6] || mac[0] & 1 != 0 {
        return Err(format!(
            "{} is not a unicast address (the first byte must be even, not all zero)",
            format_mac(&mac)
        ));
    }
    Ok(mac)
}

impl DeviceKind for Net {
    type Options = NetArgs;
    const NAME: &'static str = "net";
    const ABOUT: &'static str = "Serve a tap as a vhost-user-net device";
    const LONG_ABOUT: &'static str = "Serve a tap as a vhost-user-net device (virtio net, \
        device id 1).\n\n\
        Opens the tap in the launcher's network namespace (one queue per queue pair, with the \
        virtio-net header), binds the socket and starts one jailed device process that moves \
        frames between the guest's queues and the tap queues; it gets the tap's descriptors \
        and nothing else. A missing tap, or one without multi_queue for several pairs, fails \
        here. Offloads (checksum, TSO, UFO) follow what the guest negotiates. Logs \
        \"listening on SOCKET\" once the device is ready. A device that dies is started again \
        on the same socket and tap queues (see --max-crashes); frames that arrive meanwhile \
        wait in the tap or are dropped there (counted: `launcher ctl status` shows the tap's \
        counters). QEMU: -netdev vhost-user,id=n0,chardev=ID,queues=N \
        -device virtio-net-pci,netdev=n0,mq=on.";
    const EXAMPLE: &'static str = "Examples:\n  \
        ip tuntap add dev tap0 mode tap multi_queue vnet_hdr && ip link set tap0 up\n  \
        launcher start net --socket /run/vm0/net0.sock --tap tap0\n  \
        ip netns exec vm0 launcher start net --socket /run/vm0/net0.sock --tap tap0 --queue-pairs 2";
    const FDS: &'static [FdSpec] = &[FD_TAP];
    const TYPE: &'static str = "net";

    fn open(opts: &NetArgs, _device: &str) -> Result<Opened, KindError> {
        let taps = open_tap(&opts.tap, opts.queue_pairs).map_err(|source| NetSetupError::Tap {
            tap: opts.tap.clone(),
            source,
        })?;
        // Built once here on duplicates, so that what the device would refuse fails
        // `launcher start`.
        let dups = taps
            .iter()
            .map(File::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| NetSetupError::Dup {
                tap: opts.tap.clone(),
                source,
            })?;
        NetDevice::new(config(opts, dups)).map_err(|source| NetSetupError::Device {
            tap: opts.tap.clone(),
            source,
        })?;
        tracing::info!(
            tap = %opts.tap,
            queue_pairs = opts.queue_pairs,
            queue_size = opts.queue_size,
            mtu = opts.mtu,
            mac = opts.mac.as_ref().map(format_mac),
            "tap opened"
        );
        Ok(Opened {
            fds: taps.into_iter().map(OwnedFd::from).collect(),
            describe: vec![
                ("tap", opts.tap.clone()),
                ("queue_pairs", opts.queue_pairs.to_string()),
            ],
            companion: Some(Box::new(TapCounters {
                tap: opts.tap.clone(),
            })),
        })
    }

    fn build(opts: &NetArgs, fds: Vec<OwnedFd>, _env: &DeviceEnv) -> Result<Prepared, KindError> {
        let taps: Vec<File> = fds.into_iter().map(File::from).collect();
        let device = NetDevice::new(config(opts, taps))?;
        Ok(Prepared {
            device,
            flush: Box::new(|| Ok(())),
            poll_us: 0,
        })
    }
}

fn config(opts: &NetArgs, taps: Vec<File>) -> NetConfig {
    NetConfig {
        taps,
        queue_pairs: opts.queue_pairs,
        queue_size: opts.queue_size,
        mtu: opts.mtu,
        mac: opts.mac,
    }
}

/// Why a tap cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    /// Opening the tap's queues failed (the cause says what to do).
    #[error("cannot serve tap {tap:?}")]
    Tap {
        /// The tap.
        tap: String,
        /// The cause.
        #[source]
        source: TapError,
    },
    /// A tap queue could not be duplicated for the check.
    #[error("cannot duplicate the queues of tap {tap:?}")]
    Dup {
        /// The tap.
        tap: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The device refused the configuration.
    #[error("cannot serve tap {tap:?}")]
    Device {
        /// The tap.
        tap: String,
        /// The cause.
        #[source]
        source: vu_devices::net::NetError,
    },
}

/// The parent's side of a net device: the tap's own counters, read in the launcher's network
/// namespace (the device has none).
#[derive(Debug)]
struct TapCounters {
    tap: String,
}

impl Companion for TapCounters {
    fn before_spawn(&mut self) -> io::Result<Vec<OwnedFd>> {
        Ok(Vec::new())
    }

    fn status_fields(&self) -> Vec<(String, String)> {
        match tap_stats(&self.tap) {
            Ok(s) => [
                ("tap_frames_to_device", s.tx_packets),
                ("tap_bytes_to_device", s.tx_bytes),
                ("tap_dropped_to_device", s.tx_dropped),
                ("tap_frames_from_device", s.rx_packets),
                ("tap_bytes_from_device", s.rx_bytes),
                ("tap_dropped_from_device", s.rx_dropped),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            Err(e) => vec![("tap_counters".to_string(), e.to_string())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        assert_eq!(
            parse_mac_arg("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "zz:54:00:12:34:56",
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
        ] {
            assert!(parse_mac_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_tap_is_refused_with_the_command_to_create_it() {
        let opts = NetArgs {
            tap: "vu-no-such-tap".into(),
            queue_pairs: 2,
            queue_size: DEFAULT_QUEUE_SIZE,
            mtu: None,
            mac: None,
        };
        let Err(e) = Net::open(&opts, "net0") else {
            panic!("opened a tap that does not exist");
        };
        let text = format!(
            "{e}: {}",
            e.source().map(|s| s.to_string()).unwrap_or_default()
        );
        // Without /dev/net/tun or permission the cause differs; the tap is named either way.
        assert!(text.contains("vu-no-such-tap"), "{text}");
    }
}
