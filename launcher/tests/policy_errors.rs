//! Malformed policies are rejected, and the error names the file, the line and the offending
//! token.

use std::path::Path;

use launcher::jail::policy::{Location, PolicyError};
use launcher::jail::seccomp::load_policy;

/// Writes `files` into a fresh directory and loads device "t" (`t_device.policy`) from it.
fn load(files: &[(&str, &str)]) -> Result<launcher::jail::policy::Policy, PolicyError> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }
    load_policy("t", Some(dir.path()))
}

/// Loads `t_device.policy` = `text` and expects a parse error at `line` mentioning `token`.
fn rejects(text: &str, line: usize, token: &str) -> String {
    rejects_in(&[("t_device.policy", text)], "t_device.policy", line, token)
}

fn rejects_in(files: &[(&str, &str)], file: &str, line: usize, token: &str) -> String {
    let e = load(files).expect_err("malformed policy was accepted");
    let msg = e.to_string();
    match &e {
        PolicyError::Parse { location, message } => {
            assert_eq!(
                location,
                &Location {
                    file: file.to_owned(),
                    line
                },
                "{msg}"
            );
            assert!(message.contains(token), "{msg:?} does not name {token:?}");
        }
        other => panic!("not a parse error: {other}"),
    }
    assert!(msg.starts_with(&format!("{file}:{line}: ")), "{msg}");
    msg
}

const HEADER: &str = "# A test policy.\n\n# who needs it\nread: 1\n";

#[test]
fn unknown_syscall() {
    let msg = rejects_in(
        &[
            ("t_device.policy", "@include block.policy\n"),
            (
                "block.policy",
                "# a\nread: 1\n\n# b\nopnat: return ENOENT\n",
            ),
        ],
        "block.policy",
        5,
        "\"opnat\"",
    );
    assert_eq!(msg, "block.policy:5: unknown syscall \"opnat\"");
}

#[test]
fn bad_operator() {
    rejects(&format!("{HEADER}write: arg0 =< 3\n"), 5, "\"=<\"");
    rejects(&format!("{HEADER}write: arg0 = 3\n"), 5, "\"=\"");
    rejects(&format!("{HEADER}write: arg0 like 3\n"), 5, "\"like\"");
    rejects(&format!("{HEADER}write: arg0 == 1 ~ 2\n"), 5, "\"~\"");
}

#[test]
fn bad_argument_index() {
    rejects(&format!("{HEADER}write: arg6 == 1\n"), 5, "\"arg6\"");
    rejects(&format!("{HEADER}write: argx == 1\n"), 5, "\"argx\"");
    rejects(&format!("{HEADER}write: fd == 1\n"), 5, "\"fd\"");
}

#[test]
fn bad_number_or_constant() {
    rejects(&format!("{HEADER}write: arg0 == 0x12g\n"), 5, "\"0x12g\"");
    rejects(&format!("{HEADER}write: arg0 == 12abc\n"), 5, "\"12abc\"");
    rejects(&format!("{HEADER}write: arg0 == 0777\n"), 5, "\"0777\"");
    rejects(
        &format!("{HEADER}write: arg0 == 99999999999999999999\n"),
        5,
        "\"99999999999999999999\"",
    );
    rejects(
        &format!("{HEADER}mmap: arg2 in ~PROT_EXECC\n"),
        5,
        "\"PROT_EXECC\"",
    );
    rejects(
        &format!("{HEADER}openat: return ENOENTT\n"),
        5,
        "\"ENOENTT\"",
    );
    rejects(&format!("{HEADER}openat: return 70000\n"), 5, "\"70000\"");
}

#[test]
fn missing_colon_and_empty_rules() {
    rejects(&format!("{HEADER}write 1\n"), 5, "\"write\"");
    rejects(&format!("{HEADER}write:\n"), 5, "empty rule");
    rejects(&format!("{HEADER}write: arg0 == 1 ||\n"), 5, "\"||\"");
    rejects(&format!("{HEADER}write: return\n"), 5, "errno");
    rejects(&format!("{HEADER}write: 1 1\n"), 5, "\"1\"");
}

#[test]
fn include_cycle() {
    let msg = rejects_in(
        &[
            ("t_device.policy", "# top\n@include a.policy\n"),
            ("a.policy", "# a\nread: 1\n@include b.policy\n"),
            ("b.policy", "# b\nwrite: 1\n\n@include a.policy\n"),
        ],
        "b.policy",
        4,
        "\"a.policy\"",
    );
    assert!(
        msg.contains("t_device.policy -> a.policy -> b.policy -> a.policy"),
        "{msg}"
    );
    // Including oneself is the shortest cycle.
    rejects("@include t_device.policy\n", 1, "\"t_device.policy\"");
}

#[test]
fn include_depth_is_limited() {
    let names: Vec<String> = (0..12).map(|i| format!("d{i}.policy")).collect();
    let mut files: Vec<(String, String)> = vec![(
        "t_device.policy".to_owned(),
        format!("@include {}\n", names[0]),
    )];
    for w in names.windows(2) {
        files.push((w[0].clone(), format!("@include {}\n", w[1])));
    }
    files.push((names[11].clone(), "# x\nread: 1\n".to_owned()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let e = load(&refs).expect_err("too deep");
    assert!(e.to_string().contains("nests deeper"), "{e}");
}

#[test]
fn missing_or_unsafe_include() {
    rejects("# top\n\n@include nope.policy\n", 3, "\"nope.policy\"");
    rejects("@include ../escape.policy\n", 1, "\"../escape.policy\"");
    rejects("@include /etc/passwd\n", 1, "\"/etc/passwd\"");
    rejects("@include\n", 1, "@include");
    rejects("@include a.policy b.policy\n", 1, "\"b.policy\"");
    rejects("@define X 1\n", 1, "\"@define\"");
    // A subdirectory of the policy directory is fine.
    let p = load(&[
        ("t_device.policy", "@include sub/x.policy\n"),
        ("sub/x.policy", "# x\nread: 1\n"),
    ])
    .expect("subdirectory include");
    assert_eq!(p.rules[0].location.file, "sub/x.policy");
}

#[test]
fn duplicate_rule_names_both_places() {
    let msg = rejects_in(
        &[
            (
                "t_device.policy",
                "@include common.policy\n@include dev.policy\n",
            ),
            ("common.policy", "# c\nread: 1\n# c\nwrite: 1\n"),
            (
                "dev.policy",
                "# d\nioctl: arg1 == 0x1268\n# d\nwrite: arg0 == 2\n",
            ),
        ],
        "dev.policy",
        4,
        "\"write\"",
    );
    assert!(msg.contains("first at common.policy:4"), "{msg}");
    // In one file, too.
    let msg = rejects(&format!("{HEADER}# again\nread: 1\n"), 6, "\"read\"");
    assert!(msg.contains("first at t_device.policy:4"), "{msg}");
}

#[test]
fn missing_top_level_file_is_a_read_error() {
    let e = load(&[("other.policy", "# x\nread: 1\n")]).expect_err("no t_device.policy");
    match e {
        PolicyError::Read { path, .. } => {
            assert_eq!(
                path.file_name(),
                Some(Path::new("t_device.policy").as_os_str())
            )
        }
        other => panic!("not a read error: {other}"),
    }
}

#[test]
fn comments_and_locations_are_kept() {
    let p = load(&[(
        "t_device.policy",
        "# Header, not attached: a blank line follows.\n\n# vu-core: reads.\n#   second line\nread: 1 # trailing comment\nwrite: 1\n\n# x\nopenat: return ENOENT\n",
    )])
    .expect("valid");
    assert_eq!(p.rules.len(), 3);
    assert_eq!(p.rules[0].comment, "vu-core: reads.\nsecond line");
    assert_eq!(p.rules[0].location.to_string(), "t_device.policy:5");
    assert_eq!(
        p.rules[1].comment, "",
        "a rule right after a rule has no comment"
    );
    assert_eq!(p.rules[2].location.line, 9);
}
