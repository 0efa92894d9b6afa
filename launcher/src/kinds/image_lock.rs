//! Image locks in QEMU's terms, so that QEMU, qemu-storage-daemon, qemu-img and qemu-io on
//! one side and our servers on the other never write one image unknowingly.
//!
//! QEMU's file driver (block/file-posix.c, `raw_apply_lock_bytes` and `raw_check_lock_bytes`)
//! expresses its block-layer permissions with open file description locks (F_OFD_SETLK) on
//! single bytes of the image, never on its contents' meaning:
//!
//! - byte 100 + N, a shared (read) lock: "I hold permission N";
//! - byte 200 + N, a shared (read) lock: "I do not share permission N";
//! - with N = 0 consistent read, 1 write, 2 write unchanged, 3 resize (`BLK_PERM_*`, bit N).
//!
//! An opener takes its own bytes first, then tests (F_OFD_GETLK with a write lock) byte
//! 200 + N for each permission it wants ("failed to get \"write\" lock") and 100 + N for each
//! it does not share ("failed to get shared \"write\" lock"); since everyone takes before they
//! test, two openers racing cannot both miss each other.
//!
//! We lock as qemu-storage-daemon 10.0's vhost-user-blk export does (block/export/export.c:
//! the export holds consistent read, plus write when writable, and shares everything):
//! writable, bytes 100 and 101, tested 200 and 201; read-only, byte 100, tested 200. So a
//! QEMU VM that opens an image we serve writable as a drive is refused ("Failed to get shared
//! \"write\" lock", its drive does not share write), a VM or qemu-io that has it open for
//! writing makes us refuse it, and read-only users on either side coexist.
//!
//! QEMU's bytes do not keep two of our servers (or two qemu-storage-daemon exports) apart:
//! both share everything. Our servers also lock [`SERVER_BYTE`], a byte QEMU never uses
//! (its bytes stop at 163 and 263): exclusively when writable, shared when read-only.
//!
//! The locks belong to the open file description: every device process of the launcher
//! shares it, and they last until its last descriptor (an io_uring ring's registered file
//! included) is closed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// QEMU's byte for "holds permission N" is this plus N.
pub const PERM_BASE: i64 = 100;
/// QEMU's byte for "does not share permission N" is this plus N.
pub const SHARED_BASE: i64 = 200;
/// Our servers' own byte, outside QEMU's ranges (libvirt uses byte 0).
pub const SERVER_BYTE: i64 = 300;

/// QEMU's block-layer permissions, by bit number (`BLK_PERM_*` in block-common.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// BLK_PERM_CONSISTENT_READ (bit 0).
    ConsistentRead = 0,
    /// BLK_PERM_WRITE (bit 1).
    Write = 1,
    /// BLK_PERM_WRITE_UNCHANGED (bit 2).
    WriteUnchanged = 2,
    /// BLK_PERM_RESIZE (bit 3).
    Resize = 3,
}

impl Perm {
    /// QEMU's name for it (as in its lock errors).
    pub fn name(self) -> &'static str {
        match self {
            Perm::ConsistentRead => "consistent read",
            Perm::Write => "write",
            Perm::WriteUnchanged => "write unchanged",
            Perm::Resize => "resize",
        }
    }

    /// The byte that says its holder holds it.
    pub fn held_byte(self) -> i64 {
        PERM_BASE + self as i64
    }

    /// The byte that says its holder does not share it.
    pub fn unshared_byte(self) -> i64 {
        SHARED_BASE + self as i64
    }
}

/// The permissions a server holds (qemu-storage-daemon's export: it shares all of them).
pub fn held(read_only: bool) -> &'static [Perm] {
    if read_only {
        &[Perm::ConsistentRead]
    } else {
        &[Perm::ConsistentRead, Perm::Write]
    }
}

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum ImageLockError {
    /// Another program holds the image without sharing a permission we need.
    #[error(
        "image {path}: failed to get \"{perm}\" lock: another program has it open and does not \
         share \"{perm}\" (it holds QEMU's lock byte {byte}){hint}",
        perm = perm.name()
    )]
    Unshared {
        /// The image.
        path: PathBuf,
        /// The permission.
        perm: Perm,
        /// Its byte.
        byte: i64,
        /// Who that usually is and what to do.
        hint: &'static str,
    },
    /// Another of our servers serves the image.
    #[error("image {path} is in use by another server of ours, which serves it {how}; stop it first{hint}")]
    Served {
        /// The image.
        path: PathBuf,
        /// "writable" or "read-only".
        how: &'static str,
        /// What else can be done.
        hint: &'static str,
    },
    /// The lock call failed.
    #[error("cannot lock image {path} (byte {byte})")]
    Io {
        /// The image.
        path: PathBuf,
        /// The byte.
        byte: i64,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ImageLockError {
    /// Whether this is another of our servers (which may be going away: worth a retry).
    pub fn is_ours(&self) -> bool {
        matches!(self, ImageLockError::Served { .. })
    }
}

/// Takes the locks of a server of `file` (read-only or writable) and checks that nobody holds
/// the image in a way that excludes it; on failure every lock taken is released again.
pub fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), ImageLockError> {
    let r = take_and_check(file, path, read_only);
    if r.is_err() {
        unlock(file);
    }
    r
}

fn take_and_check(file: &File, path: &Path, read_only: bool) -> Result<(), ImageLockError> {
    let io_err = |byte, source| ImageLockError::Io {
        path: path.to_path_buf(),
        byte,
        source,
    };
    // Ours first: another server of ours is the likeliest holder, and the cheapest to name.
    let own = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    match set(file, SERVER_BYTE, own) {
        Ok(true) => {}
        Ok(false) => {
            let other = test(file, SERVER_BYTE).map_err(|e| io_err(SERVER_BYTE, e))?;
            let writable = other == Some(libc::F_WRLCK as libc::c_short);
            return Err(ImageLockError::Served {
                path: path.to_path_buf(),
                how: if writable { "writable" } else { "read-only" },
                hint: if writable && !read_only {
                    ""
                } else if writable {
                    " (a writable server excludes read-only ones)"
                } else {
                    ", or serve the image with --read-only too"
                },
            });
        }
        Err(e) => return Err(io_err(SERVER_BYTE, e)),
    }
    // QEMU's: take our permission bytes, then test the unshared bytes of the others.
    for p in held(read_only) {
        match set(file, p.held_byte(), libc::F_RDLCK) {
            Ok(true) => {}
            Ok(false) => {
                return Err(io_err(
                    p.held_byte(),
                    io::Error::other("another program holds a write lock on it"),
                ))
            }
            Err(e) => return Err(io_err(p.held_byte(), e)),
        }
    }
    for &p in held(read_only) {
        let byte = p.unshared_byte();
        if test(file, byte).map_err(|e| io_err(byte, e))?.is_some() {
            return Err(ImageLockError::Unshared {
                path: path.to_path_buf(),
                perm: p,
                byte,
                hint: hint(p),
            });
        }
    }
    if !read_only && test(file, Perm::Write.held_byte()).ok().flatten().is_some() {
        tracing::warn!(
            image = %path.display(),
            "another program (a qemu-storage-daemon export, qemu-io, or a QEMU drive with \
             share-rw=on) also has the image open for writing and shares write access: as \
             with qemu-storage-daemon, nothing keeps both from writing it"
        );
    }
    Ok(())
}

/// Who does not share `p`, usually, and what to do about it.
fn hint(p: Perm) -> &'static str {
    match p {
        Perm::Write => {
            ": a QEMU VM that has it as a drive (a read-only drive too); stop the VM or \
             detach the drive first, or serve the image with --read-only"
        }
        Perm::ConsistentRead => {
            ": a QEMU block job (such as a commit) is changing it; wait until the job ends"
        }
        Perm::WriteUnchanged | Perm::Resize => "; stop the program that has it open first",
    }
}

/// Releases every byte a server takes (ours and QEMU's) on `file`'s open file description.
pub fn unlock(file: &impl AsRawFd) {
    let _ = set(file, SERVER_BYTE, libc::F_UNLCK);
    for p in held(false) {
        let _ = set(file, p.held_byte(), libc::F_UNLCK);
    }
}

fn flock_of(byte: i64, kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain data; all zeroes is a valid value (l_pid must be 0 for OFD
    // locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

/// F_OFD_SETLK of one byte: `Ok(false)` when another open file description holds a
/// conflicting lock.
fn set(file: &impl AsRawFd, byte: i64, kind: libc::c_int) -> io::Result<bool> {
    let fl = flock_of(byte, kind);
    loop {
        // SAFETY: `fl` is a valid flock that outlives the call; the kernel only reads it.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN | libc::EACCES) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// F_OFD_GETLK of one byte for a write lock: the type of a lock another open file
/// description holds on it (`None`: nobody's).
fn test(file: &File, byte: i64) -> io::Result<Option<libc::c_short>> {
    let mut fl = flock_of(byte, libc::F_WRLCK);
    loop {
        // SAFETY: `fl` is a valid flock that outlives the call; the kernel writes the first
        // conflicting lock into it, or sets l_type to F_UNLCK.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        if r == 0 {
            return Ok((fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_type));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn open(path: &Path, write: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .expect("open")
    }

    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("img");
        File::create(&path)
            .expect("create")
            .set_len(1 << 20)
            .expect("len");
        (dir, path)
    }

    #[test]
    fn qemus_bytes_and_names() {
        assert_eq!(Perm::ConsistentRead.held_byte(), 100);
        assert_eq!(Perm::Write.held_byte(), 101);
        assert_eq!(Perm::Write.unshared_byte(), 201);
        assert_eq!(Perm::Resize.unshared_byte(), 203);
        assert_eq!(Perm::Write.name(), "write");
        const { assert!(SERVER_BYTE > SHARED_BASE + 63 && SERVER_BYTE > PERM_BASE + 63) };
    }

    #[test]
    fn two_writable_servers_exclude_each_other_and_read_only_ones_share() {
        let (_d, path) = image();
        let a = open(&path, true);
        lock(&a, &path, false).expect("first");
        let b = open(&path, true);
        let e = lock(&b, &path, false).expect_err("second writable");
        assert!(e.is_ours(), "{e}");
        assert!(e.to_string().contains("serves it writable"), "{e}");
        let e = lock(&open(&path, false), &path, true).expect_err("read-only beside writable");
        assert!(e.is_ours(), "{e}");
        drop(a);
        let r1 = open(&path, false);
        lock(&r1, &path, true).expect("read-only");
        lock(&open(&path, false), &path, true).expect("a second read-only");
        let e = lock(&b, &path, false).expect_err("writable beside read-only");
        assert!(e.to_string().contains("serves it read-only"), "{e}");
    }

    #[test]
    fn an_unshared_write_refuses_writers_and_not_readers() {
        let (_d, path) = image();
        // What a QEMU VM with the image as a writable drive holds: 100, 101 and 201.
        let vm = open(&path, true);
        for byte in [100, 101, 201] {
            assert!(set(&vm, byte, libc::F_RDLCK).expect("lock"));
        }
        let ours = open(&path, true);
        let e = lock(&ours, &path, false).expect_err("writable");
        assert!(
            matches!(
                e,
                ImageLockError::Unshared {
                    perm: Perm::Write,
                    byte: 201,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("failed to get \"write\" lock"),
            "{e}"
        );
        // Nothing of ours is left behind: the same file can be locked read-only.
        assert_eq!(test(&vm, SERVER_BYTE).expect("test"), None);
        lock(&open(&path, false), &path, true).expect("read-only coexists");
    }
}
