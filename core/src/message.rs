//! vhost-user wire types: the message header, request codes, feature bits and payload layouts.
//!
//! Only types live here; framing is in `connection.rs` and dispatch in `backend_server.rs`.
//! All numbers are in the machine's native byte order, as the specification says.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Version bits of the header flags.
pub const VERSION: u32 = 0x1;
/// Mask for the version bits.
pub const VERSION_MASK: u32 = 0x3;
/// Set on every reply from the back-end.
pub const FLAG_REPLY: u32 = 1 << 2;
/// The front-end asks for an acknowledgement (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 1 << 3;
/// Flags a well-formed header may carry.
pub const FLAGS_KNOWN: u32 = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;

/// Largest payload we accept. The biggest legal message is GET/SET_CONFIG with a 256-byte
/// config space; anything beyond this bound is a broken or hostile peer.
pub const MAX_PAYLOAD: usize = 4096;
/// At most this many file descriptors ride on one message (SET_MEM_TABLE: one per region).
pub const MAX_FDS: usize = 8;
/// Regions in a SET_MEM_TABLE message.
pub const MAX_MEM_TABLE_REGIONS: usize = 8;
/// Size of a virtio config space we will read or write.
pub const MAX_CONFIG_SIZE: u32 = 256;
/// Largest split-ring size the virtio spec allows.
pub const MAX_QUEUE_SIZE: u32 = 32768;
/// Dirty-log page size.
pub const LOG_PAGE_SIZE: u64 = 0x1000;

/// Bits 0-7 of the u64 in SET_VRING_KICK/CALL/ERR hold the index.
pub const VRING_IDX_MASK: u64 = 0xff;
/// Bit 8 of the u64 in SET_VRING_KICK/CALL/ERR: no fd attached.
pub const VRING_NOFD_MASK: u64 = 0x100;
/// Bit 0 of the vring address flags: log writes to the used ring.
pub const VRING_F_LOG: u32 = 1 << 0;

/// Virtio and vhost feature bits handled by the core.
pub mod features {
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// VHOST_F_LOG_ALL.
    pub const LOG_ALL: u64 = 1 << 26;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_NOTIFY_ON_EMPTY (legacy, never offered).
    pub const NOTIFY_ON_EMPTY: u64 = 1 << 24;
}

/// vhost-user protocol feature bits.
pub mod protocol {
    /// VHOST_USER_PROTOCOL_F_MQ.
    pub const MQ: u64 = 1 << 0;
    /// VHOST_USER_PROTOCOL_F_LOG_SHMFD.
    pub const LOG_SHMFD: u64 = 1 << 1;
    /// VHOST_USER_PROTOCOL_F_RARP.
    pub const RARP: u64 = 1 << 2;
    /// VHOST_USER_PROTOCOL_F_REPLY_ACK.
    pub const REPLY_ACK: u64 = 1 << 3;
    /// VHOST_USER_PROTOCOL_F_MTU.
    pub const MTU: u64 = 1 << 4;
    /// VHOST_USER_PROTOCOL_F_BACKEND_REQ.
    pub const BACKEND_REQ: u64 = 1 << 5;
    /// VHOST_USER_PROTOCOL_F_CROSS_ENDIAN.
    pub const CROSS_ENDIAN: u64 = 1 << 6;
    /// VHOST_USER_PROTOCOL_F_CONFIG.
    pub const CONFIG: u64 = 1 << 9;
    /// VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD.
    pub const BACKEND_SEND_FD: u64 = 1 << 10;
    /// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD.
    pub const INFLIGHT_SHMFD: u64 = 1 << 12;
    /// VHOST_USER_PROTOCOL_F_RESET_DEVICE.
    pub const RESET_DEVICE: u64 = 1 << 13;
    /// VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS.
    pub const INBAND_NOTIFICATIONS: u64 = 1 << 14;
    /// VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS.
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
    /// VHOST_USER_PROTOCOL_F_STATUS.
    pub const STATUS: u64 = 1 << 16;
}

/// Front-end to back-end request codes. An unknown code is an error, never a transmute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum Request {
    GetFeatures = 1,
    SetFeatures = 2,
    SetOwner = 3,
    ResetOwner = 4,
    SetMemTable = 5,
    SetLogBase = 6,
    SetLogFd = 7,
    SetVringNum = 8,
    SetVringAddr = 9,
    SetVringBase = 10,
    GetVringBase = 11,
    SetVringKick = 12,
    SetVringCall = 13,
    SetVringErr = 14,
    GetProtocolFeatures = 15,
    SetProtocolFeatures = 16,
    GetQueueNum = 17,
    SetVringEnable = 18,
    SendRarp = 19,
    NetSetMtu = 20,
    SetBackendReqFd = 21,
    IotlbMsg = 22,
    SetVringEndian = 23,
    GetConfig = 24,
    SetConfig = 25,
    CreateCryptoSession = 26,
    CloseCryptoSession = 27,
    PostcopyAdvise = 28,
    PostcopyListen = 29,
    PostcopyEnd = 30,
    GetInflightFd = 31,
    SetInflightFd = 32,
    GpuSetSocket = 33,
    ResetDevice = 34,
    VringKick = 35,
    GetMaxMemSlots = 36,
    AddMemReg = 37,
    RemMemReg = 38,
    SetStatus = 39,
    GetStatus = 40,
    GetSharedObject = 41,
    SetDeviceStateFd = 42,
    CheckDeviceState = 43,
}

/// The request code is not one the specification defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown request code {0}")]
pub struct UnknownRequest(pub u32);

impl TryFrom<u32> for Request {
    type Error = UnknownRequest;

    fn try_from(v: u32) -> Result<Self, Self::Error> {
        use Request::*;
        const ALL: [Request; 43] = [
            GetFeatures,
            SetFeatures,
            SetOwner,
            ResetOwner,
            SetMemTable,
            SetLogBase,
            SetLogFd,
            SetVringNum,
            SetVringAddr,
            SetVringBase,
            GetVringBase,
            SetVringKick,
            SetVringCall,
            SetVringErr,
            GetProtocolFeatures,
            SetProtocolFeatures,
            GetQueueNum,
            SetVringEnable,
            SendRarp,
            NetSetMtu,
            SetBackendReqFd,
            IotlbMsg,
            SetVringEndian,
            GetConfig,
            SetConfig,
            CreateCryptoSession,
            CloseCryptoSession,
            PostcopyAdvise,
            PostcopyListen,
            PostcopyEnd,
            GetInflightFd,
            SetInflightFd,
            GpuSetSocket,
            ResetDevice,
            VringKick,
            GetMaxMemSlots,
            AddMemReg,
            RemMemReg,
            SetStatus,
            GetStatus,
            GetSharedObject,
            SetDeviceStateFd,
            CheckDeviceState,
        ];
        let idx = usize::try_from(v).ok().and_then(|v| v.checked_sub(1));
        idx.and_then(|i| ALL.get(i).copied())
            .ok_or(UnknownRequest(v))
    }
}

/// Back-end to front-end request codes (on the BACKEND_REQ channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BackendRequest {
    /// VHOST_USER_BACKEND_IOTLB_MSG.
    IotlbMsg = 1,
    /// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
    ConfigChangeMsg = 2,
    /// VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG.
    VringHostNotifierMsg = 3,
}

/// The 12-byte header in front of every message.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Header {
    /// Request code.
    pub request: u32,
    /// Version, reply and need_reply bits.
    pub flags: u32,
    /// Payload size in bytes.
    pub size: u32,
}

impl Header {
    /// Size of the header on the wire.
    pub const SIZE: usize = 12;

    /// A reply header for `request` with a payload of `size` bytes.
    pub fn reply(request: u32, size: usize) -> Self {
        Header {
            request,
            flags: VERSION | FLAG_REPLY,
            size: size as u32,
        }
    }

    /// Whether the version bits and flags are ones we understand.
    pub fn is_valid(&self) -> bool {
        self.flags & VERSION_MASK == VERSION
            && self.flags & !FLAGS_KNOWN == 0
            && self.size as usize <= MAX_PAYLOAD
    }

    /// Whether the sender asked for an acknowledgement.
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// A single u64 payload.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct U64 {
    /// The value.
    pub value: u64,
}

/// Vring state description: index + num.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VringState {
    /// Vring index.
    pub index: u32,
    /// A number whose meaning depends on the request.
    pub num: u32,
}

/// Vring address description.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VringAddr {
    /// Vring index.
    pub index: u32,
    /// VRING_F_LOG.
    pub flags: u32,
    /// Descriptor table, front-end user address.
    pub descriptor: u64,
    /// Used ring, front-end user address.
    pub used: u64,
    /// Available ring, front-end user address.
    pub available: u64,
    /// Guest physical address used for logging used-ring writes.
    pub log: u64,
}

impl VringAddr {
    /// Only known flag bits are set.
    pub fn is_valid(&self) -> bool {
        self.flags & !VRING_F_LOG == 0
    }
}

/// One memory region as described on the wire.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MemoryRegion {
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Front-end user (virtual) address.
    pub user_addr: u64,
    /// Offset into the file descriptor where the region starts.
    pub mmap_offset: u64,
}

impl MemoryRegion {
    /// Non-empty and no address computation overflows.
    pub fn is_valid(&self) -> bool {
        self.memory_size != 0
            && self.guest_phys_addr.checked_add(self.memory_size).is_some()
            && self.user_addr.checked_add(self.memory_size).is_some()
            && self.mmap_offset.checked_add(self.memory_size).is_some()
            && usize::try_from(self.memory_size).is_ok()
    }
}

/// Header of SET_MEM_TABLE; `num_regions` regions follow.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MemoryTableHeader {
    /// Number of regions that follow.
    pub num_regions: u32,
    /// Padding.
    pub padding: u32,
}

/// ADD_MEM_REG / REM_MEM_REG payload.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SingleMemoryRegion {
    /// Padding.
    pub padding: u64,
    /// The region.
    pub region: MemoryRegion,
}

/// SET_LOG_BASE payload.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct LogDescription {
    /// Size of the log area.
    pub mmap_size: u64,
    /// Offset of the log in the file descriptor.
    pub mmap_offset: u64,
}

/// Header of GET/SET_CONFIG; `size` bytes of config space follow.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ConfigHeader {
    /// Offset in the device config space.
    pub offset: u32,
    /// Number of bytes.
    pub size: u32,
    /// 0: writable fields; 1: live migration.
    pub flags: u32,
}

/// SET_CONFIG flag: the write comes from live migration.
pub const CONFIG_FLAG_MIGRATION: u32 = 1;

/// GET/SET_INFLIGHT_FD payload.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InflightDescription {
    /// Size of the shared area.
    pub mmap_size: u64,
    /// Offset of the area in the file descriptor.
    pub mmap_offset: u64,
    /// Number of virtqueues.
    pub num_queues: u16,
    /// Size of each virtqueue.
    pub queue_size: u16,
    /// Padding to 8 bytes, as QEMU sends it.
    pub padding: [u8; 4],
}

/// Size of the inflight description without trailing padding (some front-ends send this).
pub const INFLIGHT_DESCRIPTION_PACKED_SIZE: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_codes_round_trip() {
        for code in 1..=43u32 {
            let r = Request::try_from(code).expect("known code");
            assert_eq!(r as u32, code);
        }
        assert_eq!(Request::try_from(0), Err(UnknownRequest(0)));
        assert_eq!(Request::try_from(44), Err(UnknownRequest(44)));
        assert_eq!(Request::try_from(u32::MAX), Err(UnknownRequest(u32::MAX)));
    }

    #[test]
    fn layouts_match_the_spec() {
        assert_eq!(std::mem::size_of::<Header>(), 12);
        assert_eq!(std::mem::size_of::<VringState>(), 8);
        assert_eq!(std::mem::size_of::<VringAddr>(), 40);
        assert_eq!(std::mem::size_of::<MemoryRegion>(), 32);
        assert_eq!(std::mem::size_of::<SingleMemoryRegion>(), 40);
        assert_eq!(std::mem::size_of::<LogDescription>(), 16);
        assert_eq!(std::mem::size_of::<ConfigHeader>(), 12);
        assert_eq!(std::mem::size_of::<InflightDescription>(), 24);
    }

    #[test]
    fn header_validation() {
        let ok = Header {
            request: 1,
            flags: VERSION,
            size: 0,
        };
        assert!(ok.is_valid());
        assert!(!Header { flags: 0, ..ok }.is_valid());
        assert!(!Header {
            flags: VERSION | 0x100,
            ..ok
        }
        .is_valid());
        assert!(!Header {
            size: MAX_PAYLOAD as u32 + 1,
            ..ok
        }
        .is_valid());
        assert!(Header {
            flags: VERSION | FLAG_NEED_REPLY,
            ..ok
        }
        .need_reply());
    }

    #[test]
    fn region_validation() {
        let r = MemoryRegion {
            guest_phys_addr: 0,
            memory_size: 4096,
            user_addr: 0x1000,
            mmap_offset: 0,
        };
        assert!(r.is_valid());
        assert!(!MemoryRegion {
            memory_size: 0,
            ..r
        }
        .is_valid());
        assert!(!MemoryRegion {
            guest_phys_addr: u64::MAX,
            ..r
        }
        .is_valid());
        assert!(!MemoryRegion {
            user_addr: u64::MAX - 1,
            ..r
        }
        .is_valid());
        assert!(!MemoryRegion {
            mmap_offset: u64::MAX,
            ..r
        }
        .is_valid());
    }
}
