//! When a queue tries a buffered read or write inline with RWF_NOWAIT before handing it to
//! its ring. A try that would have blocked (EAGAIN: the data is not in the page cache, or a
//! write would wait) costs a system call that does nothing, and on an image larger than the
//! page cache read at random most reads fail it. So each path (reads, writes) of a queue
//! remembers its last outcome: after an EAGAIN the next 1, 2, 4 ... up to 64 requests of that
//! path go to the ring without trying; a try that succeeds resets the backoff. (A file that
//! refuses the flag outright, EOPNOTSUPP, is remembered for good by `Disk::nowait_for`.)

/// Longest run of requests that skip the inline try after failures.
const MAX_SKIP: u16 = 64;

/// Per queue: whether to try RWF_NOWAIT inline, per path.
#[derive(Debug, Default)]
pub(crate) struct NowaitGate {
    /// Requests still to skip, per path (0: reads, 1: writes).
    skip: [u16; 2],
    /// Length of the last skip run (doubles on each EAGAIN), per path.
    backoff: [u16; 2],
}

impl NowaitGate {
    /// Whether this request should try inline first (consumes one skip otherwise).
    pub(crate) fn try_inline(&mut self, write: bool) -> bool {
        let i = usize::from(write);
        if self.skip[i] > 0 {
            self.skip[i] -= 1;
            return false;
        }
        true
    }

    /// Records the outcome of a try: `would_block` for EAGAIN.
    pub(crate) fn outcome(&mut self, write: bool, would_block: bool) {
        let i = usize::from(write);
        if would_block {
            self.backoff[i] = (self.backoff[i].saturating_mul(2)).clamp(1, MAX_SKIP);
            self.skip[i] = self.backoff[i];
        } else {
            self.backoff[i] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_and_success_resets() {
        let mut g = NowaitGate::default();
        assert!(g.try_inline(false));
        g.outcome(false, true);
        // One skipped, then a try.
        assert!(!g.try_inline(false));
        assert!(g.try_inline(false));
        g.outcome(false, true);
        assert!(!g.try_inline(false) && !g.try_inline(false));
        assert!(g.try_inline(false));
        // Writes are a path of their own.
        assert!(g.try_inline(true));
        for _ in 0..10 {
            g.outcome(false, true);
        }
        let skipped = (0..100).take_while(|_| !g.try_inline(false)).count();
        assert_eq!(skipped, usize::from(MAX_SKIP));
        g.outcome(false, false);
        assert!(g.try_inline(false), "a success tries every request again");
        g.outcome(false, true);
        assert!(!g.try_inline(false));
        assert!(g.try_inline(false), "the backoff restarted from one");
    }
}
