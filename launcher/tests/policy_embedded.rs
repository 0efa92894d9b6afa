//! Every embedded policy parses and compiles, in both modes; a policy directory overrides the
//! embedded files.

use std::path::PathBuf;

use launcher::jail::policy::{self, Action, Source};
use launcher::jail::seccomp::{
    self, device_filters, load_policy, SeccompMode, DEVICES, EMBEDDED_POLICIES,
};

fn policy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../jail-policies/x86_64")
}

#[test]
fn every_embedded_file_parses_on_its_own() {
    for (name, _) in EMBEDDED_POLICIES {
        let p = policy::parse(name, Source::Embedded(EMBEDDED_POLICIES))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!p.rules.is_empty(), "{name} has no rules");
    }
}

#[test]
fn every_file_in_the_policy_directory_is_embedded_and_identical() {
    let mut on_disk = 0;
    for entry in std::fs::read_dir(policy_dir()).expect("jail-policies/x86_64") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        if !name.ends_with(".policy") {
            continue;
        }
        on_disk += 1;
        let text = std::fs::read_to_string(&path).expect("read policy");
        let embedded = EMBEDDED_POLICIES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not in EMBEDDED_POLICIES"));
        assert_eq!(embedded.1, text, "{name} differs from its embedded copy");
    }
    assert_eq!(on_disk, EMBEDDED_POLICIES.len());
}

#[test]
fn every_device_policy_compiles_in_both_modes() {
    for device in DEVICES {
        let policy = load_policy(device, None).expect("parses");
        let errnos: std::collections::BTreeSet<u32> = policy
            .rules
            .iter()
            .filter_map(|r| match r.action {
                Action::Errno(e) => Some(e),
                _ => None,
            })
            .collect();
        for mode in [SeccompMode::Kill, SeccompMode::Log] {
            let filters = device_filters(device, None, mode)
                .unwrap_or_else(|e| panic!("{device} ({mode:?}): {e}"));
            // One filter per distinct errno, then the allow-list.
            assert_eq!(filters.len(), errnos.len() + 1, "{device} ({mode:?})");
            for f in &filters {
                assert!(
                    !f.is_empty() && f.len() <= 4096,
                    "{device}: {} instructions",
                    f.len()
                );
            }
        }
    }
}

#[test]
fn block_device_policy_is_layered() {
    let p = load_policy("block", None).expect("parses");
    assert_eq!(p.root, "block_device.policy");
    let files: std::collections::BTreeSet<&str> =
        p.rules.iter().map(|r| r.location.file.as_str()).collect();
    let expected = ["block.policy", "common_device.policy", "vhost_user.policy"];
    assert_eq!(files.into_iter().collect::<Vec<_>>(), expected);
    let by_name = |n: &str| p.rule(n).unwrap_or_else(|| panic!("no rule for {n}"));
    assert_eq!(by_name("openat").action, Action::Errno(libc::ENOENT as u32));
    assert_eq!(by_name("read").location.file, "common_device.policy");
    assert_eq!(by_name("recvmsg").location.file, "vhost_user.policy");
    assert_eq!(by_name("io_uring_enter").location.file, "block.policy");
}

#[test]
fn a_policy_directory_overrides_the_embedded_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in EMBEDDED_POLICIES {
        let text = if *name == "block.policy" {
            format!("{text}\n# test: an extra rule only the override has.\ngetppid: 1\n")
        } else {
            (*text).to_owned()
        };
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let embedded = load_policy("block", None).expect("embedded");
    let overridden = load_policy("block", Some(dir.path())).expect("override");
    assert!(embedded.rule("getppid").is_none());
    let r = overridden.rule("getppid").expect("override rule");
    assert_eq!(r.comment, "test: an extra rule only the override has.");
    assert_eq!(overridden.rules.len(), embedded.rules.len() + 1);
    device_filters("block", Some(dir.path()), SeccompMode::Kill).expect("compiles");
    // A directory without the device's policy is an error naming the file.
    let empty = tempfile::tempdir().expect("tempdir");
    let e = load_policy("block", Some(empty.path())).expect_err("missing");
    assert!(e.to_string().contains("block_device.policy"), "{e}");
}

#[test]
fn unknown_devices_are_refused() {
    for d in ["nosuch", "common", "../block", "Block", ""] {
        assert!(
            matches!(
                load_policy(d, None),
                Err(policy::PolicyError::UnknownDevice(_))
            ),
            "{d:?}"
        );
    }
    assert!(seccomp::device_policy_file("block").is_ok());
}

/// std's channels (a queue worker's answers to the connection thread) yield the CPU when the
/// receiver finds a message half written: a device killed for it dies at a front-end's
/// disconnect, or with its rings half served.
#[test]
fn every_device_may_yield_the_cpu() {
    for device in DEVICES {
        let policy = load_policy(device, None).expect("parses");
        assert!(
            matches!(
                policy.verdict(libc::SYS_sched_yield, &[0; 6]),
                policy::Verdict::Allow(_)
            ),
            "{device}: sched_yield is not allowed"
        );
    }
}
