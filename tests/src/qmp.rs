//! A small QMP client, and hot-plugging vhost-user devices into a running guest.
//!
//! Why hot-plug: QEMU 7.2's `vhost-user-rng-pci` needs its back-end connected when it is
//! realized, but a chardev with `reconnect` connects in the background, so the device cannot
//! be given on the command line with reconnect. Added at run time, after the chardev has
//! connected, it realizes, and the chardev's reconnect brings it back after its back-end
//! dies. The guest gets PCIe root ports to plug into ([`hotplug_args`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest_device::VhostUserDev;
use crate::supervisor::Json;

/// How long one QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(60);

/// A QMP connection, capabilities negotiated.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// QEMU arguments for a QMP socket at `qmp` and `ports` PCIe root ports (`vurp0`...) to
/// hot-plug devices into.
pub fn hotplug_args(qmp: &Path, ports: usize) -> Vec<String> {
    let mut v = vec![
        "-qmp".to_owned(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ];
    for i in 0..ports {
        v.push("-device".into());
        v.push(format!("pcie-root-port,id=vurp{i},chassis={}", i + 1));
    }
    v
}

impl Qmp {
    /// Connects to QEMU's QMP socket (retrying until it exists, up to `timeout`) and
    /// negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("connecting to QMP {}", path.display()))
                }
                // QEMU creates the socket as it starts: poll for it.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(QMP_TIMEOUT))?;
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting:?}");
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Json> {
        let mut s = String::new();
        let n = self.reader.read_line(&mut s).context("reading from QMP")?;
        if n == 0 {
            bail!("QMP closed the connection");
        }
        Json::parse(&s).with_context(|| format!("QMP sent {s:?}"))
    }

    /// Runs `cmd` with `args` (a JSON object, or None) and returns its `return` value; a QMP
    /// error is an error with QEMU's description. Events in between are skipped.
    pub fn execute(&mut self, cmd: &str, args: Option<&str>) -> Result<Json> {
        let msg = match args {
            Some(a) => format!("{{\"execute\":{},\"arguments\":{a}}}\n", json_str(cmd)),
            None => format!("{{\"execute\":{}}}\n", json_str(cmd)),
        };
        self.writer
            .write_all(msg.as_bytes())
            .context("writing to QMP")?;
        loop {
            let reply = self.line()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                let desc = e.get("desc").map(Json::text).unwrap_or_default();
                bail!("QMP {cmd} failed: {desc}");
            }
        }
    }

    /// Whether chardev `id` is connected (QEMU names a socket chardev that is not
    /// `disconnected:...`).
    pub fn chardev_connected(&mut self, id: &str) -> Result<bool> {
        let list = self.execute("query-chardev", None)?;
        let Json::Arr(items) = list else {
            bail!("query-chardev returned {list:?}");
        };
        let item = items
            .iter()
            .find(|c| c.get("label").and_then(Json::as_str) == Some(id))
            .with_context(|| format!("no chardev {id}"))?;
        let name = item.get("filename").map(Json::text).unwrap_or_default();
        Ok(!name.starts_with("disconnected"))
    }
}

/// Hot-plugs `dev` as the `index`-th hot-plugged device (root port `vurpINDEX`): adds its
/// socket chardev (reconnecting every second when `dev.reconnect`), waits up to `timeout`
/// for it to connect, then adds the device. The guest sees it a moment later (ACPI/PCIe
/// hot-plug): wait for that in the guest.
pub fn hotplug(qmp: &mut Qmp, dev: &VhostUserDev, index: usize, timeout: Duration) -> Result<()> {
    let chardev = format!("vuhp{index}");
    let path = json_str(&dev.socket.to_string_lossy());
    let add = |reconnect: &str| {
        format!(
            "{{\"id\":\"{chardev}\",\"backend\":{{\"type\":\"socket\",\"data\":{{\
             \"addr\":{{\"type\":\"unix\",\"data\":{{\"path\":{path}}}}},\
             \"server\":false{reconnect}}}}}}}"
        )
    };
    if dev.reconnect {
        // QEMU 9.2 and later take reconnect-ms (and drop reconnect); 7.2 knows only reconnect.
        if let Err(e) = qmp.execute("chardev-add", Some(&add(",\"reconnect-ms\":1000"))) {
            if !format!("{e:#}").contains("reconnect-ms") {
                return Err(e);
            }
            qmp.execute("chardev-add", Some(&add(",\"reconnect\":1")))?;
        }
    } else {
        qmp.execute("chardev-add", Some(&add("")))?;
    }
    let deadline = Instant::now() + timeout;
    while !qmp.chardev_connected(&chardev)? {
        if Instant::now() >= deadline {
            bail!(
                "chardev {chardev} did not connect to {} within {timeout:?}",
                dev.socket.display()
            );
        }
        // QMP has no event for a client chardev's connection: poll.
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut args = format!(
        "{{\"driver\":{},\"chardev\":\"{chardev}\",\"id\":\"vuhpdev{index}\",\"bus\":\"vurp{index}\"",
        json_str(&dev.driver)
    );
    for (k, v) in &dev.props {
        args.push_str(&format!(",{}:{}", json_str(k), json_str(v)));
    }
    args.push('}');
    qmp.execute("device_add", Some(&args))?;
    Ok(())
}

/// Removes the `index`-th hot-plugged device and its chardev ([`hotplug`]'s ids): asks QEMU
/// to unplug the device, waits up to `timeout` for the guest to let it go (PCIe hot-unplug
/// needs the guest's cooperation), then removes the chardev, so that [`hotplug`] can plug a
/// fresh device at the same index.
pub fn unplug(qmp: &mut Qmp, index: usize, timeout: Duration) -> Result<()> {
    let id = format!("vuhpdev{index}");
    qmp.execute("device_del", Some(&format!("{{\"id\":\"{id}\"}}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        let list = qmp.execute("qom-list", Some("{\"path\":\"/machine/peripheral\"}"))?;
        let Json::Arr(items) = list else {
            bail!("qom-list returned {list:?}");
        };
        if !items
            .iter()
            .any(|c| c.get("name").and_then(Json::as_str) == Some(id.as_str()))
        {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the guest did not let {id} go within {timeout:?}");
        }
        // DEVICE_DELETED is an event; polling the tree needs no event plumbing.
        std::thread::sleep(Duration::from_millis(100));
    }
    qmp.execute(
        "chardev-remove",
        Some(&format!("{{\"id\":\"vuhp{index}\"}}")),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        let args = hotplug_args(Path::new("/t/q.sock"), 2).join(" ");
        assert!(args.contains("-qmp unix:/t/q.sock,server=on,wait=off"));
        assert!(args.contains("pcie-root-port,id=vurp1,chassis=2"));
    }
}
