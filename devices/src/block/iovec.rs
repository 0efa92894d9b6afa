//! A reusable iovec array pointing into guest memory, with a cursor for resuming short
//! transfers.

/// iovecs naming guest buffers. Capacity is kept across requests, so the hot path does not
/// allocate once warmed up.
#[derive(Debug, Default)]
pub(crate) struct IoVecs {
    v: Vec<libc::iovec>,
    pos: usize,
}

// SAFETY: `IoVecs` only stores addresses and lengths; it never dereferences them. They are
// handed to the kernel by the thread that owns the queue handler, and the memory they name is
// kept mapped by the request's chain until the request is completed.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Empties the array, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.v.clear();
        self.pos = 0;
    }

    /// Appends a buffer at host address `host`.
    pub(crate) fn push(&mut self, host: usize, len: usize) {
        self.v.push(libc::iovec {
            iov_base: host as *mut libc::c_void,
            iov_len: len,
        });
    }

    /// The iovecs not yet consumed.
    pub(crate) fn remaining(&self) -> &[libc::iovec] {
        &self.v[self.pos..]
    }

    /// Whether every byte has been consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.v.len()
    }

    /// Marks `n` bytes as transferred: drops whole iovecs, trims a partial one.
    pub(crate) fn consume(&mut self, mut n: usize) {
        while n > 0 && self.pos < self.v.len() {
            let cur = &mut self.v[self.pos];
            if n >= cur.iov_len {
                n -= cur.iov_len;
                self.pos += 1;
            } else {
                cur.iov_base = cur.iov_base.wrapping_byte_add(n);
                cur.iov_len -= n;
                n = 0;
            }
        }
        // Skip empty entries so `is_empty` is exact.
        while self.pos < self.v.len() && self.v[self.pos].iov_len == 0 {
            self.pos += 1;
        }
    }

    /// Whether every buffer starts and ends on an `align` boundary (what O_DIRECT needs).
    pub(crate) fn aligned(&self, align: usize) -> bool {
        self.v
            .iter()
            .all(|e| (e.iov_base as usize).is_multiple_of(align) && e.iov_len.is_multiple_of(align))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_resumes_mid_buffer() {
        let mut v = IoVecs::default();
        v.push(0x1000, 512);
        v.push(0x3000, 1024);
        v.consume(100);
        assert_eq!(v.remaining().len(), 2);
        assert_eq!(v.remaining()[0].iov_base as usize, 0x1000 + 100);
        assert_eq!(v.remaining()[0].iov_len, 412);
        v.consume(412 + 24);
        assert_eq!(v.remaining().len(), 1);
        assert_eq!(v.remaining()[0].iov_base as usize, 0x3000 + 24);
        v.consume(1000);
        assert!(v.is_empty());
        v.clear();
        assert!(v.is_empty());
        v.push(0x200, 512);
        assert!(v.aligned(512));
        assert!(!v.aligned(4096));
    }
}
