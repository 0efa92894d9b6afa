//! Writes the seed corpus under `corpus/seed/<target>/` from realistic messages, rings,
//! snapshots, block requests, net transmit chains, entropy requests and vsock packet
//! scripts. Run from anywhere:
//!
//! ```text
//! cargo run --manifest-path core/fuzz/Cargo.toml --example gen_seeds
//! ```
//!
//! The output is deterministic; the files are committed.

mod block;
mod chain;
mod dispatch;
mod net_tx;
mod rng;
mod snapshot;
mod vsock;

use std::fs;
use std::path::{Path, PathBuf};

use vu_core_fuzz::net_tx::encode_net_tx;
use vu_core_fuzz::vsock::encode_vsock;
use vu_core_fuzz::{encode_block, encode_chain, encode_dispatch, encode_rng};

fn write_all(dir: &Path, seeds: Vec<(&str, Vec<u8>)>) -> usize {
    fs::create_dir_all(dir).expect("create seed dir");
    for (name, bytes) in &seeds {
        fs::write(dir.join(name), bytes).expect("write seed");
    }
    seeds.len()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/seed");
    let n = write_all(
        &root.join("message_dispatch"),
        dispatch::seeds()
            .into_iter()
            .map(|(n, i)| (n, encode_dispatch(&i)))
            .collect(),
    ) + write_all(
        &root.join("descriptor_chain"),
        chain::seeds()
            .into_iter()
            .map(|(n, c)| (n, encode_chain(&c)))
            .collect(),
    ) + write_all(&root.join("snapshot_decode"), snapshot::seeds())
        + write_all(
            &root.join("block_request"),
            block::seeds()
                .into_iter()
                .map(|(n, b)| (n, encode_block(&b)))
                .collect(),
        )
        + write_all(
            &root.join("net_tx"),
            net_tx::seeds()
                .into_iter()
                .map(|(n, i)| (n, encode_net_tx(&i)))
                .collect(),
        )
        + write_all(
            &root.join("rng_request"),
            rng::seeds()
                .into_iter()
                .map(|(n, b)| (n, encode_rng(&b)))
                .collect(),
        )
        + write_all(
            &root.join("vsock_tx"),
            vsock::seeds()
                .into_iter()
                .map(|(n, v)| (n, encode_vsock(&v)))
                .collect(),
        );
    println!("wrote {n} seeds under {}", root.display());
}
