//! Every rule says who needs it: a comment directly above it. A rule the audit workload does
//! not exercise says when it is needed on a `cold-path:` line (checked by
//! tests/tests/jail_audit.rs); here we check the markers are well-formed.

use launcher::jail::policy::{self, Source};
use launcher::jail::seccomp::{load_policy, DEVICES, EMBEDDED_POLICIES};

/// The marker of a rule that the end-to-end audit workload does not exercise.
const COLD_PATH: &str = "cold-path:";

#[test]
fn every_rule_has_a_comment() {
    for (name, _) in EMBEDDED_POLICIES {
        let p = policy::parse(name, Source::Embedded(EMBEDDED_POLICIES)).expect("parses");
        for r in &p.rules {
            let text: String = r
                .comment
                .lines()
                .filter(|l| !l.starts_with(COLD_PATH))
                .collect();
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
                if let Some(why) = line.strip_prefix(COLD_PATH) {
                    assert!(
                        why.split_whitespace().count() >= 2,
                        "{}: \"{COLD_PATH}\" must say which path needs {}",
                        r.location,
                        r.syscall
                    );
                }
                assert!(
                    !line.to_ascii_lowercase().contains("cold-path") || line.starts_with(COLD_PATH),
                    "{}: write the marker as a line starting with \"{COLD_PATH}\"",
                    r.location
                );
            }
        }
    }
}
