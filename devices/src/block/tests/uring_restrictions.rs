//! The io_uring rings are restricted to the operations the block path submits, on the image
//! file registered with the ring: anything else (opening files, sockets, I/O on any other
//! file descriptor) is refused by the kernel, since seccomp never sees it.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};

use super::{disk, file_bytes, put_file};
use crate::block::uring_engine::{UringHandler, IMAGE};

/// Submits one SQE, waits for its completion and returns the result.
///
/// # Safety
///
/// Whatever `sqe` points at must stay valid until this returns.
unsafe fn run_one(h: &mut UringHandler, sqe: squeue::Entry) -> i32 {
    let sqe = sqe.user_data(7);
    // SAFETY: the caller keeps the SQE's buffers alive; the completion is waited for below.
    unsafe { h.ring_for_tests().submission().push(&sqe) }.expect("queue sqe");
    h.ring_for_tests().submit_and_wait(1).expect("submit");
    let cqe = h.ring_for_tests().completion().next().expect("completion");
    assert_eq!(cqe.user_data(), 7);
    cqe.result()
}

#[test]
fn ring_refuses_operations_outside_the_block_path() {
    let mut h = UringHandler::new(Arc::new(disk(1 << 20, |_| {})), 8, false).expect("ring");
    let path = c"/etc/hostname";
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build();
    // SAFETY: the path outlives the call.
    let res = unsafe { run_one(&mut h, open) };
    assert_eq!(
        res,
        -libc::EACCES,
        "OpenAt must be refused by the ring restrictions"
    );
}

#[test]
fn ring_only_does_io_on_the_registered_image() {
    let d = Arc::new(disk(1 << 20, |_| {}));
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    put_file(&d, 8192, &data);
    let mut h = UringHandler::new(d.clone(), 8, false).expect("ring");
    let mut buf = vec![0u8; 4096];
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];

    // A raw descriptor, even the image's own, is refused: FIXED_FILE is required.
    let raw = opcode::Readv::new(types::Fd(d.file.as_raw_fd()), iov.as_ptr(), 1)
        .offset(8192)
        .build();
    // SAFETY: `iov` and `buf` outlive the call.
    let res = unsafe { run_one(&mut h, raw) };
    assert_eq!(
        res,
        -libc::EACCES,
        "a readv on a raw fd must be refused by the ring restrictions"
    );
    assert!(
        buf.iter().all(|&b| b == 0),
        "the refused readv read nothing"
    );
    let fsync_raw = opcode::Fsync::new(types::Fd(d.file.as_raw_fd())).build();
    // SAFETY: no buffers.
    let res = unsafe { run_one(&mut h, fsync_raw) };
    assert_eq!(res, -libc::EACCES, "an fsync on a raw fd must be refused");

    // The registered image is the only fixed file.
    let other = opcode::Readv::new(types::Fixed(IMAGE + 1), iov.as_ptr(), 1)
        .offset(8192)
        .build();
    // SAFETY: `iov` and `buf` outlive the call.
    let res = unsafe { run_one(&mut h, other) };
    assert_eq!(res, -libc::EBADF, "no fixed file but the image");

    // The block path: readv, writev, and a draining fsync through the fixed image.
    let read = opcode::Readv::new(types::Fixed(IMAGE), iov.as_ptr(), 1)
        .offset(8192)
        .build();
    // SAFETY: `iov` and `buf` outlive the call.
    let res = unsafe { run_one(&mut h, read) };
    assert_eq!(res, 4096, "readv through the fixed image");
    assert_eq!(buf, data);

    let out: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 1) as u8).collect();
    let oiov = [libc::iovec {
        iov_base: out.as_ptr() as *mut _,
        iov_len: out.len(),
    }];
    let write = opcode::Writev::new(types::Fixed(IMAGE), oiov.as_ptr(), 1)
        .offset(16384)
        .build();
    // SAFETY: `oiov` and `out` outlive the call; the kernel only reads them.
    let res = unsafe { run_one(&mut h, write) };
    assert_eq!(res, 4096, "writev through the fixed image");
    assert_eq!(file_bytes(&d, 16384, 4096), out);

    // ASYNC (an offloaded copy) is allowed; a linked chain is not.
    let read_async = opcode::Readv::new(types::Fixed(IMAGE), iov.as_ptr(), 1)
        .offset(16384)
        .build()
        .flags(squeue::Flags::ASYNC);
    // SAFETY: `iov` and `buf` outlive the call.
    let res = unsafe { run_one(&mut h, read_async) };
    assert_eq!(res, 4096, "readv through a kernel worker");
    assert_eq!(buf, out);
    let linked = opcode::Readv::new(types::Fixed(IMAGE), iov.as_ptr(), 1)
        .offset(16384)
        .build()
        .flags(squeue::Flags::IO_LINK);
    // SAFETY: `iov` and `buf` outlive the call.
    let res = unsafe { run_one(&mut h, linked) };
    assert_eq!(res, -libc::EACCES, "IO_LINK is not an allowed SQE flag");

    let flush = opcode::Fsync::new(types::Fixed(IMAGE))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .flags(squeue::Flags::IO_DRAIN);
    // SAFETY: no buffers.
    let res = unsafe { run_one(&mut h, flush) };
    assert_eq!(res, 0, "a draining fsync through the fixed image");
}
