//! The frames `vu-bench net` sends: UDP/IPv4 in a 64-byte Ethernet frame (60 bytes before
//! the FCS a NIC adds) or a 1514-byte one (a 1500-byte MTU), and a 64 KiB TCP/IPv4 segment
//! with a TSO header (as a Linux guest hands one over: checksum left to finish, GSO TCPv4
//! with an MSS of 1446), each behind its 12-byte virtio-net header. The TSO frame is 65534
//! bytes: the kernel segments a GSO packet whose length reaches the device's gso_max_size
//! (65536, the Ethernet header included) in software, which a guest's TSO never asks for. The payload starts with
//! a sequence number the driver rewrites per frame, to match a frame that comes back.

/// virtio-net header length with VERSION_1 (num_buffers included).
pub const HDR_LEN: usize = 12;
/// VIRTIO_NET_HDR_F_NEEDS_CSUM.
const F_NEEDS_CSUM: u8 = 1;
/// VIRTIO_NET_HDR_GSO_TCPV4.
const GSO_TCPV4: u8 = 1;
/// The TSO frame's length: under the kernel's default gso_max_size of 65536.
pub const TSO_FRAME: usize = 65534;
/// The MSS of the TSO frame: segments of 1500 bytes, Ethernet header included. (A guest
/// with a 1500-byte MTU would use up to 1460 with this 20-byte TCP header; DPDK's tap PMD
/// refuses to segment when a segment with its Ethernet header exceeds the MTU, so both
/// servers get an MSS it takes.)
pub const TSO_MSS: u16 = 1446;

/// Which frames to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// 60 bytes (64 on the wire).
    Small,
    /// 1514 bytes (a 1500-byte MTU).
    Mtu,
    /// A 65534-byte TCP/IPv4 frame with a TSO header.
    Tso,
}

impl FrameKind {
    /// Parses `64`, `1500` or `64k`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "64" => Some(FrameKind::Small),
            "1500" => Some(FrameKind::Mtu),
            "64k" | "tso" => Some(FrameKind::Tso),
            _ => None,
        }
    }

    /// As `parse` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Small => "64",
            FrameKind::Mtu => "1500",
            FrameKind::Tso => "64k",
        }
    }

    /// The Ethernet frame's length (no FCS).
    pub fn frame_len(self) -> usize {
        match self {
            FrameKind::Small => 60,
            FrameKind::Mtu => 1514,
            FrameKind::Tso => TSO_FRAME,
        }
    }

    /// Where the payload (and its sequence number) starts in the frame.
    pub fn payload_offset(self) -> usize {
        match self {
            FrameKind::Small | FrameKind::Mtu => 14 + 20 + 8,
            FrameKind::Tso => 14 + 20 + 20,
        }
    }

    /// The virtio-net header and the frame, with sequence number 0.
    pub fn build(self) -> Vec<u8> {
        let len = self.frame_len();
        let mut f = vec![0u8; HDR_LEN + len];
        let (hdr, frame) = f.split_at_mut(HDR_LEN);
        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (len - 14) as u16;
        let proto = if self == FrameKind::Tso { 6 } else { 17 };
        let ip = &mut frame[14..34];
        ip.copy_from_slice(&[
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 10, 78, 0, 1, 10, 78, 0, 2,
        ]);
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        let sum = checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let l4_len = ip_len - 20;
        if self == FrameKind::Tso {
            let tcp = &mut frame[34..54];
            tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
            tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x18;
            tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
            // The pseudo-header sum, left for the offload to finish (as a sender with
            // NEEDS_CSUM does).
            let pseudo = fold(0x0a4e + 0x0001 + 0x0a4e + 0x0002 + 6 + u32::from(l4_len));
            tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
            hdr[0] = F_NEEDS_CSUM;
            hdr[1] = GSO_TCPV4;
            hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
            hdr[4..6].copy_from_slice(&TSO_MSS.to_le_bytes());
            hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
            hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        } else {
            let udp = &mut frame[34..42];
            udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            udp[2..4].copy_from_slice(&9u16.to_be_bytes());
            udp[4..6].copy_from_slice(&l4_len.to_be_bytes());
            // Checksum 0: none (UDP over IPv4).
        }
        for (i, b) in frame[self.payload_offset()..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(13) ^ (i >> 8) as u8;
        }
        f
    }
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn checksum(b: &[u8]) -> u16 {
    !fold(
        b.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        for k in [FrameKind::Small, FrameKind::Mtu, FrameKind::Tso] {
            let f = k.build();
            assert_eq!(f.len(), HDR_LEN + k.frame_len());
            let ip = &f[HDR_LEN + 14..HDR_LEN + 34];
            assert_eq!(checksum(ip), 0, "{k:?}: IP header checksum");
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            assert_eq!(total + 14, k.frame_len());
            assert_eq!(FrameKind::parse(k.as_str()), Some(k));
        }
        let tso = FrameKind::Tso.build();
        assert_eq!(&tso[..2], &[F_NEEDS_CSUM, GSO_TCPV4]);
        assert_eq!(tso.len(), 12 + TSO_FRAME);
        assert!(FrameKind::parse("9000").is_none());
    }
}
