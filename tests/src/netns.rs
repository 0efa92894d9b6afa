//! A named network namespace that a test creates for itself (`ip netns add`) and deletes when
//! it is dropped, failure or not. Everything network-facing of a net test lives in it: the
//! taps, the launcher (started from a thread that entered the namespace: a child inherits
//! the namespace of the thread that forks it), host-side peers (threads that entered it), and
//! every address. Needs root.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};

/// A network namespace of the test's own, deleted on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    /// `/run/netns/NAME`, open: threads enter the namespace through it.
    file: File,
}

impl TestNetns {
    /// `ip netns add vu-TAG-PID-N`, loopback up, IPv6 off (so the kernel sends nothing of its
    /// own on the taps).
    pub fn new(tag: &str) -> Result<TestNetns> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vu-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]).context("creating a network namespace (root needed)")?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = run_ip(&["netns", "del", &name]);
                return Err(e).context("opening the new network namespace");
            }
        };
        let ns = TestNetns { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.run(|| {
            for knob in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1")
                    .with_context(|| format!("disabling IPv6 ({knob})"))?;
            }
            Ok(())
        })?;
        Ok(ns)
    }

    /// Its name (for `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`; a failure carries ip's message.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// `ip -n NAME ARGS...`, its standard output.
    pub fn ip_output(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ip")?;
        if !out.status.success() {
            bail!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates tap `tap` (with `multi_queue` or not, always `vnet_hdr`), sets it up and, with
    /// `addr` (`10.77.0.1/24`), gives it that address.
    pub fn add_tap(&self, tap: &str, multi_queue: bool, addr: Option<&str>) -> Result<()> {
        let mut args = vec!["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"];
        if multi_queue {
            args.push("multi_queue");
        }
        self.ip(&args)?;
        if let Some(a) = addr {
            self.ip(&["addr", "add", a, "dev", tap])?;
        }
        self.ip(&["link", "set", tap, "up"])
    }

    /// Makes `tap` send every frame written into it back out of it (to whoever reads the
    /// tap): an ingress qdisc and a filter that matches everything with action mirred egress
    /// redirect to the same tap. For benchmarks and tests of a net server without a peer.
    pub fn reflect(&self, tap: &str) -> Result<()> {
        let tc = |args: &[&str]| -> Result<()> {
            let out = self
                .command("tc")
                .args(args)
                .stdin(Stdio::null())
                .output()
                .context("running tc (iproute2)")?;
            if !out.status.success() {
                bail!(
                    "tc {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        tc(&["qdisc", "add", "dev", tap, "ingress"])?;
        tc(&[
            "filter", "add", "dev", tap, "parent", "ffff:", "protocol", "all", "u32", "match",
            "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", tap,
        ])
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that entered the namespace, and returns its result. Processes
    /// that `f` spawns run in the namespace too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("a thread in netns {} panicked", self.name))?
        })
    }

    /// Starts `f` on a thread of its own that entered the namespace (a host-side peer).
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<JoinHandle<Result<T>>> {
        let file = self.file.try_clone().context("duplicating the netns fd")?;
        let ns = self.name.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering netns {ns}"))?;
                f()
            })
            .context("spawning a thread")
    }

    /// Moves the calling thread into the namespace (for good).
    fn enter(&self) -> Result<()> {
        nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", self.name))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete netns {}: {e:#}", self.name);
        }
    }
}

fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
