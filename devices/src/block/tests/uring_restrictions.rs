//! The io_uring rings are restricted to the operations the block path submits: anything else
//! (opening files, sockets, ...) is refused by the kernel, since seccomp never sees it.

use std::sync::Arc;

use io_uring::{opcode, types};

use super::disk;
use crate::block::uring_engine::UringHandler;

#[test]
fn ring_refuses_operations_outside_the_block_path() {
    let mut h = UringHandler::new(Arc::new(disk(1 << 20, |_| {})), 8).expect("ring");
    let path = c"/etc/hostname";
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
        .build()
        .user_data(7);
    // SAFETY: the path outlives the submission, which is waited for below.
    unsafe { h.ring_for_tests().submission().push(&open) }.expect("queue sqe");
    h.ring_for_tests().submit_and_wait(1).expect("submit");
    let cqe = h.ring_for_tests().completion().next().expect("completion");
    assert_eq!(cqe.user_data(), 7);
    assert_eq!(
        cqe.result(),
        -libc::EACCES,
        "OpenAt must be refused by the ring restrictions"
    );
}
