//! The control channel between the launcher and a device process: one socketpair per device,
//! opened by the launcher before the device starts (the device's end is fd 5).
//!
//! It starts with one byte, device to launcher: "ready" (jailed, every thread up, serving).
//! After it, the channel carries the framed requests and responses of `vu_core::control`
//! (status, sleep/wake, snapshot/restore, resize, test triggers), answered by the device's
//! control thread (`serve.rs`).

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

/// A message from a device to the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMessage {
    /// The device is jailed and about to serve its socket.
    Ready,
}

impl DeviceMessage {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            DeviceMessage::Ready => b'R',
        }
    }

    /// The message a byte stands for.
    pub fn from_byte(b: u8) -> Option<DeviceMessage> {
        match b {
            b'R' => Some(DeviceMessage::Ready),
            _ => None,
        }
    }
}

/// Sends `msg` on `stream`, with write(2) (std's socket writes use sendto(2); the device's
/// seccomp policy allows write, which it needs for logging anyway).
pub fn send(stream: &UnixStream, msg: DeviceMessage) -> io::Result<()> {
    loop {
        match nix::unistd::write(stream.as_fd(), &[msg.to_byte()]) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn ready_round_trips() {
        let (a, mut b) = UnixStream::pair().expect("socketpair");
        send(&a, DeviceMessage::Ready).expect("send");
        let mut byte = [0u8; 1];
        b.read_exact(&mut byte).expect("read");
        assert_eq!(
            DeviceMessage::from_byte(byte[0]),
            Some(DeviceMessage::Ready)
        );
        assert_eq!(DeviceMessage::from_byte(0), None);
    }
}
