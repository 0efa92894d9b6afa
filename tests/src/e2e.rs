//! Shared pieces of the end-to-end block tests: a fresh image, a launcher serving it, and a
//! guest booted with it as vhost-user-blk.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use tempfile::TempDir;

use crate::guest::{qemu_available, Guest, GuestConfig, GuestImage, VhostUserBlkDisk};
use crate::launcher::Launcher;

/// Timeout for one guest command (fio runs under TCG on a loaded machine).
pub const CMD: Duration = Duration::from_secs(900);
/// Timeout for a guest power-off.
pub const POWEROFF: Duration = Duration::from_secs(120);

/// A fresh image served by a launcher.
#[derive(Debug)]
pub struct BlockRig {
    /// Holds image and socket.
    pub dir: TempDir,
    /// The raw image.
    pub image: PathBuf,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// The launcher process.
    pub launcher: Launcher,
}

impl BlockRig {
    /// Creates a sparse image of `size` bytes and starts `launcher start block` on it with
    /// the extra arguments.
    pub fn new(size: u64, extra: &[&str]) -> Result<BlockRig> {
        ensure!(qemu_available(), "qemu-system-x86_64 is not installed");
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)?.set_len(size)?;
        Self::with_image(dir, image, extra)
    }

    /// Starts a launcher on an existing image inside `dir`.
    pub fn with_image(dir: TempDir, image: PathBuf, extra: &[&str]) -> Result<BlockRig> {
        let socket = dir.path().join("blk.sock");
        let launcher = Launcher::start_block(&socket, &image, extra)?;
        Ok(BlockRig {
            dir,
            image,
            socket,
            launcher,
        })
    }

    /// Boots a guest with this device as its only disk; `tweak` adjusts the disk options.
    pub fn boot(
        &self,
        tweak: impl FnOnce(&mut VhostUserBlkDisk, &mut GuestConfig),
    ) -> Result<Guest> {
        let mut disk = VhostUserBlkDisk::new(&self.socket);
        let mut cfg = GuestConfig::default();
        tweak(&mut disk, &mut cfg);
        cfg.vhost_user_blk = vec![disk];
        Guest::boot(&GuestImage::locate()?, &cfg)
    }
}

/// Runs `f` against the guest; on failure prints the guest console and the launcher log.
pub fn exercise<T>(
    rig: &BlockRig,
    guest: &Guest,
    f: impl FnOnce(&Guest) -> Result<T>,
) -> Result<T> {
    let r = f(guest);
    if r.is_err() {
        eprintln!(
            "---- guest console ({}) ----\n{}",
            guest.log_path().display(),
            guest.console()
        );
        eprintln!("---- launcher ----\n{}", rig.launcher.stderr());
    }
    r
}

/// The pattern the durability tests write: `blocks` 4 KiB blocks, each starting with the line
/// `VU-<tag>-BLOCK-<n>` (n zero-padded to 8 digits) and filled with `0123456789abcde\n`.
pub fn pattern(tag: &str, blocks: usize) -> Vec<u8> {
    let fill: Vec<u8> = b"0123456789abcde\n"
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let mut out = Vec::with_capacity(blocks * 4096);
    for b in 0..blocks {
        let head = format!("VU-{tag}-BLOCK-{b:08}\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&fill[..4096 - head.len()]);
    }
    out
}

/// Shell snippet that writes the same bytes as `pattern(tag, blocks)` to `path` in the guest.
pub fn pattern_cmd(tag: &str, blocks: usize, path: &str) -> String {
    let head_len = format!("VU-{tag}-BLOCK-{:08}\n", 0).len();
    format!(
        "yes 0123456789abcde | head -c 4096 > /tmp/fill && \
         for b in $(seq 0 {last}); do printf 'VU-{tag}-BLOCK-%08d\\n' $b; head -c {rest} /tmp/fill; done > {path}",
        last = blocks - 1,
        rest = 4096 - head_len,
    )
}
