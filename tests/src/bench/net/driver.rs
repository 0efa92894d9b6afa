//! The net data path, on one thread: at most `window` frames' worth of payload is out at
//! once, sent on the transmit queue and not yet back on the receive queue (a closed loop: the
//! load never outruns what comes back, so the tap's queue does not overflow; counted in
//! payload bytes, since a server may hand a TSO frame back as segments; what does not come
//! back within 50 ms of quiet is written off), all the same frame with its own sequence
//! number, paced to `rate` frames/s for a light load. The receive queue keeps every buffer
//! posted and takes frames as they come back (mergeable buffers: the first carries
//! num_buffers). Used entries are reaped in
//! batches, the available index is published once per batch and the server kicked only when
//! it asks. Nothing is allocated per frame.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::frames::{FrameKind, HDR_LEN};
use crate::bench::control::QueueFds;
use crate::bench::histogram::Histogram;
use crate::bench::memory::QueueLayout;
use crate::bench::procstat::thread_cpu_ns;
use crate::bench::ring::{DriverRing, DESC_F_WRITE};

/// Send timestamps kept for matching returning frames (a power of two).
const STAMPS: usize = 1 << 16;

/// What the driver does.
#[derive(Debug, Clone)]
pub struct NetWork {
    /// The frames.
    pub kind: FrameKind,
    /// Transmit frames in flight at most.
    pub window: usize,
    /// Frames per second (`None`: as fast as the server takes them).
    pub rate: Option<u64>,
    /// Measured run time.
    pub runtime: Duration,
    /// Unmeasured warm-up before it.
    pub warmup: Duration,
    /// Bytes per receive buffer.
    pub rx_buf: u32,
    /// Receive buffers may be merged (MRG_RXBUF negotiated).
    pub mergeable: bool,
    /// Compare every frame that comes back with the one sent (64 and 1500 only).
    pub check: bool,
    /// Give up after this long without progress.
    pub stall_timeout: Duration,
}

/// What the driver measured.
#[derive(Debug, Clone, Default)]
pub struct NetResult {
    /// Frames the server took from the transmit queue.
    pub tx_frames: u64,
    /// Frames that came back on the receive queue.
    pub rx_frames: u64,
    /// Their bytes (Ethernet frames, no virtio-net header).
    pub rx_bytes: u64,
    /// Frames that came back matched to a frame sent (round-trip latency recorded).
    pub matched: u64,
    /// Payload bytes written off: not back within 50 ms of quiet.
    pub written_off: u64,
    /// Frames that came back different from the frame sent (`check`).
    pub mismatched: u64,
    /// Frames sent before this phase (the warm-up's, written off there) that came back
    /// during it: not counted as back (nor their bytes), so that a phase never has more back
    /// than it sent.
    pub late: u64,
    /// Round-trip latency, ns.
    pub latency: Histogram,
    /// Kicks sent.
    pub kicks: u64,
    /// Sleeps on the call eventfds.
    pub waits: u64,
    /// CPU time of the driver thread, ns.
    pub cpu_ns: u64,
    /// From the start of the measured run to the last frame back.
    pub elapsed: Duration,
    /// Final available indexes (receive, transmit).
    pub final_avail: [u16; 2],
}

/// The driver of one queue pair.
#[derive(Debug)]
pub struct NetDriver {
    work: NetWork,
    rx: DriverRing,
    tx: DriverRing,
    rx_fds: QueueFds,
    tx_fds: QueueFds,
    rx_layout: QueueLayout,
    tx_layout: QueueLayout,
    template: Vec<u8>,
    free: Vec<u16>,
    /// Transmit slots the server holds.
    busy: Vec<bool>,
    stamps: Vec<u64>,
    next_seq: u64,
    /// Payload bytes back and written off, since the start: with `next_seq`, what is out.
    back: u64,
    written_off: u64,
    /// Payload bytes per frame sent.
    payload: u64,
    rx_avail: u64,
    tx_avail: u64,
    /// Receive buffers of the frame being assembled still to come.
    merging: u16,
    /// The frame being assembled was sent before this phase (`NetResult::late`).
    merging_late: bool,
    /// The first sequence number of the current phase.
    phase_seq0: u64,
    epoll: Option<Epoll>,
}

impl NetDriver {
    /// Builds the driver: writes the frame into every transmit slot and posts every receive
    /// buffer.
    pub fn new(
        work: NetWork,
        rings: (DriverRing, DriverRing),
        fds: (QueueFds, QueueFds),
        layouts: (QueueLayout, QueueLayout),
    ) -> Self {
        let (mut rx, mut tx) = rings;
        let template = work.kind.build();
        for i in 0..work.window {
            tx.memory().write(layouts.1.buffer(i), &template);
            tx.set_desc(i as u16, layouts.1.buffer(i), template.len() as u32, 0, 0);
        }
        for i in 0..rx.size() {
            rx.set_desc(
                i,
                layouts.0.buffer(usize::from(i)),
                work.rx_buf,
                DESC_F_WRITE,
                0,
            );
            rx.push_avail(i);
        }
        NetDriver {
            free: (0..work.window as u16).rev().collect(),
            busy: vec![false; work.window],
            stamps: vec![u64::MAX; STAMPS],
            next_seq: 0,
            back: 0,
            written_off: 0,
            payload: (work.kind.frame_len() - work.kind.payload_offset()) as u64,
            rx_avail: u64::from(rx.size()),
            tx_avail: 0,
            merging: 0,
            merging_late: false,
            phase_seq0: 0,
            epoll: None,
            rx,
            tx,
            rx_fds: fds.0,
            tx_fds: fds.1,
            rx_layout: layouts.0,
            tx_layout: layouts.1,
            template,
            work,
        }
    }

    fn send(&mut self, slot: u16, now_ns: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let at = self.tx_layout.buffer(usize::from(slot))
            + (HDR_LEN + self.work.kind.payload_offset()) as u64;
        self.tx.memory().write(at, &seq.to_le_bytes());
        self.stamps[seq as usize % STAMPS] = now_ns;
        self.busy[usize::from(slot)] = true;
        self.tx.push_avail(slot);
        self.tx_avail += 1;
    }

    /// Takes a returning frame's first buffer `id` of `len` bytes.
    fn first_buffer(&mut self, id: u32, len: u32, now_ns: u64, r: &mut NetResult) {
        let base = self.rx_layout.buffer(id as usize);
        let mem = self.rx.memory().clone();
        let mut hdr = [0u8; HDR_LEN];
        let n = (len as usize).min(HDR_LEN);
        mem.read(base, &mut hdr[..n]);
        let buffers = if self.work.mergeable {
            u16::from_le_bytes([hdr[10], hdr[11]]).max(1)
        } else {
            1
        };
        self.merging = buffers - 1;
        let off = HDR_LEN + self.work.kind.payload_offset();
        // Whatever comes back is no longer out, whichever phase sent it.
        self.back += u64::from(len).saturating_sub(off as u64);
        let seq = ((len as usize) >= off + 8).then(|| {
            let mut seq = [0u8; 8];
            mem.read(base + off as u64, &mut seq);
            u64::from_le_bytes(seq)
        });
        self.merging_late = seq.is_some_and(|s| s < self.phase_seq0);
        if self.merging_late {
            r.late += 1;
            return;
        }
        r.rx_frames += 1;
        r.rx_bytes += u64::from(len.saturating_sub(HDR_LEN as u32));
        let Some(seq) = seq else {
            return;
        };
        if seq < self.next_seq && self.next_seq - seq <= STAMPS as u64 {
            let slot = &mut self.stamps[seq as usize % STAMPS];
            if *slot != u64::MAX {
                r.latency.record(now_ns.saturating_sub(*slot));
                *slot = u64::MAX;
                r.matched += 1;
            }
        }
        if self.work.check && self.work.kind != FrameKind::Tso {
            let want = &self.template[HDR_LEN..];
            let got_len = len as usize - HDR_LEN;
            let mut got = vec![0u8; got_len];
            mem.read(base + HDR_LEN as u64, &mut got);
            let p = self.work.kind.payload_offset();
            let same =
                got_len == want.len() && got[..p] == want[..p] && got[p + 8..] == want[p + 8..];
            r.mismatched += u64::from(!same);
        }
    }

    /// Payload bytes sent and not yet back (nor written off).
    fn out(&self) -> u64 {
        (self.next_seq * self.payload).saturating_sub(self.back + self.written_off)
    }

    fn kick(&mut self, r: &mut NetResult) -> Result<()> {
        if self.tx.publish() {
            r.kicks += 1;
            self.tx_fds.kick.write(1)?;
        }
        if self.rx.publish() {
            r.kicks += 1;
            self.rx_fds.kick.write(1)?;
        }
        Ok(())
    }

    /// Reaps both used rings; returns whether anything was there.
    fn reap(&mut self, now_ns: u64, r: &mut NetResult) -> Result<bool> {
        let mut any = false;
        let used = self.tx.used_idx();
        while let Some((id, _)) = self.tx.pop_used(used) {
            if !self.busy.get(id as usize).copied().unwrap_or(false) {
                bail!("the server used transmit descriptor {id}, which is no frame in flight");
            }
            self.busy[id as usize] = false;
            self.free.push(id as u16);
            r.tx_frames += 1;
            any = true;
        }
        let used = self.rx.used_idx();
        while let Some((id, len)) = self.rx.pop_used(used) {
            if id >= u32::from(self.rx.size()) || len > self.work.rx_buf {
                bail!("the server used receive descriptor {id} with {len} bytes");
            }
            if self.merging > 0 {
                self.merging -= 1;
                if !self.merging_late {
                    r.rx_bytes += u64::from(len);
                }
                self.back += u64::from(len);
            } else {
                self.first_buffer(id, len, now_ns, r);
            }
            self.rx.push_avail(id as u16);
            self.rx_avail += 1;
            any = true;
        }
        Ok(any)
    }

    fn wait(&mut self, timeout: Duration, r: &mut NetResult) -> Result<()> {
        let rx_armed = self.rx.arm_notification();
        let tx_armed = self.tx.arm_notification();
        if rx_armed || tx_armed {
            return Ok(());
        }
        r.waits += 1;
        let mut events = [EpollEvent::default(); 2];
        let ms = timeout.as_millis().clamp(1, 100) as i32;
        let Some(epoll) = self.epoll.as_ref() else {
            bail!("the driver waits before it was started");
        };
        match epoll.wait(ms, &mut events) {
            Ok(n) => {
                for e in &events[..n] {
                    let fd = if e.data() == 0 {
                        &self.rx_fds
                    } else {
                        &self.tx_fds
                    };
                    let _ = fd.call.read();
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => bail!("epoll_wait on the call eventfds: {e}"),
        }
        Ok(())
    }

    /// Sends what the window (and the pace) allow; returns when the next frame is due if the
    /// pace holds it back.
    fn fill(&mut self, start: Instant, now: Instant, sent0: u64) -> Option<Duration> {
        let now_ns = now.duration_since(start).as_nanos() as u64;
        loop {
            if self.out() >= self.work.window as u64 * self.payload {
                return None;
            }
            let &slot = self.free.last()?;
            if let Some(rate) = self.work.rate {
                let due = (self.next_seq - sent0) as f64 / rate as f64;
                let at = start + Duration::from_secs_f64(due);
                if at > now {
                    return Some(at - now);
                }
            }
            self.free.pop();
            self.send(slot, now_ns);
        }
    }

    /// Sends for `length` (saturated or paced), then waits until every frame sent is back
    /// or nothing has come back for a moment.
    fn phase(&mut self, length: Duration) -> Result<NetResult> {
        let mut r = NetResult::default();
        let start = Instant::now();
        let deadline = start + length;
        let mut last_progress = start;
        let mut last_rx = start;
        let mut written_at = start;
        let sent0 = self.next_seq;
        self.phase_seq0 = sent0;
        loop {
            let now = Instant::now();
            let now_ns = now.duration_since(start).as_nanos() as u64;
            let sending = now < deadline;
            let next_send = if sending {
                self.fill(start, now, sent0)
            } else {
                None
            };
            let rx_before = r.rx_frames;
            let progressed = self.reap(now_ns, &mut r)?;
            self.kick(&mut r)?;
            if r.rx_frames > rx_before {
                last_rx = now;
            }
            if progressed {
                last_progress = now;
            }
            let in_flight = self.work.window - self.free.len();
            let sent = self.next_seq - sent0;
            let out = self.out();
            if out > 0 && now.duration_since(last_rx.max(written_at)) > Duration::from_millis(50) {
                // Lost on the way (the tap dropped it): stop waiting for it.
                self.written_off += out;
                r.written_off += out;
                written_at = now;
            }
            if !sending && in_flight == 0 && self.merging == 0 {
                let quiet = now.duration_since(last_rx);
                if self.out() == 0 || quiet > Duration::from_millis(200) {
                    r.elapsed = last_rx.duration_since(start).max(Duration::from_micros(1));
                    return Ok(r);
                }
            }
            if now.duration_since(last_progress) > self.work.stall_timeout {
                bail!(
                    "nothing moved for {:?}: {} frames sent, {} taken, {} back; {} kicks, {} \
                     waits; transmit ring: {}; receive ring: {}",
                    self.work.stall_timeout,
                    sent,
                    r.tx_frames,
                    r.rx_frames,
                    r.kicks,
                    r.waits,
                    self.tx.indexes(),
                    self.rx.indexes()
                );
            }
            if !progressed {
                let timeout = next_send.unwrap_or(Duration::from_millis(50));
                self.wait(timeout, &mut r)?;
            }
        }
    }

    /// The warm-up (not measured): the server is moving frames when it returns.
    pub fn warm_up(&mut self) -> Result<()> {
        if self.epoll.is_none() {
            let epoll = Epoll::new()?;
            for (i, fds) in [&self.rx_fds, &self.tx_fds].into_iter().enumerate() {
                epoll.ctl(
                    ControlOperation::Add,
                    fds.call.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, i as u64),
                )?;
            }
            self.epoll = Some(epoll);
        }
        if !self.work.warmup.is_zero() {
            self.phase(self.work.warmup)?;
        }
        Ok(())
    }

    /// The measured run (after [`Self::warm_up`]).
    pub fn measure(mut self) -> Result<NetResult> {
        self.warm_up_if_needed()?;
        let cpu0 = thread_cpu_ns();
        let mut r = self.phase(self.work.runtime)?;
        r.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
        r.final_avail = [self.rx_avail as u16, self.tx_avail as u16];
        Ok(r)
    }

    fn warm_up_if_needed(&mut self) -> Result<()> {
        if self.epoll.is_none() {
            let warmup = std::mem::take(&mut self.work.warmup);
            self.warm_up()?;
            self.work.warmup = warmup;
        }
        Ok(())
    }
}
