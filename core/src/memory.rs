//! Guest memory as the front-end shares it: regions received as file descriptors, mapped with
//! vm-memory, swapped atomically under the queue workers, and translated from front-end user
//! addresses (ring addresses) to guest physical addresses.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};

use crate::dirty_log::{page_size, DirtyLog, LogBitmap};
use crate::message::MemoryRegion;

/// Guest memory as the device sees it.
pub type GuestMem = GuestMemoryMmap<LogBitmap>;
/// The swappable handle workers read guest memory through.
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMem>;

/// The host address of `len` bytes of guest memory at `addr`, if they lie inside one mapped
/// region of `mem` and the address is a multiple of `align`. The address stays valid while
/// `mem` (the snapshot) is alive. The hot path reads rings and descriptor tables through it
/// instead of vm-memory's generic accessors, which walk a region iterator for every access.
pub(crate) fn host_span(mem: &GuestMem, addr: u64, len: u64, align: usize) -> Option<usize> {
    let region = mem.find_region(GuestAddress(addr))?;
    let off = addr.checked_sub(region.start_addr().0)?;
    if off.checked_add(len)? > region.len() {
        return None;
    }
    let host = region.get_host_address(MemoryRegionAddress(off)).ok()? as usize;
    host.is_multiple_of(align).then_some(host)
}

/// Memory slots we accept (GET_MAX_MEM_SLOTS). Same order as libvhost-user's limit; each
/// slot costs one mapping.
pub const MAX_MEM_SLOTS: usize = 509;

/// Errors from memory-table requests.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Zero size or address arithmetic that overflows.
    #[error("region {0:?} is empty or overflows")]
    Invalid(MemoryRegion),
    /// The mmap offset is not page aligned.
    #[error("region mmap offset {0:#x} is not page aligned")]
    Unaligned(u64),
    /// Two regions overlap in guest physical or user address space.
    #[error("region {0:?} overlaps an existing region")]
    Overlap(MemoryRegion),
    /// The file is smaller than mmap offset + size: touching it would fault.
    #[error("region file is smaller than mmap offset + size")]
    FileTooSmall,
    /// fstat failed.
    #[error("cannot stat the region file")]
    Stat(#[source] nix::Error),
    /// mmap failed.
    #[error("cannot map the region")]
    Map(#[source] MmapRegionError),
    /// More regions than the limit.
    #[error("too many memory regions (limit {0})")]
    TooMany(usize),
    /// REM_MEM_REG named a region we do not have.
    #[error("no region matches {0:?}")]
    NoSuchRegion(MemoryRegion),
    /// vm-memory refused the collection.
    #[error("invalid region collection")]
    Collection(#[source] vm_memory::GuestRegionCollectionError),
}

#[derive(Debug, Clone)]
struct Mapped {
    desc: MemoryRegion,
    region: Arc<GuestRegionMmap<LogBitmap>>,
}

/// The connection's memory table.
#[derive(Debug)]
pub struct MemoryMap {
    regions: Vec<Mapped>,
    atomic: GuestMemAtomic,
    log: Arc<DirtyLog>,
}

fn overlaps(a_start: u64, a_len: u64, b_start: u64, b_len: u64) -> bool {
    // Callers validated that neither range overflows.
    a_start < b_start + b_len && b_start < a_start + a_len
}

impl MemoryMap {
    /// An empty table whose regions will log into `log`.
    pub fn new(log: Arc<DirtyLog>) -> Self {
        MemoryMap {
            regions: Vec::new(),
            atomic: GuestMemoryAtomic::new(GuestMem::default()),
            log,
        }
    }

    /// The handle queue workers load memory from.
    pub fn atomic(&self) -> GuestMemAtomic {
        self.atomic.clone()
    }

    /// Number of mapped regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions as received.
    pub fn regions(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.regions.iter().map(|m| &m.desc)
    }

    fn map_one(&self, desc: &MemoryRegion, fd: OwnedFd) -> Result<Mapped, MemoryError> {
        if !desc.is_valid() {
            return Err(MemoryError::Invalid(*desc));
        }
        if !desc.mmap_offset.is_multiple_of(page_size()) {
            return Err(MemoryError::Unaligned(desc.mmap_offset));
        }
        let st = nix::sys::stat::fstat(&fd).map_err(MemoryError::Stat)?;
        let end = desc.mmap_offset + desc.memory_size; // checked by is_valid
        if (st.st_mode & libc::S_IFMT) == libc::S_IFREG && (st.st_size as u64) < end {
            return Err(MemoryError::FileTooSmall);
        }
        seal_against_shrinking(&fd, desc);
        let size = desc.memory_size as usize; // checked by is_valid
        let file = std::fs::File::from(fd);
        let map = MmapRegionBuilder::new_with_bitmap(
            size,
            LogBitmap::new(self.log.clone(), desc.guest_phys_addr),
        )
        .with_file_offset(FileOffset::new(file, desc.mmap_offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
        .build()
        .map_err(MemoryError::Map)?;
        let region = GuestRegionMmap::new(map, GuestAddress(desc.guest_phys_addr))
            .ok_or(MemoryError::Invalid(*desc))?;
        Ok(Mapped {
            desc: *desc,
            region: Arc::new(region),
        })
    }

    fn check_overlap(existing: &[Mapped], d: &MemoryRegion) -> Result<(), MemoryError> {
        for m in existing {
            let e = &m.desc;
            if overlaps(
                e.guest_phys_addr,
                e.memory_size,
                d.guest_phys_addr,
                d.memory_size,
            ) || overlaps(e.user_addr, e.memory_size, d.user_addr, d.memory_size)
            {
                return Err(MemoryError::Overlap(*d));
            }
        }
        Ok(())
    }

    fn publish(&mut self, regions: Vec<Mapped>) -> Result<(), MemoryError> {
        let mut sorted: Vec<Arc<GuestRegionMmap<LogBitmap>>> =
            regions.iter().map(|m| m.region.clone()).collect();
        sorted.sort_by_key(|r| vm_memory::GuestMemoryRegion::start_addr(r.as_ref()));
        let mem = if sorted.is_empty() {
            GuestMem::default()
        } else {
            GuestMem::from_arc_regions(sorted).map_err(MemoryError::Collection)?
        };
        let guard = self.atomic.lock().unwrap_or_else(|e| e.into_inner());
        guard.replace(mem);
        self.regions = regions;
        Ok(())
    }

    /// Replaces the whole table (SET_MEM_TABLE). All or nothing: on error the old table stays.
    pub fn set_table(&mut self, table: Vec<(MemoryRegion, OwnedFd)>) -> Result<(), MemoryError> {
        if table.len() > MAX_MEM_SLOTS {
            return Err(MemoryError::TooMany(MAX_MEM_SLOTS));
        }
        let mut new: Vec<Mapped> = Vec::with_capacity(table.len());
        for (desc, fd) in table {
            if !desc.is_valid() {
                return Err(MemoryError::Invalid(desc));
            }
            Self::check_overlap(&new, &desc)?;
            new.push(self.map_one(&desc, fd)?);
        }
        self.publish(new)
    }

    /// Adds one region (ADD_MEM_REG).
    pub fn add_region(&mut self, desc: MemoryRegion, fd: OwnedFd) -> Result<(), MemoryError> {
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(MemoryError::TooMany(MAX_MEM_SLOTS));
        }
        if !desc.is_valid() {
            return Err(MemoryError::Invalid(desc));
        }
        Self::check_overlap(&self.regions, &desc)?;
        let mapped = self.map_one(&desc, fd)?;
        let mut new = self.regions.clone();
        new.push(mapped);
        self.publish(new)
    }

    /// Removes the region with the same guest address, user address and size (REM_MEM_REG).
    pub fn remove_region(&mut self, desc: &MemoryRegion) -> Result<(), MemoryError> {
        let pos = self
            .regions
            .iter()
            .position(|m| {
                m.desc.guest_phys_addr == desc.guest_phys_addr
                    && m.desc.user_addr == desc.user_addr
                    && m.desc.memory_size == desc.memory_size
            })
            .ok_or(MemoryError::NoSuchRegion(*desc))?;
        let mut new = self.regions.clone();
        new.remove(pos);
        self.publish(new)
    }

    /// Unmaps everything (disconnect, reset).
    pub fn clear(&mut self) {
        // Publishing an empty collection cannot fail.
        let _ = self.publish(Vec::new());
    }

    /// Translates a front-end user address to a guest physical address, requiring `len`
    /// bytes to lie within the same region.
    pub fn uva_to_gpa(&self, uva: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|m| {
            let d = &m.desc;
            let off = uva.checked_sub(d.user_addr)?;
            let end = off.checked_add(len)?;
            (off < d.memory_size && end <= d.memory_size).then(|| d.guest_phys_addr + off)
        })
    }
}

/// A front-end that truncates a region's file after we mapped it would make our next access
/// fault (SIGBUS). Seal the file against shrinking where the file allows it (QEMU's memfd
/// backend seals by default); otherwise say that this region is not protected.
fn seal_against_shrinking(fd: &OwnedFd, desc: &MemoryRegion) {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let _ = fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK));
    let sealed = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map(|seals| seals & libc::F_SEAL_SHRINK != 0)
        .unwrap_or(false);
    if !sealed {
        tracing::warn!(
            gpa = desc.guest_phys_addr,
            size = desc.memory_size,
            "memory region cannot be sealed against shrinking; the front-end could crash this device"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddressSpace};

    fn memfd(len: u64) -> OwnedFd {
        let fd = nix::sys::memfd::memfd_create("mem", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        nix::unistd::ftruncate(&fd, len as i64).expect("truncate");
        fd
    }

    fn region(gpa: u64, size: u64, uva: u64) -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: uva,
            mmap_offset: 0,
        }
    }

    #[test]
    fn table_add_remove_translate() {
        let mut m = MemoryMap::new(DirtyLog::new());
        m.set_table(vec![(region(0, 0x10000, 0x7000_0000), memfd(0x10000))])
            .expect("table");
        assert_eq!(m.uva_to_gpa(0x7000_0010, 16), Some(0x10));
        assert_eq!(m.uva_to_gpa(0x7000_fff8, 16), None, "straddles the end");
        m.add_region(region(0x100000, 0x1000, 0x8000_0000), memfd(0x1000))
            .expect("add");
        let mem = m.atomic().memory();
        mem.write_obj(0xabcdu32, GuestAddress(0x100010))
            .expect("write");
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x100010)).expect("read"),
            0xabcd
        );
        assert!(matches!(
            m.add_region(region(0x100800, 0x1000, 0x9000_0000), memfd(0x1000)),
            Err(MemoryError::Overlap(_))
        ));
        assert!(matches!(
            m.add_region(region(0x200000, 0x1000, 0x8000_0800), memfd(0x1000)),
            Err(MemoryError::Overlap(_))
        ));
        m.remove_region(&region(0x100000, 0x1000, 0x8000_0000))
            .expect("remove");
        assert!(m
            .atomic()
            .memory()
            .read_obj::<u32>(GuestAddress(0x100010))
            .is_err());
        assert!(matches!(
            m.remove_region(&region(0x100000, 0x1000, 0x8000_0000)),
            Err(MemoryError::NoSuchRegion(_))
        ));
    }

    #[test]
    fn regions_get_sealed_against_shrinking() {
        let fd = nix::sys::memfd::memfd_create(
            "sealable",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .expect("memfd");
        nix::unistd::ftruncate(&fd, 0x1000).expect("truncate");
        let dup = fd.try_clone().expect("dup");
        let mut m = MemoryMap::new(DirtyLog::new());
        m.set_table(vec![(region(0, 0x1000, 0x1000), dup)])
            .expect("table");
        assert!(
            nix::unistd::ftruncate(&fd, 0).is_err(),
            "shrinking must be refused"
        );
    }

    #[test]
    fn rejects_hostile_regions() {
        let mut m = MemoryMap::new(DirtyLog::new());
        let small = memfd(0x1000);
        assert!(matches!(
            m.set_table(vec![(region(0, 0x10000, 0x1000), small)]),
            Err(MemoryError::FileTooSmall)
        ));
        assert!(matches!(
            m.set_table(vec![(region(u64::MAX - 10, 0x1000, 0), memfd(0x1000))]),
            Err(MemoryError::Invalid(_))
        ));
        let mut r = region(0, 0x1000, 0);
        r.mmap_offset = 12;
        assert!(matches!(
            m.set_table(vec![(r, memfd(0x2000))]),
            Err(MemoryError::Unaligned(12))
        ));
        assert!(matches!(
            m.set_table(vec![
                (region(0, 0x2000, 0x10000), memfd(0x2000)),
                (region(0x1000, 0x1000, 0x40000), memfd(0x1000))
            ]),
            Err(MemoryError::Overlap(_))
        ));
        assert!(
            m.is_empty(),
            "failed SET_MEM_TABLE leaves the old (empty) table"
        );
    }
}
