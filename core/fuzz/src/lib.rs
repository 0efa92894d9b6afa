//! Input formats shared by the fuzz targets and the seed generator, and what the targets
//! drive: `dispatch.rs` (message sequences and the minimal device `message_dispatch`
//! serves), `chain.rs` (descriptor chains), `block.rs` (block request batches) and
//! `block_ring.rs` (the driver side of the ring `block_request` fills), `net_tx.rs`
//! (transmit chain shapes for the net device, `net_tx`), `ring.rs` (a driver's ring of any
//! chain shapes, for the other device targets), `queue_reuse.rs` (a queue kept from input to
//! input), `rng.rs` (entropy request batches) and
//! `vsock.rs` (vsock packet scripts).
//!
//! Each format is a plain byte layout that `parse_*` reads leniently (any byte string is an
//! input) and `encode_*` writes, so seeds can be built from realistic values.

mod block;
mod block_ring;
mod chain;
mod dispatch;
pub mod net_tx;
pub mod queue_reuse;
pub mod ring;
mod rng;
pub mod vsock;
pub mod vsock_guest;
pub mod vsock_host;
pub mod vsock_oracle;

pub use block::*;
pub use block_ring::*;
pub use chain::*;
pub use dispatch::*;
pub use rng::*;

pub(crate) fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (a, b) = data.split_at(n);
    *data = b;
    a
}

pub(crate) fn u16_at(data: &mut &[u8]) -> u16 {
    let b = take(data, 2);
    let mut v = [0u8; 2];
    v[..b.len()].copy_from_slice(b);
    u16::from_le_bytes(v)
}

pub(crate) fn u32_at(data: &mut &[u8]) -> u32 {
    let b = take(data, 4);
    let mut v = [0u8; 4];
    v[..b.len()].copy_from_slice(b);
    u32::from_le_bytes(v)
}

pub(crate) fn u64_at(data: &mut &[u8]) -> u64 {
    let b = take(data, 8);
    let mut v = [0u8; 8];
    v[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(v)
}

/// A split-ring descriptor as the guest writes it (little endian).
pub fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}
