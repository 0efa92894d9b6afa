//! What a message must be before its request is acted on: the negotiated feature it needs,
//! its payload size, its file descriptors (`Rule`, checked by `Handler::handle` for every
//! request), and the field values each request accepts (indexes, sizes, flags, ranges),
//! which the request's code calls before it changes anything.

use std::os::fd::OwnedFd;

use zerocopy::FromBytes;

use super::HandlerError;
use crate::connection::Message;
use crate::message::*;

/// What every message of one request must carry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    /// Protocol feature that must have been negotiated (0: none).
    protocol: u64,
    /// Virtio feature that must have been negotiated (0: none).
    virtio: u64,
    payload: Payload,
    fds: Fds,
}

/// Payload sizes a request accepts.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// No payload.
    Empty,
    /// Exactly this many bytes.
    Sized(usize),
    /// An inflight description: 24 bytes, or 20 without the trailing padding.
    Inflight,
    /// At least this many bytes; the request's code checks the rest (`mem_table`,
    /// `config_range`).
    Prefix(usize),
}

/// File descriptors a request accepts.
#[derive(Debug, Clone, Copy)]
enum Fds {
    /// Exactly this many.
    Exactly(usize),
    /// One, or none with VRING_NOFD_MASK set in the u64 payload (SET_VRING_KICK/CALL/ERR).
    VringFd,
    /// One per memory region (SET_MEM_TABLE: checked with the table, `mem_table`).
    PerRegion,
    /// At most one, ignored (REM_MEM_REG; the spec allows one for compatibility).
    Ignored,
}

const fn rule(protocol: u64, payload: Payload, fds: Fds) -> Rule {
    Rule {
        protocol,
        virtio: 0,
        payload,
        fds,
    }
}

const fn sized<T>() -> Payload {
    Payload::Sized(std::mem::size_of::<T>())
}

const NONE: Fds = Fds::Exactly(0);
const ONE: Fds = Fds::Exactly(1);

impl Rule {
    /// The rule of `request`; `None` for requests we do not implement.
    pub(super) fn of(request: Request) -> Option<Rule> {
        use Payload::*;
        use Request::*;
        let cms = protocol::CONFIGURE_MEM_SLOTS;
        Some(match request {
            GetFeatures | GetProtocolFeatures | SetOwner | ResetOwner => rule(0, Empty, NONE),
            SetFeatures | SetProtocolFeatures => rule(0, sized::<U64>(), NONE),
            SetMemTable => rule(0, Prefix(size_of::<MemoryTableHeader>()), Fds::PerRegion),
            GetMaxMemSlots => rule(cms, Empty, NONE),
            AddMemReg => rule(cms, sized::<SingleMemoryRegion>(), ONE),
            RemMemReg => rule(cms, sized::<SingleMemoryRegion>(), Fds::Ignored),
            GetQueueNum => rule(protocol::MQ, Empty, NONE),
            SetVringNum | SetVringBase | GetVringBase => rule(0, sized::<VringState>(), NONE),
            // PROTOCOL_FEATURES is checked by the request's code: QEMU sends it before
            // SET_FEATURES (see `Handler::set_vring_enable`).
            SetVringEnable => rule(0, sized::<VringState>(), NONE),
            SetVringAddr => rule(0, sized::<VringAddr>(), NONE),
            SetVringKick | SetVringCall | SetVringErr => rule(0, sized::<U64>(), Fds::VringFd),
            GetConfig | SetConfig => {
                rule(protocol::CONFIG, Prefix(size_of::<ConfigHeader>()), NONE)
            }
            SetBackendReqFd => rule(protocol::BACKEND_REQ, Empty, ONE),
            GetInflightFd => rule(protocol::INFLIGHT_SHMFD, Inflight, NONE),
            SetInflightFd => rule(protocol::INFLIGHT_SHMFD, Inflight, ONE),
            ResetDevice => rule(protocol::RESET_DEVICE, Empty, NONE),
            SetStatus => rule(protocol::STATUS, sized::<U64>(), NONE),
            GetStatus => rule(protocol::STATUS, Empty, NONE),
            SetLogBase => rule(protocol::LOG_SHMFD, sized::<LogDescription>(), ONE),
            SetLogFd => rule(0, Empty, ONE),
            VringKick | SendRarp | NetSetMtu | IotlbMsg | SetVringEndian | CreateCryptoSession
            | CloseCryptoSession | PostcopyAdvise | PostcopyListen | PostcopyEnd | GpuSetSocket
            | GetSharedObject | SetDeviceStateFd | CheckDeviceState => return None,
        })
    }

    /// Checks `msg` against the rule, given the negotiated protocol and virtio features.
    pub(super) fn check(
        &self,
        request: Request,
        msg: &Message,
        acked_protocol: u64,
        acked_features: u64,
    ) -> Result<(), HandlerError> {
        if acked_protocol & self.protocol != self.protocol
            || acked_features & self.virtio != self.virtio
        {
            return Err(HandlerError::NotNegotiated(request));
        }
        self.check_payload(request, &msg.payload)?;
        let got = msg.fds.len();
        let expected = match self.fds {
            Fds::Exactly(n) => n,
            Fds::VringFd => {
                let v: U64 = read(request, &msg.payload)?;
                let (_, nofd) = vring_fd(v.value)?;
                usize::from(!nofd)
            }
            Fds::PerRegion => return Ok(()),
            Fds::Ignored if got <= 1 => return Ok(()),
            Fds::Ignored => 0,
        };
        if got != expected {
            return Err(HandlerError::FdCount {
                request,
                got,
                expected,
            });
        }
        Ok(())
    }

    fn check_payload(&self, request: Request, payload: &[u8]) -> Result<(), HandlerError> {
        let got = payload.len();
        let (ok, expected) = match self.payload {
            Payload::Empty => (got == 0, "0".to_string()),
            Payload::Sized(n) => (got == n, n.to_string()),
            Payload::Inflight => (
                got == size_of::<InflightDescription>() || got == INFLIGHT_DESCRIPTION_PACKED_SIZE,
                "24 (or 20)".to_string(),
            ),
            Payload::Prefix(n) => (got >= n, format!("{n} or more")),
        };
        if ok {
            return Ok(());
        }
        Err(HandlerError::PayloadSize {
            request,
            got,
            expected,
        })
    }
}

/// Whether a request always carries an explicit reply body.
pub fn has_explicit_reply(r: Request) -> bool {
    matches!(
        r,
        Request::GetFeatures
            | Request::GetProtocolFeatures
            | Request::GetVringBase
            | Request::GetQueueNum
            | Request::GetConfig
            | Request::GetInflightFd
            | Request::GetMaxMemSlots
            | Request::GetStatus
            | Request::SetLogBase
    )
}

/// The payload as a `T` (its size was checked by the rule; a mismatch is still an error).
pub(super) fn read<T: FromBytes>(request: Request, payload: &[u8]) -> Result<T, HandlerError> {
    T::read_from_bytes(payload).map_err(|_| HandlerError::PayloadSize {
        request,
        got: payload.len(),
        expected: size_of::<T>().to_string(),
    })
}

/// The one file descriptor of a request whose rule asks for exactly one.
pub(super) fn one_fd(request: Request, fds: Vec<OwnedFd>) -> Result<OwnedFd, HandlerError> {
    let got = fds.len();
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next()) {
        (Some(fd), None) => Ok(fd),
        _ => Err(HandlerError::FdCount {
            request,
            got,
            expected: 1,
        }),
    }
}

/// An inflight description, 24 bytes or 20 (without the trailing padding).
pub(super) fn inflight_body(
    request: Request,
    p: &[u8],
) -> Result<InflightDescription, HandlerError> {
    if p.len() == size_of::<InflightDescription>() {
        return InflightDescription::read_from_bytes(p)
            .map_err(|_| HandlerError::Invalid("inflight".into()));
    }
    if p.len() == INFLIGHT_DESCRIPTION_PACKED_SIZE {
        let mut full = [0u8; 24];
        full[..20].copy_from_slice(p);
        return InflightDescription::read_from_bytes(&full[..])
            .map_err(|_| HandlerError::Invalid("inflight".into()));
    }
    Err(HandlerError::PayloadSize {
        request,
        got: p.len(),
        expected: "24 (or 20)".into(),
    })
}

/// An inflight area may cover at most the device's queues.
pub(super) fn inflight_queues(d: &InflightDescription, queues: usize) -> Result<(), HandlerError> {
    if d.num_queues as usize > queues {
        return Err(HandlerError::Invalid(format!(
            "{} inflight queues",
            d.num_queues
        )));
    }
    Ok(())
}

/// The regions of a SET_MEM_TABLE payload, one per file descriptor: exactly `num_regions`
/// regions, or room for 8 as QEMU always sends.
pub(super) fn mem_table(payload: &[u8], nfds: usize) -> Result<Vec<MemoryRegion>, HandlerError> {
    let request = Request::SetMemTable;
    let hdr_len = size_of::<MemoryTableHeader>();
    let region_len = size_of::<MemoryRegion>();
    let (h, rest) =
        MemoryTableHeader::read_from_prefix(payload).map_err(|_| HandlerError::PayloadSize {
            request,
            got: payload.len(),
            expected: hdr_len.to_string(),
        })?;
    let n = h.num_regions as usize;
    if n == 0 || n > MAX_MEM_TABLE_REGIONS {
        return Err(HandlerError::Invalid(format!("{n} memory regions")));
    }
    if rest.len() != n * region_len && rest.len() != MAX_MEM_TABLE_REGIONS * region_len {
        return Err(HandlerError::PayloadSize {
            request,
            got: payload.len(),
            expected: format!(
                "{} or {}",
                hdr_len + n * region_len,
                hdr_len + 8 * region_len
            ),
        });
    }
    let regions = rest
        .chunks_exact(region_len)
        .take(n)
        .map(|b| {
            MemoryRegion::read_from_bytes(b)
                .map_err(|_| HandlerError::Invalid("memory region".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if nfds != n {
        return Err(HandlerError::FdCount {
            request,
            got: nfds,
            expected: n,
        });
    }
    Ok(regions)
}

/// A vring index below `queues`.
pub(super) fn vring_index(idx: u64, queues: usize) -> Result<usize, HandlerError> {
    match usize::try_from(idx) {
        Ok(i) if i < queues => Ok(i),
        _ => Err(HandlerError::BadIndex(idx)),
    }
}

/// A queue size: a power of two, at most the device's limit and the protocol's.
pub(super) fn queue_size(num: u32, device_max: u16) -> Result<u16, HandlerError> {
    let max = (device_max as u32).min(MAX_QUEUE_SIZE);
    if num == 0 || num > max || !num.is_power_of_two() {
        return Err(HandlerError::Invalid(format!(
            "queue size {num} (max {max})"
        )));
    }
    Ok(num as u16)
}

/// A SET_VRING_BASE value (a 16-bit ring index).
pub(super) fn vring_base(num: u32) -> Result<u16, HandlerError> {
    u16::try_from(num).map_err(|_| HandlerError::Invalid(format!("vring base {num}")))
}

/// SET_VRING_ADDR flags: only VRING_F_LOG.
pub(super) fn vring_addr_flags(a: &VringAddr) -> Result<(), HandlerError> {
    if !a.is_valid() {
        return Err(HandlerError::Invalid(format!("vring flags {:#x}", a.flags)));
    }
    Ok(())
}

/// Ring parts aligned as the split ring requires (descriptors 16, available 2, used 4).
pub(super) fn ring_alignment(desc: u64, avail: u64, used: u64) -> Result<(), HandlerError> {
    if !desc.is_multiple_of(16) || !avail.is_multiple_of(2) || !used.is_multiple_of(4) {
        return Err(HandlerError::Invalid("ring alignment".into()));
    }
    Ok(())
}

/// A SET_VRING_KICK/CALL/ERR payload: (vring index, no fd), no other bit set.
pub(super) fn vring_fd(value: u64) -> Result<(u64, bool), HandlerError> {
    if value & !(VRING_IDX_MASK | VRING_NOFD_MASK) != 0 {
        return Err(HandlerError::Invalid(format!(
            "vring fd payload {value:#x}"
        )));
    }
    Ok((value & VRING_IDX_MASK, value & VRING_NOFD_MASK != 0))
}

/// A SET_VRING_ENABLE value: 0 or 1.
pub(super) fn enable_value(num: u32) -> Result<bool, HandlerError> {
    match num {
        0 | 1 => Ok(num == 1),
        _ => Err(HandlerError::Invalid(format!("enable value {num}"))),
    }
}

/// A SET_STATUS value: the virtio device status byte.
pub(super) fn status_value(v: u64) -> Result<u8, HandlerError> {
    u8::try_from(v).map_err(|_| HandlerError::Invalid(format!("status {v:#x}")))
}

/// The config header of GET/SET_CONFIG and the bytes after it.
pub(super) fn config_header(
    request: Request,
    payload: &[u8],
) -> Result<(ConfigHeader, &[u8]), HandlerError> {
    ConfigHeader::read_from_prefix(payload).map_err(|_| HandlerError::PayloadSize {
        request,
        got: payload.len(),
        expected: "12 + size".into(),
    })
}

/// A config access: `size` bytes follow the header, 1..=MAX_CONFIG_SIZE of them, ending at
/// or before `limit`.
pub(super) fn config_range(
    request: Request,
    h: &ConfigHeader,
    data_len: usize,
    limit: usize,
) -> Result<(), HandlerError> {
    if h.size as usize != data_len {
        return Err(HandlerError::PayloadSize {
            request,
            got: data_len,
            expected: h.size.to_string(),
        });
    }
    let end = h
        .offset
        .checked_add(h.size)
        .ok_or_else(|| HandlerError::Invalid("config range".into()))?;
    if h.size == 0 || h.size > MAX_CONFIG_SIZE || end as usize > limit {
        return Err(HandlerError::Invalid(format!(
            "config range {}+{}",
            h.offset, h.size
        )));
    }
    Ok(())
}

/// SET_CONFIG flags: only the migration flag.
pub(super) fn config_flags(h: &ConfigHeader) -> Result<(), HandlerError> {
    if h.flags & !CONFIG_FLAG_MIGRATION != 0 {
        return Err(HandlerError::Invalid(format!(
            "config flags {:#x}",
            h.flags
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    fn msg(request: Request, payload: &[u8], nfds: usize) -> Message {
        let fds = (0..nfds)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").expect("open /dev/null")))
            .collect();
        Message {
            header: Header {
                request: request as u32,
                flags: VERSION,
                size: payload.len() as u32,
            },
            payload: payload.to_vec(),
            fds,
        }
    }

    fn check(request: Request, payload: &[u8], nfds: usize, protocol: u64) -> bool {
        let rule = Rule::of(request).expect("a rule");
        rule.check(request, &msg(request, payload, nfds), protocol, 0)
            .is_ok()
    }

    #[test]
    fn rules_check_payload_size_fd_count_and_feature() {
        assert!(check(Request::GetFeatures, &[], 0, 0));
        assert!(!check(Request::GetFeatures, &[0], 0, 0));
        assert!(!check(Request::GetFeatures, &[], 1, 0));
        assert!(check(Request::SetFeatures, &[0; 8], 0, 0));
        assert!(!check(Request::SetFeatures, &[0; 4], 0, 0));
        assert!(!check(Request::GetQueueNum, &[], 0, 0));
        assert!(check(Request::GetQueueNum, &[], 0, protocol::MQ));
        assert!(check(
            Request::GetInflightFd,
            &[0; 24],
            0,
            protocol::INFLIGHT_SHMFD
        ));
        assert!(check(
            Request::GetInflightFd,
            &[0; 20],
            0,
            protocol::INFLIGHT_SHMFD
        ));
        assert!(!check(
            Request::GetInflightFd,
            &[0; 22],
            0,
            protocol::INFLIGHT_SHMFD
        ));
        let cms = protocol::CONFIGURE_MEM_SLOTS;
        assert!(check(Request::RemMemReg, &[0; 40], 1, cms));
        assert!(!check(Request::RemMemReg, &[0; 40], 2, cms));
    }

    #[test]
    fn vring_fd_rule_takes_one_fd_unless_nofd() {
        let p = |v: u64| v.to_ne_bytes();
        assert!(check(Request::SetVringKick, &p(1), 1, 0));
        assert!(!check(Request::SetVringKick, &p(1), 0, 0));
        assert!(check(Request::SetVringKick, &p(1 | VRING_NOFD_MASK), 0, 0));
        assert!(!check(Request::SetVringKick, &p(1 | VRING_NOFD_MASK), 1, 0));
        assert!(!check(Request::SetVringCall, &p(0x200), 1, 0));
    }

    #[test]
    fn unsupported_requests_have_no_rule() {
        assert!(Rule::of(Request::SendRarp).is_none());
        assert!(Rule::of(Request::SetDeviceStateFd).is_none());
    }

    #[test]
    fn field_values() {
        assert!(queue_size(256, 256).is_ok());
        assert!(queue_size(3, 256).is_err());
        assert!(queue_size(512, 256).is_err());
        assert!(queue_size(0, 256).is_err());
        assert!(vring_base(65535).is_ok() && vring_base(65536).is_err());
        assert!(enable_value(1).is_ok() && enable_value(2).is_err());
        assert!(status_value(0xff).is_ok() && status_value(0x100).is_err());
        assert!(vring_index(1, 2).is_ok() && vring_index(2, 2).is_err());
        assert!(ring_alignment(16, 2, 4).is_ok() && ring_alignment(8, 2, 4).is_err());
    }

    #[test]
    fn mem_table_takes_exactly_n_regions_or_room_for_8() {
        let table = |n: u32, regions: usize| {
            let mut p = n.to_ne_bytes().to_vec();
            p.extend_from_slice(&[0; 4]);
            p.resize(8 + 32 * regions, 0);
            p
        };
        assert_eq!(mem_table(&table(2, 2), 2).map(|r| r.len()).ok(), Some(2));
        assert_eq!(mem_table(&table(2, 8), 2).map(|r| r.len()).ok(), Some(2));
        assert!(mem_table(&table(2, 3), 2).is_err());
        assert!(mem_table(&table(2, 2), 1).is_err());
        assert!(mem_table(&table(0, 0), 0).is_err());
        assert!(mem_table(&table(9, 9), 9).is_err());
    }
}
