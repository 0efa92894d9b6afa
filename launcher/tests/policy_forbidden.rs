//! What no device policy may allow: process and privilege escapes, namespace changes, kernel
//! attack surface nobody needs, network sockets, executable memory.

use launcher::jail::policy::{constant, syscall_nr, Action, Comparison, Op, Policy, Rule, Verdict};
use launcher::jail::seccomp::{load_policy, DEVICES};

const FORBIDDEN: &[&str] = &[
    "execve",
    "execveat",
    "ptrace",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "open_by_handle_at",
    "pkey_mprotect",
    "userfaultfd",
    "fork",
    "vfork",
    "seccomp",
];

fn c(name: &str) -> u64 {
    constant(name).unwrap_or_else(|| panic!("no constant {name}"))
}

const NAMESPACE_FLAGS: &[&str] = &[
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "CLONE_NEWPID",
    "CLONE_NEWNET",
    "CLONE_NEWIPC",
    "CLONE_NEWUTS",
    "CLONE_NEWCGROUP",
];

fn policies() -> Vec<(&'static str, Policy)> {
    DEVICES
        .iter()
        .map(|d| (*d, load_policy(d, None).expect("parses")))
        .collect()
}

/// Whether the rule lets the syscall run (with some arguments).
fn allows(rule: &Rule) -> bool {
    matches!(rule.action, Action::Allow | Action::AllowIf(_))
}

/// True if every `||` clause of the rule pins argument `arg` so that none of `bits` can be set:
/// `argN == V` or `argN in V` with V free of those bits. Anything looser fails.
fn excludes_bits(rule: &Rule, arg: u8, bits: u64) -> bool {
    match &rule.action {
        Action::Errno(_) => true,
        Action::Allow => false,
        Action::AllowIf(e) => e.clauses.iter().all(|clause| {
            clause.iter().any(|&Comparison { arg: a, op, value }| {
                a == arg && matches!(op, Op::Eq | Op::In) && value & bits == 0
            })
        }),
    }
}

/// True if every clause pins `arg` to values outside `values` (`argN == V`, V not in `values`).
fn excludes_values(rule: &Rule, arg: u8, values: &[u64]) -> bool {
    match &rule.action {
        Action::Errno(_) => true,
        Action::Allow => false,
        Action::AllowIf(e) => e.clauses.iter().all(|clause| {
            clause.iter().any(|&Comparison { arg: a, op, value }| {
                a == arg && op == Op::Eq && !values.contains(&value)
            })
        }),
    }
}

#[test]
fn forbidden_syscalls_are_not_allowed() {
    for (device, p) in policies() {
        for name in FORBIDDEN {
            let Some(nr) = syscall_nr(name) else {
                // Not an x86_64 syscall at all (the placeholder guards the table lookup).
                assert!(
                    name.ends_with("placeholder"),
                    "{name} is not in the syscall table"
                );
                continue;
            };
            if let Some(r) = p.rule_by_nr(nr) {
                assert!(!allows(r), "{device}: {name} is allowed at {}", r.location);
            }
        }
    }
}

#[test]
fn clone_never_takes_namespace_flags_and_clone3_is_not_allowed() {
    let ns = NAMESPACE_FLAGS.iter().fold(0, |acc, f| acc | c(f));
    let thread = [
        "CLONE_VM",
        "CLONE_FS",
        "CLONE_FILES",
        "CLONE_SIGHAND",
        "CLONE_THREAD",
    ]
    .iter()
    .fold(0, |acc, f| acc | c(f));
    for (device, p) in policies() {
        if let Some(r) = p.rule("clone") {
            assert!(
                excludes_bits(r, 0, ns),
                "{device}: clone at {} may take namespace flags",
                r.location
            );
            // A new process (no CLONE_THREAD) is not allowed either.
            assert!(
                excludes_bits(r, 0, 0)
                    && !matches!(p.verdict(r.nr, &[0x11, 0, 0, 0, 0, 0]), Verdict::Allow(_)),
                "{device}: clone at {} allows fork-like flags",
                r.location
            );
            for f in NAMESPACE_FLAGS {
                let args = [thread | c(f), 0, 0, 0, 0, 0];
                assert!(
                    !matches!(p.verdict(r.nr, &args), Verdict::Allow(_)),
                    "{device}: clone with {f}"
                );
            }
        }
        // clone3's flags are in memory: seccomp cannot check them, so it must not be allowed.
        if let Some(r) = p.rule("clone3") {
            assert!(!allows(r), "{device}: clone3 is allowed at {}", r.location);
        }
    }
}

#[test]
fn no_network_sockets() {
    let bad = [c("AF_INET"), c("AF_INET6"), c("AF_NETLINK")];
    for (device, p) in policies() {
        for name in ["socket", "socketpair"] {
            if let Some(r) = p.rule(name) {
                assert!(
                    excludes_values(r, 0, &bad),
                    "{device}: {name} at {} may create AF_INET/AF_INET6/AF_NETLINK sockets",
                    r.location
                );
            }
        }
    }
}

#[test]
fn memory_is_never_made_executable() {
    let exec = c("PROT_EXEC");
    for (device, p) in policies() {
        for name in ["mmap", "mprotect"] {
            let r = p
                .rule(name)
                .unwrap_or_else(|| panic!("{device}: no {name} rule"));
            assert!(
                excludes_bits(r, 2, exec),
                "{device}: {name} at {} may map executable memory",
                r.location
            );
            let rx = [
                0,
                4096,
                c("PROT_READ") | exec,
                c("MAP_PRIVATE") | c("MAP_ANONYMOUS"),
                0,
                0,
            ];
            assert!(
                matches!(p.verdict(r.nr, &rx), Verdict::Deny(_)),
                "{device}: {name} rx"
            );
            let rw = [
                0,
                4096,
                c("PROT_READ") | c("PROT_WRITE"),
                c("MAP_SHARED"),
                3,
                0,
            ];
            assert!(
                matches!(p.verdict(r.nr, &rw), Verdict::Allow(_)),
                "{device}: {name} rw"
            );
        }
    }
}

#[test]
fn devices_do_not_open_paths() {
    for (device, p) in policies() {
        let r = p.rule("openat").expect("openat rule");
        assert_eq!(r.action, Action::Errno(libc::ENOENT as u32), "{device}");
        for name in ["open", "creat", "openat2", "open_tree", "name_to_handle_at"] {
            if let Some(r) = p.rule(name) {
                assert!(!allows(r), "{device}: {name} is allowed at {}", r.location);
            }
        }
    }
}

#[test]
fn ioctl_and_fcntl_are_filtered_by_request() {
    for (device, p) in policies() {
        for (name, arg) in [("ioctl", 1u8), ("fcntl", 1), ("prctl", 0)] {
            if let Some(r) = p.rule(name) {
                assert!(
                    excludes_values(r, arg, &[]),
                    "{device}: {name} at {} is not pinned to a list of requests",
                    r.location
                );
            }
        }
        // The terminal ioctl that can push input to a controlling terminal.
        let tiocsti = 0x5412;
        if let Some(r) = p.rule("ioctl") {
            assert!(!matches!(
                p.verdict(r.nr, &[0, tiocsti, 0, 0, 0, 0]),
                Verdict::Allow(_)
            ));
        }
    }
}
