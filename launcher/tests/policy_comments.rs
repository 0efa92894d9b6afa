//! Every rule says who needs it: a comment directly above it. A rule a kind's audit workload
//! does not exercise says when it is needed on a `cold-path:` line (every kind) or a
//! `cold-path(KIND, ...):` line (the kinds named), checked by tests/tests/jail_audit_KIND.rs;
//! here we check the markers are well-formed and name known kinds.

use launcher::jail::policy::{self, Source};
use launcher::jail::seccomp::{load_policy, DEVICES, EMBEDDED_POLICIES};

/// The marker of a rule that the end-to-end audit workload does not exercise.
const COLD_PATH: &str = "cold-path";

/// The explanation of a marker line (`cold-path: WHY` or `cold-path(KINDS): WHY`), with the
/// kinds it names (none: every kind); None if the line is no marker.
fn marker(line: &str) -> Option<(Vec<&str>, &str)> {
    let rest = line.strip_prefix(COLD_PATH)?;
    if let Some(why) = rest.strip_prefix(':') {
        return Some((Vec::new(), why));
    }
    let (kinds, why) = rest.strip_prefix('(')?.split_once("):")?;
    Some((kinds.split(',').map(str::trim).collect(), why))
}

#[test]
fn every_rule_has_a_comment() {
    for (name, _) in EMBEDDED_POLICIES {
        let p = policy::parse(name, Source::Embedded(EMBEDDED_POLICIES)).expect("parses");
        for r in &p.rules {
            let text: String = r.comment.lines().filter(|l| marker(l).is_none()).collect();
            assert!(
                text.split_whitespace().count() >= 3,
                "{}: the rule for {} needs a comment saying who needs it",
                r.location,
                r.syscall
            );
        }
    }
}

#[test]
fn cold_path_markers_say_when() {
    for device in DEVICES {
        let p = load_policy(device, None).expect("parses");
        for r in &p.rules {
            for line in r.comment.lines() {
                if let Some((kinds, why)) = marker(line) {
                    assert!(
                        why.split_whitespace().count() >= 2,
                        "{}: \"{COLD_PATH}\" must say which path needs {}",
                        r.location,
                        r.syscall
                    );
                    for k in kinds {
                        assert!(
                            DEVICES.contains(&k),
                            "{}: \"{COLD_PATH}({k})\" names no kind with a policy",
                            r.location
                        );
                    }
                }
                assert!(
                    !line.to_ascii_lowercase().contains(COLD_PATH) || marker(line).is_some(),
                    "{}: write the marker as a line starting with \"{COLD_PATH}:\" or \
                     \"{COLD_PATH}(KIND):\"",
                    r.location
                );
            }
        }
    }
}

#[test]
fn markers_parse() {
    assert_eq!(marker("cold-path: when x"), Some((vec![], " when x")));
    assert_eq!(
        marker("cold-path(rng, block): when y"),
        Some((vec!["rng", "block"], " when y"))
    );
    assert_eq!(marker("cold-path(rng) when"), None);
    assert_eq!(marker("who needs it"), None);
}
