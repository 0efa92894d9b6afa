//! A queue kept from input to input, for the device targets that drive their queues inline
//! (`net_tx`, `vsock_tx`): built once per process, then put back in a queue start's state
//! for every input. Building and dropping a `QueueIo` (its chain slots, the shared state)
//! per input cost as much as a small input's chains.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::GuestMemoryAtomic;
use vu_core::dirty_log::DirtyLog;
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::{GuestMem, QueueIo};

/// The queue for `setup`: `slot`'s (the previous input's) reset with `QueueIo::reset`,
/// which vu-core's tests hold to a fresh `QueueIo::new` for the same setup, or, for the
/// first input, a new one over `atomic` and `log` (`enabled`: its shared state says the
/// queue is enabled, as a front-end's SET_VRING_ENABLE would have it; a reset keeps it).
pub fn reuse_queue(
    slot: Option<QueueIo>,
    setup: &QueueSetup,
    atomic: &GuestMemoryAtomic<GuestMem>,
    log: &Arc<DirtyLog>,
    enabled: bool,
) -> QueueIo {
    match slot {
        Some(mut q) => {
            q.reset(setup).expect("queue reset");
            q
        }
        None => {
            let shared = Arc::new(VringShared::default());
            if enabled {
                shared.enabled.store(true, Ordering::Release);
            }
            QueueIo::new(setup, atomic.clone(), None, log.clone(), shared).expect("queue")
        }
    }
}
