//! Vhost-user devices of any type for the guest harness (`GuestConfig::vhost_user`):
//! `-chardev socket,id=..,path=..[,reconnect=1] -device DRIVER,chardev=..[,PROP=VALUE...]`.
//!
//! QEMU 7.2's `vhost-user-rng-pci` cannot be realized on a chardev with `reconnect=1` given on
//! the command line (that chardev connects in the background, and the device's realize needs
//! the connection at once): such a device is hot-plugged once the guest runs instead, see
//! [`crate::qmp::hotplug`].

use std::path::PathBuf;

/// One vhost-user device whose back-end listens on `socket`.
#[derive(Debug, Clone)]
pub struct VhostUserDev {
    /// The QEMU device type (`vhost-user-rng-pci`, `vhost-user-vsock-pci`...).
    pub driver: String,
    /// The back-end's listening UNIX socket.
    pub socket: PathBuf,
    /// `reconnect=1` on the chardev: QEMU reconnects every second after the back-end goes
    /// away (and does not wait for it at startup).
    pub reconnect: bool,
    /// Extra device properties, in order (`("guest-cid", "3")`).
    pub props: Vec<(String, String)>,
}

impl VhostUserDev {
    /// A `driver` device on `socket`, no reconnect, no extra properties.
    pub fn new(driver: &str, socket: impl Into<PathBuf>) -> Self {
        VhostUserDev {
            driver: driver.to_owned(),
            socket: socket.into(),
            reconnect: false,
            props: Vec::new(),
        }
    }

    /// QEMU's entropy device (one queue of four descriptors).
    pub fn rng(socket: impl Into<PathBuf>) -> Self {
        Self::new("vhost-user-rng-pci", socket)
    }

    /// The chardev id of the `index`-th such device.
    pub fn chardev_id(index: usize) -> String {
        format!("vudev{index}")
    }

    /// The device id (`-device ...,id=`) of the `index`-th such device.
    pub fn device_id(index: usize) -> String {
        format!("vudevice{index}")
    }

    /// `-chardev ... -device ...` for the `index`-th such device of a guest.
    pub fn qemu_args(&self, index: usize) -> Vec<String> {
        let chardev = Self::chardev_id(index);
        let mut c = format!(
            "socket,id={chardev},path={}",
            qemu_escape(&self.socket.to_string_lossy())
        );
        if self.reconnect {
            c.push_str(",reconnect=1");
        }
        let mut d = format!(
            "{},chardev={chardev},id={}",
            self.driver,
            Self::device_id(index)
        );
        for (k, v) in &self.props {
            d.push_str(&format!(",{k}={}", qemu_escape(v)));
        }
        vec!["-chardev".into(), c, "-device".into(), d]
    }
}

/// QEMU option values escape a comma by doubling it.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_name_the_chardev_and_the_properties() {
        let mut d = VhostUserDev::rng("/tmp/a,b.sock");
        d.reconnect = true;
        d.props.push(("x".into(), "1,2".into()));
        assert_eq!(
            d.qemu_args(3),
            [
                "-chardev",
                "socket,id=vudev3,path=/tmp/a,,b.sock,reconnect=1",
                "-device",
                "vhost-user-rng-pci,chardev=vudev3,id=vudevice3,x=1,,2"
            ]
        );
    }
}
