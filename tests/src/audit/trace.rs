//! Reading an `strace -ff -ttt` trace: one file per thread (`PREFIX.TID`), each line a
//! system call with its raw arguments (only the calls in [`DECODED`] are decoded, for
//! clone's flags and the host tid of new threads), a signal, or an exit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{ensure, Result};
use launcher::jail::policy::constant;

/// System calls strace decodes for us (we need clone's flags and the host tid of new threads,
/// which raw mode would hide); every other call is printed raw: hex arguments.
pub const DECODED: &str = "clone,clone3,execve,execveat,seccomp";

/// One line of an `strace -ff -ttt` file.
#[derive(Debug, Clone)]
pub enum Event {
    /// A system call.
    Call(Call),
    /// `+++ killed by SIG +++`, with its time.
    Killed(f64, String),
    /// Anything else (signal deliveries, exits).
    Other,
}

#[derive(Debug, Clone)]
pub struct Call {
    /// When (seconds since the epoch).
    pub time: f64,
    /// The system call's name (`syscall_0x1b4` for one strace does not know).
    pub name: String,
    /// Raw arguments; None where strace decoded them (or they did not parse).
    pub args: Option<[u64; 6]>,
    /// The text after the name, for decoded calls and reports.
    pub text: String,
    /// The return value as printed (`0x3`, `-1 ENOENT (...)`, `?`).
    pub ret: String,
}

impl Call {
    /// The call succeeded.
    pub fn ok(&self) -> bool {
        !self.ret.starts_with('-') && !self.ret.starts_with('?')
    }

    /// The host tid of the new thread or process, for a successful clone/clone3/fork/vfork.
    pub fn child_tid(&self) -> Option<u32> {
        if !matches!(self.name.as_str(), "clone" | "clone3" | "fork" | "vfork") || !self.ok() {
            return None;
        }
        // "2 /* 15328 in strace's PID NS */" or "15328".
        let host = match self.ret.split_once("/* ") {
            Some((_, rest)) => rest.split_whitespace().next()?,
            None => self.ret.split_whitespace().next()?,
        };
        host.parse().ok()
    }

    /// clone's `flags=` text.
    pub fn flags_text(&self) -> &str {
        self.text
            .split_once("flags=")
            .map(|(_, rest)| rest.split([',', ' ', ')', '}']).next().unwrap_or(""))
            .unwrap_or("")
    }
}

/// A trace: the events of each thread, by host tid.
#[derive(Debug, Default)]
pub struct Trace {
    /// Each thread's events, by host tid.
    pub threads: BTreeMap<u32, Vec<Event>>,
}

impl Trace {
    /// Reads every `*.TID` file in `dir`.
    pub fn read(dir: &Path) -> Result<Trace> {
        let mut t = Trace::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(tid) = path
                .extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u32>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)?;
            t.threads
                .insert(tid, text.lines().map(parse_line).collect());
        }
        ensure!(
            !t.threads.is_empty(),
            "strace wrote nothing in {}",
            dir.display()
        );
        Ok(t)
    }

    /// Thread group (process) of every thread, from the clone calls that created them.
    pub fn processes(&self) -> HashMap<u32, u32> {
        let mut parent: HashMap<u32, (u32, bool)> = HashMap::new();
        for (&tid, events) in &self.threads {
            for e in events {
                if let Event::Call(c) = e {
                    if let Some(child) = c.child_tid() {
                        let thread =
                            c.name.starts_with("clone") && c.flags_text().contains("CLONE_THREAD");
                        parent.insert(child, (tid, thread));
                    }
                }
            }
        }
        let mut tgid = HashMap::new();
        for &tid in self.threads.keys() {
            let mut t = tid;
            // Walk up through CLONE_THREAD links (bounded: the map has no cycles).
            for _ in 0..self.threads.len() {
                match parent.get(&t) {
                    Some(&(p, true)) => t = p,
                    _ => break,
                }
            }
            tgid.insert(tid, t);
        }
        tgid
    }
}

/// Parses one line of a trace file.
pub fn parse_line(line: &str) -> Event {
    let Some((time, rest)) = line.split_once(' ') else {
        return Event::Other;
    };
    let Ok(time) = time.parse::<f64>() else {
        return Event::Other;
    };
    let rest = rest.trim_start();
    if let Some(sig) = rest.strip_prefix("+++ killed by ") {
        return Event::Killed(time, sig.trim_end_matches(" +++").to_owned());
    }
    let Some(open) = rest.find('(') else {
        return Event::Other;
    };
    let name = &rest[..open];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Event::Other;
    }
    let (text, ret) = match split_return(rest) {
        Some((call, r)) => (&call[open + 1..call.len() - 1], r.trim().to_owned()),
        None => (&rest[open + 1..], "?".to_owned()),
    };
    let text = text.trim_end_matches(" <unfinished ...>").trim_end();
    let args = if DECODED.split(',').any(|d| d == name) {
        None
    } else {
        parse_raw_args(text)
    };
    Event::Call(Call {
        time,
        name: name.to_owned(),
        args,
        text: text.to_owned(),
        ret,
    })
}

/// Splits `name(args)   = ret` at the last `=` that follows the closing parenthesis (strace
/// pads with spaces before `=`; the return value may carry a decoded comment).
fn split_return(rest: &str) -> Option<(&str, &str)> {
    let mut end = rest.len();
    while let Some(eq) = rest[..end].rfind(" = ") {
        let call = rest[..eq].trim_end();
        if call.ends_with(')') {
            return Some((call, &rest[eq + 3..]));
        }
        end = eq;
    }
    None
}

fn parse_raw_args(text: &str) -> Option<[u64; 6]> {
    let mut args = [0u64; 6];
    if text.trim().is_empty() {
        return Some(args);
    }
    for (i, a) in text.split(", ").enumerate() {
        let a = a.trim();
        let v = match a.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => a.parse::<u64>().ok()?,
        };
        *args.get_mut(i)? = v;
    }
    Some(args)
}

/// clone's flags as strace decodes them: CLONE_* names, a signal name, maybe a hex rest.
pub fn clone_flags(text: &str) -> Option<u64> {
    text.split('|').try_fold(0, |v, part| {
        let bits = match part.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => constant(part)?,
        };
        Some(v | bits)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_parse() {
        let Event::Call(c) = parse_line(
            "1795564329.850401 ioctl(0x3, 0x80081272, 0x7ffc1234) = -1 ENOTTY (Inappropriate ioctl)",
        ) else {
            panic!("not a call");
        };
        assert_eq!(c.name, "ioctl");
        assert_eq!(c.args, Some([3, 0x8008_1272, 0x7ffc_1234, 0, 0, 0]));
        assert!(!c.ok());
        let Event::Call(c) = parse_line(
            "1795564329.858036 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, parent_tid=[2], tls=0x7f) = 2 /* 29332 in strace's PID NS */",
        ) else {
            panic!("not a call");
        };
        assert_eq!(c.child_tid(), Some(29332));
        assert_eq!(clone_flags(c.flags_text()), Some(0x3d0f00));
        let Event::Call(c) =
            parse_line("1795564329.9 fcntl(0x3, 0x3, 0)    = 0x8002 (flags O_RDWR|O_LARGEFILE)")
        else {
            panic!("not a call");
        };
        assert_eq!(c.args, Some([3, 3, 0, 0, 0, 0]));
        assert_eq!(c.ret, "0x8002 (flags O_RDWR|O_LARGEFILE)");
        assert!(c.ok());
        let Event::Call(c) =
            parse_line("1795564329.9 rt_sigtimedwait(0x7ffc, 0, 0, 0x8 <unfinished ...>) = ?")
        else {
            panic!("not a call");
        };
        assert_eq!(c.args, Some([0x7ffc, 0, 0, 8, 0, 0]));
        assert!(matches!(
            parse_line("1795564330.0 +++ killed by SIGSYS +++"),
            Event::Killed(_, s) if s == "SIGSYS"
        ));
        assert!(matches!(
            parse_line("1795564330.0 --- SIGTERM {si_signo=SIGTERM} ---"),
            Event::Other
        ));
    }
}
