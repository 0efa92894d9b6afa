//! Step 8: seccomp, last. The policy compiler (`seccomp.rs`, `policy.rs`) turns the device's
//! minijail-syntax policy into BPF; this file is the jail's seam to it.
//!
//! The launcher compiles the policy (it can read `--seccomp-policy-dir`, which the jail user
//! may not be able to) and hands the BPF to the device in a sealed memfd; the device reads it
//! before its first jail step and installs it as the last.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use seccompiler::{sock_filter, BpfProgram};

pub use super::policy::PolicyError as FilterError;
pub use super::seccomp::SeccompMode as FilterMode;

/// Start of a serialised filter set.
const MAGIC: &[u8; 8] = b"VUBPF\0\0\x01";
/// Bytes per BPF instruction: code (u16), jt (u8), jf (u8), k (u32).
const INSN: usize = 8;
/// Most instructions one program may have (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;
/// Most programs in one set.
const MAX_PROGRAMS: usize = 64;

/// A device's compiled seccomp filters, in installation order.
#[derive(Clone, PartialEq, Eq)]
pub struct Filters {
    programs: Vec<BpfProgram>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters")
            .field("programs", &self.programs.len())
            .field(
                "instructions",
                &self.programs.iter().map(Vec::len).sum::<usize>(),
            )
            .finish()
    }
}

/// Why passed filters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FilterPassError {
    /// Reading or writing the memfd failed.
    #[error("cannot pass the seccomp filters to the device")]
    Io(#[source] io::Error),
    /// The bytes are not a filter set.
    #[error("the seccomp filters passed by the launcher are malformed: {0}")]
    Malformed(&'static str),
}

impl Filters {
    /// The programs, in installation order.
    pub fn programs(&self) -> &[BpfProgram] {
        &self.programs
    }

    /// Serialises the set: magic, program count, then each program's length and instructions
    /// (native byte order: both ends are the same binary on the same host).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.programs.len() as u32).to_ne_bytes());
        for p in &self.programs {
            out.extend_from_slice(&(p.len() as u32).to_ne_bytes());
            for i in p {
                out.extend_from_slice(&i.code.to_ne_bytes());
                out.push(i.jt);
                out.push(i.jf);
                out.extend_from_slice(&i.k.to_ne_bytes());
            }
        }
        out
    }

    /// Parses what [`Filters::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Filters, FilterPassError> {
        let bad = FilterPassError::Malformed;
        let rest = bytes.strip_prefix(MAGIC).ok_or(bad("no magic"))?;
        let (count, mut rest) = take_u32(rest).ok_or(bad("no program count"))?;
        if count == 0 || count > MAX_PROGRAMS {
            return Err(bad("program count out of range"));
        }
        let mut programs = Vec::with_capacity(count);
        for _ in 0..count {
            let (len, r) = take_u32(rest).ok_or(bad("no program length"))?;
            if len == 0 || len > MAX_INSNS {
                return Err(bad("program length out of range"));
            }
            let body = r.get(..len * INSN).ok_or(bad("truncated program"))?;
            rest = &r[len * INSN..];
            programs.push(
                body.chunks_exact(INSN)
                    .map(|c| sock_filter {
                        code: u16::from_ne_bytes([c[0], c[1]]),
                        jt: c[2],
                        jf: c[3],
                        k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                    })
                    .collect(),
            );
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Filters { programs })
    }
}

fn take_u32(b: &[u8]) -> Option<(usize, &[u8])> {
    let v = u32::from_ne_bytes(b.get(..4)?.try_into().ok()?);
    Some((usize::try_from(v).ok()?, &b[4..]))
}

/// In the launcher: compiles the policy of `device` (`<device>_device.policy`), from
/// `policy_dir` or the one built into the binary. `mode` decides what a forbidden syscall
/// does: kill or log.
pub fn compile(
    device: &str,
    policy_dir: Option<&Path>,
    mode: FilterMode,
) -> Result<Filters, FilterError> {
    let programs = super::seccomp::device_filters(device, policy_dir, mode)?;
    Ok(Filters { programs })
}

/// In the launcher: the filters in a sealed (immutable) memfd, to pass to the device.
pub fn to_sealed_memfd(filters: &Filters) -> Result<OwnedFd, FilterPassError> {
    let fd = memfd_create(
        c"vu-seccomp-filters",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| FilterPassError::Io(e.into()))?;
    let mut file = File::from(fd);
    file.write_all(&filters.to_bytes())
        .map_err(FilterPassError::Io)?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| FilterPassError::Io(e.into()))?;
    Ok(file.into())
}

/// In the device: reads the filters the launcher passed (before the jail).
pub fn read_passed(fd: OwnedFd) -> Result<Filters, FilterPassError> {
    let file = File::from(fd);
    let len = file.metadata().map_err(FilterPassError::Io)?.len();
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAGIC.len() + 4 + MAX_PROGRAMS * (4 + MAX_INSNS * INSN))
        .ok_or(FilterPassError::Malformed("too large"))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)
        .map_err(FilterPassError::Io)?;
    Filters::from_bytes(&bytes)
}

/// Installs the filters on every thread (TSYNC; the jail runs single-threaded anyway).
pub fn install(filters: &Filters) -> Result<(), FilterError> {
    super::seccomp::install(&filters.programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Filters {
        let insn = |code, k| sock_filter {
            code,
            jt: 1,
            jf: 2,
            k,
        };
        Filters {
            programs: vec![
                vec![insn(0x20, 4), insn(0x6, 0x7fff_0000)],
                vec![insn(0x15, 0xc000_003e)],
            ],
        }
    }

    #[test]
    fn bytes_round_trip_and_malformed_sets_are_refused() {
        let f = sample();
        let b = f.to_bytes();
        assert_eq!(Filters::from_bytes(&b).expect("parses"), f);
        assert!(Filters::from_bytes(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(Filters::from_bytes(&extra).is_err());
        assert!(Filters::from_bytes(b"VUBPF\0\0\x02").is_err());
        let mut empty = MAGIC.to_vec();
        empty.extend_from_slice(&0u32.to_ne_bytes());
        assert!(Filters::from_bytes(&empty).is_err());
    }

    #[test]
    fn a_sealed_memfd_carries_the_filters() {
        let f = sample();
        let fd = to_sealed_memfd(&f).expect("memfd");
        let copy = fd.try_clone().expect("dup");
        // Sealed: no more writes.
        assert!(File::from(copy).write_all(b"x").is_err());
        assert_eq!(read_passed(fd).expect("read"), f);
    }

    #[test]
    fn the_embedded_block_policy_compiles() {
        let f = compile("block", None, FilterMode::Kill).expect("compiles");
        assert!(!f.programs().is_empty());
        assert_eq!(Filters::from_bytes(&f.to_bytes()).expect("parses"), f);
    }
}
