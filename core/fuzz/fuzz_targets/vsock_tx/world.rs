//! The rest of the world in a `vsock_tx` run: the broker's answers, the guest's receive
//! queue, host programs, and the end of the input (everything flushed through, then the
//! totals against the device's counters).

use std::io::Write;

use super::*;

impl Run<'_> {
    /// Answers the connection requests the device sent for the guest's REQUEST on `key`.
    pub(super) fn serve_broker(&mut self, key: (u32, u32)) -> Res {
        // One packet asks for one connection at most.
        if let Some((id, port)) = broker_request(self.rig.broker.as_fd())? {
            if port != key.0 {
                return Err(format!(
                    "the device asked the broker for port {port}; the guest asked for {}",
                    key.0
                ));
            }
            self.latest.insert(key, id);
            match self.policy {
                Policy::Defer => self.deferred.push((id, key)),
                p => self.answer(id, key, p),
            }
        }
        self.harvest();
        Ok(())
    }

    fn answer(&mut self, id: u64, key: (u32, u32), p: Policy) {
        let parent = self.rig.broker.as_fd();
        if p == Policy::Refuse {
            let errno = libc::ECONNREFUSED;
            broker_reply(parent, Reply::Failed { id, errno }, None);
            return;
        }
        let (ours, theirs) = stream_pair();
        let ours = (p != Policy::Gone).then_some(ours);
        broker_reply(parent, Reply::Connected { id }, Some(theirs.as_fd()));
        let i = self.streams.len();
        self.streams.push(HostStream::new(key, ours, false));
        // An answer to a request the device has since replaced reaches no connection.
        if self.latest.get(&key) == Some(&id) {
            self.by_key.insert(key, i);
        }
    }

    /// Answers the requests that waited (a policy that defers connects them now).
    pub(super) fn flush_deferred(&mut self) {
        let p = match self.policy {
            Policy::Defer => Policy::Connect,
            p => p,
        };
        for (id, key) in std::mem::take(&mut self.deferred) {
            self.answer(id, key, p);
        }
        self.harvest();
    }

    /// Runs the RX queue until it has nothing more to send or no buffer left; checks what
    /// it sent. (It stops by itself after `RX_BUDGET` packets, to look at its events.)
    pub(super) fn run_rx(&mut self) -> Res {
        const RX_BUDGET: usize = 256;
        self.harvest();
        for _ in 0..16 {
            let p = self.rxh.process(&mut self.rxq);
            self.rxq.flush();
            let used = self.rx.take_used()?;
            let n = used.len();
            for (posted, len) in used {
                self.rx_used(&posted, len, false)?;
            }
            if p == Progress::Drained || n < RX_BUDGET {
                break;
            }
            self.harvest();
        }
        Ok(())
    }

    /// A receive buffer came back with `len` bytes (`drained`: when the queue stopped).
    pub(super) fn rx_used(&mut self, posted: &RxPosted, len: u32, drained: bool) -> Res {
        self.seen.rx_used += 1;
        // (`RxRing::take_used` has checked that nothing outside its first `len` writable
        // bytes changed.)
        if matches!(posted.shape, RxShape::Small | RxShape::Readable) {
            self.seen.bad_rx += 1;
            return match len {
                0 => Ok(()),
                _ => Err(format!(
                    "{:?} rx buffer filled with {len} bytes",
                    posted.shape
                )),
            };
        }
        let Some((h, data)) = self.rx.packet(posted, len)? else {
            return match drained {
                true => Ok(()),
                false => Err("an rx buffer came back empty while the queue ran".into()),
            };
        };
        if debug() {
            eprintln!("rx: {h:?}");
        }
        if h.dst_cid != GUEST_CID {
            return Err(format!(
                "a packet for CID {} in the guest's queue",
                h.dst_cid
            ));
        }
        if is_reply(&h) {
            self.seen.rsts += 1;
            return self.replies.got(&h);
        }
        self.conn_packet(&h, &data)
    }

    /// A packet of a connection (from the host side).
    fn conn_packet(&mut self, h: &Header, data: &[u8]) -> Res {
        let shape_ok = h.src_cid == HOST_CID
            && h.ty == ty::STREAM
            && h.buf_alloc == TX_BUFFER
            && (op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op)
            && (h.op == op::RW || data.is_empty())
            && (h.op == op::SHUTDOWN || h.flags == 0)
            && h.flags & !(SHUTDOWN_RCV | SHUTDOWN_SEND) == 0;
        if !shape_ok {
            return Err(format!("the device sent {h:?}"));
        }
        let key = (h.src_port, h.dst_port);
        match h.op {
            op::REQUEST => {
                let c = self
                    .host_conns
                    .iter()
                    .find(|c| c.port == h.dst_port && self.streams[c.stream].key.0 == 0)
                    .ok_or_else(|| format!("a REQUEST no host program asked for: {h:?}"))?;
                let i = c.stream;
                self.streams[i].key = key;
                self.by_key.insert(key, i);
                self.maybe_conn.insert(key);
            }
            op::RST => self.seen.rsts += 1,
            op::RW => {
                let i = *self
                    .by_key
                    .get(&key)
                    .ok_or_else(|| format!("data for {key:?}, which no host program holds"))?;
                let (buf_alloc, fwd_cnt) = self.told.get(&key).copied().unwrap_or((0, 0));
                let s = &mut self.streams[i];
                s.delivered(data)?;
                let in_flight = (s.delivered as u32).wrapping_sub(fwd_cnt);
                if in_flight > buf_alloc {
                    return Err(format!(
                        "{key:?}: {in_flight} bytes in flight to the guest, its credit is {buf_alloc}"
                    ));
                }
                self.seen.to_guest += data.len() as u64;
            }
            _ => {}
        }
        Ok(())
    }

    /// Host program `i` (modulo how many there are) acts.
    pub(super) fn host(&mut self, i: usize, act: HostAct) -> Res {
        if self.streams.is_empty() {
            return Ok(());
        }
        let i = i % self.streams.len();
        let s = &mut self.streams[i];
        match act {
            HostAct::Write(n) => {
                s.write(i, usize::from(n));
            }
            HostAct::Read => {
                s.read_all(&mut self.rig.buf)?;
            }
            HostAct::ShutWrite => s.shut_write(),
            HostAct::Close => s.close(&mut self.rig.buf)?,
        }
        self.harvest();
        Ok(())
    }

    /// A host program connects through the listener and writes its line.
    pub(super) fn host_connect(&mut self, line: Line) {
        let port = HOST_CONN_PORT + self.host_conns.len() as u32;
        let Some(mut s) = connect_nonblocking(&self.rig.listener) else {
            return;
        };
        let text = match line {
            Line::Connect => format!("CONNECT {port}\n"),
            Line::Lower => format!("connect {port}\r\n"),
            Line::Garbage => "HELLO\n".to_string(),
            Line::Silent => String::new(),
        };
        if s.write_all(text.as_bytes()).is_err() {
            return;
        }
        let stream = self.streams.len();
        self.streams.push(HostStream::new((0, port), Some(s), true));
        self.host_conns.push(HostConn { port, stream });
        // Accepted on one look, its line read on the next.
        self.harvest();
        self.harvest();
    }

    /// Lets everything settle (answers, the link, host programs, the receive queue), stops
    /// the receive queue, and checks the totals.
    pub(super) fn finish(&mut self) -> Res {
        self.flush_deferred();
        for _ in 0..16 {
            let before = self.progress();
            if !self.link_expect.is_empty() {
                // The sibling reads; a packet that waited for room goes out.
                self.read_link()?;
                self.tx.handle_event(0, &mut self.txq);
                self.tx.process(&mut self.txq);
                self.txq.flush();
            }
            for s in self.streams.iter_mut().filter(|s| !s.eof) {
                s.read_all(&mut self.rig.buf)?;
            }
            // A few buffers at a time: the device takes them only when it has something.
            let free = usize::from(RX_SLOTS) - self.rx.outstanding();
            self.rx.post(RxShape::Normal, free.min(8));
            self.run_rx()?;
            if self.progress() == before {
                break;
            }
        }
        self.rxh.drain(&mut self.rxq);
        self.rxq.flush();
        for (posted, len) in self.rx.take_used()? {
            self.rx_used(&posted, len, true)?;
        }
        self.totals()
    }

    fn progress(&self) -> (u64, u64, usize) {
        let recv = self
            .streams
            .iter()
            .map(|s| s.recv + usize::from(s.eof))
            .sum();
        (self.seen.link_msgs, self.seen.rx_used, recv)
    }

    fn totals(&mut self) -> Res {
        self.replies.finish()?;
        if let Some(m) = self.link_expect.front() {
            return Err(format!(
                "a {}-byte packet for the sibling never arrived",
                m.len()
            ));
        }
        let (a, b) = (self.start, self.rig.dev.stats());
        let from_guest: usize = self.streams.iter().map(HostStream::data_received).sum();
        let accepted = self.streams.iter().filter(|s| s.got_ok()).count() as u64;
        let want = [
            (
                "sibling_packets_out",
                b.sibling_packets_out - a.sibling_packets_out,
                self.seen.link_msgs,
            ),
            (
                "bytes_from_guest",
                b.bytes_from_guest - a.bytes_from_guest,
                from_guest as u64,
            ),
            (
                "bytes_to_guest",
                b.bytes_to_guest - a.bytes_to_guest,
                self.seen.to_guest,
            ),
            ("resets_sent", b.resets_sent - a.resets_sent, self.seen.rsts),
            (
                "bad_rx_buffers",
                b.bad_rx_buffers - a.bad_rx_buffers,
                self.seen.bad_rx,
            ),
            (
                "host_connections",
                b.host_connections - a.host_connections,
                accepted,
            ),
        ];
        for (name, counted, seen) in want {
            if counted != seen {
                return Err(format!("counter {name} moved by {counted}, {seen} seen"));
            }
        }
        for s in &self.streams {
            if s.sock.is_some() && !s.eof && s.recv != s.expect.len() {
                return Err(format!(
                    "host program {:?} received {} of the {} bytes the guest sent on a live connection",
                    s.key,
                    s.recv,
                    s.expect.len()
                ));
            }
        }
        Ok(())
    }
}
