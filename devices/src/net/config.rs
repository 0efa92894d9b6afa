//! virtio-net feature bits, the config space, the header length and the tap offloads that
//! follow from negotiated features (virtio 1.2, section 5.1).

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;

/// Size of the config space we expose: mac, status, max_virtqueue_pairs, mtu.
pub(crate) const CONFIG_SIZE: usize = 12;

/// Largest frame (after the header) a driver may send or be sent: 64 KiB plus an Ethernet
/// header, what virtio-net allows with TSO (a non-mergeable receive buffer holds this plus the
/// header).
pub(crate) const MAX_FRAME: usize = 65550;

/// The header with VERSION_1 or MRG_RXBUF: `virtio_net_hdr_v1` (num_buffers included).
pub(crate) const HDR_LEN: usize = 12;

/// The legacy header without MRG_RXBUF.
pub(crate) const LEGACY_HDR_LEN: usize = 10;

/// Offset of num_buffers in the 12-byte header.
pub(crate) const NUM_BUFFERS_OFFSET: usize = 10;

/// Ethernet header plus one VLAN tag: added to the MTU to size a frame without GSO.
pub(crate) const ETH_VLAN_HLEN: usize = 18;

/// The MTU a driver is told when none is configured.
pub(crate) const DEFAULT_MTU: u16 = 1500;

pub(crate) fn bit(b: u32) -> u64 {
    1u64 << b
}

pub(crate) fn has(features: u64, b: u32) -> bool {
    features & bit(b) != 0
}

/// Device feature bits. The core adds VERSION_1, EVENT_IDX, INDIRECT_DESC.
pub(crate) fn device_features(mac: bool) -> u64 {
    let mut f = [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MQ,
    ]
    .into_iter()
    .fold(0, |acc, b| acc | bit(b));
    if mac {
        f |= bit(VIRTIO_NET_F_MAC);
    }
    f
}

/// Header length for negotiated `features`: 12 bytes with VERSION_1 or MRG_RXBUF, else 10.
pub(crate) fn hdr_len(features: u64) -> usize {
    if has(features, VIRTIO_F_VERSION_1) || has(features, VIRTIO_NET_F_MRG_RXBUF) {
        HDR_LEN
    } else {
        LEGACY_HDR_LEN
    }
}

/// Whether the driver takes GSO frames (so the tap may hand over up to 64 KiB at once).
pub(crate) fn guest_gso(features: u64) -> bool {
    [
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
    ]
    .into_iter()
    .any(|b| has(features, b))
}

/// The tap offloads (TUNSETOFFLOAD) that let the kernel hand over what the driver accepts:
/// partial checksums with GUEST_CSUM and, on top of it, TSO4/TSO6 (with ECN) and UFO. The
/// kernel refuses TSO or UFO without CSUM and ECN without TSO, so neither is asked for.
pub(crate) fn tap_offloads(features: u64) -> u32 {
    if !has(features, VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if has(features, VIRTIO_NET_F_GUEST_TSO4) {
        f |= libc::TUN_F_TSO4;
    }
    if has(features, VIRTIO_NET_F_GUEST_TSO6) {
        f |= libc::TUN_F_TSO6;
    }
    if f & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 && has(features, VIRTIO_NET_F_GUEST_ECN) {
        f |= libc::TUN_F_TSO_ECN;
    }
    if has(features, VIRTIO_NET_F_GUEST_UFO) {
        f |= libc::TUN_F_UFO;
    }
    f
}

/// Offload flags as words, for status reports ("csum,tso4,tso6,ecn,ufo", or "none").
pub(crate) fn offload_names(offloads: u32) -> String {
    let names: Vec<&str> = [
        (libc::TUN_F_CSUM, "csum"),
        (libc::TUN_F_TSO4, "tso4"),
        (libc::TUN_F_TSO6, "tso6"),
        (libc::TUN_F_TSO_ECN, "ecn"),
        (libc::TUN_F_UFO, "ufo"),
    ]
    .into_iter()
    .filter(|(f, _)| offloads & f != 0)
    .map(|(_, n)| n)
    .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(",")
    }
}

/// The config space: mac, status (link up), max_virtqueue_pairs, mtu; little-endian.
pub(crate) fn config_bytes(mac: [u8; 6], queue_pairs: u16, mtu: u16) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&queue_pairs.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.to_le_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_guest_features() {
        let all = device_features(false) | bit(VIRTIO_F_VERSION_1);
        assert_eq!(
            tap_offloads(all),
            libc::TUN_F_CSUM
                | libc::TUN_F_TSO4
                | libc::TUN_F_TSO6
                | libc::TUN_F_TSO_ECN
                | libc::TUN_F_UFO
        );
        // Without GUEST_CSUM nothing else can be had.
        assert_eq!(tap_offloads(all & !bit(VIRTIO_NET_F_GUEST_CSUM)), 0);
        // ECN only with TSO.
        let no_tso = all & !bit(VIRTIO_NET_F_GUEST_TSO4) & !bit(VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(tap_offloads(no_tso), libc::TUN_F_CSUM | libc::TUN_F_UFO);
        // Host (driver-to-device) offloads do not change what the tap hands over.
        let host_only = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4);
        assert_eq!(tap_offloads(host_only), 0);
        assert_eq!(offload_names(tap_offloads(all)), "csum,tso4,tso6,ecn,ufo");
        assert_eq!(offload_names(0), "none");
    }

    #[test]
    fn header_length_and_gso() {
        assert_eq!(hdr_len(bit(VIRTIO_F_VERSION_1)), 12);
        assert_eq!(hdr_len(bit(VIRTIO_NET_F_MRG_RXBUF)), 12);
        assert_eq!(hdr_len(0), 10);
        assert!(guest_gso(bit(VIRTIO_NET_F_GUEST_TSO6)));
        assert!(!guest_gso(bit(VIRTIO_NET_F_HOST_TSO4)));
    }

    #[test]
    fn config_space_layout() {
        let c = config_bytes([2, 0, 0, 0, 0, 1], 4, 9000);
        assert_eq!(c, [2, 0, 0, 0, 0, 1, 1, 0, 4, 0, 0x28, 0x23]);
        let f = device_features(true);
        assert!(has(f, VIRTIO_NET_F_MAC) && has(f, VIRTIO_NET_F_MQ));
        assert!(!has(device_features(false), VIRTIO_NET_F_MAC));
        assert!(
            !has(f, VIRTIO_NET_F_CTRL_VQ),
            "the front-end keeps the control queue"
        );
    }
}
