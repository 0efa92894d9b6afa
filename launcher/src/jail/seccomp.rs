//! Compiles a device's policy (`jail-policies/x86_64/<device>_device.policy`, embedded at build
//! time or read from `--seccomp-policy-dir`) into seccomp BPF with seccompiler, and installs it.
//!
//! # The filters
//!
//! seccompiler gives each filter a single match action, so one policy becomes several stacked
//! filters:
//!
//! * one filter per distinct `return ERRNO` value: its rules match the syscalls that fail with
//!   that errno (match action `Errno(n)`), everything else is `Allow`ed;
//! * last, the allow-list: every rule of the policy, `return ERRNO` rules included (so that they
//!   reach the errno filter instead of the default action), match action `Allow`, default action
//!   kill-process (or log, in [`SeccompMode::Log`]).
//!
//! The kernel runs every installed filter and takes the highest-precedence result
//! (KILL_PROCESS > ERRNO > LOG > ALLOW), so an errno rule wins over the allow-list's `Allow`.
//! The allow-list is installed last because once it is in place `seccomp()` and `prctl()`
//! themselves are no longer allowed.
//!
//! # Argument comparisons
//!
//! Arguments are compared as 64-bit values (`SeccompCmpArgLen::Qword`), as minijail does.
//! `argN in MASK` becomes `MaskedEq(!MASK) == 0`. `argN & MASK` means "at least one bit of
//! MASK is set": a single-bit mask becomes `MaskedEq(MASK) == MASK`; a multi-bit mask is
//! expanded into one alternative per bit (rules of a syscall are OR'ed), multiplied out over
//! the other comparisons of its `&&` clause, and refused past [`MAX_ALTERNATIVES`].

use std::collections::BTreeMap;
use std::path::Path;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::policy::{self, Action, Comparison, Op, Policy, PolicyError, Rule, Source};

/// What the allow-list does with a syscall the policy does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the process (SIGSYS). The default.
    Kill,
    /// Log the violation (to the kernel audit log) and let the call proceed: for developing
    /// policies only (`--seccomp-log`).
    Log,
}

/// Most BPF alternatives one rule may expand into.
pub const MAX_ALTERNATIVES: usize = 64;

include!(concat!(env!("OUT_DIR"), "/policies.rs"));

/// The top-level policy file of a device: `<device>_device.policy`. The name must be lower-case
/// letters, digits and `_`, and not `common`.
pub fn device_policy_file(device: &str) -> Result<String, PolicyError> {
    let valid = !device.is_empty()
        && device != "common"
        && device
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(PolicyError::UnknownDevice(device.to_owned()));
    }
    Ok(format!("{device}_device.policy"))
}

/// Parses a device's policy: from `policy_dir` if given, else the embedded one. For audits:
/// each rule keeps its syscall, comment and `file:line`.
pub fn load_policy(device: &str, policy_dir: Option<&Path>) -> Result<Policy, PolicyError> {
    let root = device_policy_file(device)?;
    let source = match policy_dir {
        Some(dir) => Source::Dir(dir),
        None => {
            if !DEVICES.contains(&device) {
                return Err(PolicyError::UnknownDevice(device.to_owned()));
            }
            Source::Embedded(EMBEDDED_POLICIES)
        }
    };
    policy::parse(&root, source)
}

/// Loads and compiles a device's policy. Install the result with [`install`], in order.
pub fn device_filters(
    device: &str,
    policy_dir: Option<&Path>,
    mode: SeccompMode,
) -> Result<Vec<BpfProgram>, PolicyError> {
    compile(&load_policy(device, policy_dir)?, mode)
}

/// Compiles a parsed policy: the errno filters (by ascending errno), then the allow-list.
pub fn compile(policy: &Policy, mode: SeccompMode) -> Result<Vec<BpfProgram>, PolicyError> {
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for rule in &policy.rules {
        match &rule.action {
            Action::Allow => {
                allow.insert(rule.nr, Vec::new());
            }
            Action::AllowIf(expr) => {
                let mut alternatives = Vec::new();
                for clause in &expr.clauses {
                    alternatives.extend(clause_rules(rule, clause)?);
                }
                allow.insert(rule.nr, alternatives);
            }
            Action::Errno(e) => {
                allow.insert(rule.nr, Vec::new());
                by_errno.entry(*e).or_default().insert(rule.nr, Vec::new());
            }
        }
    }
    let default = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let mut out = Vec::with_capacity(by_errno.len() + 1);
    for (errno, rules) in by_errno {
        out.push(build(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
        )?);
    }
    out.push(build(allow, default, SeccompAction::Allow)?);
    Ok(out)
}

fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, PolicyError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(PolicyError::Filter)?;
    BpfProgram::try_from(filter).map_err(PolicyError::Filter)
}

/// The seccompiler rules (alternatives) for one `&&` clause.
fn clause_rules(rule: &Rule, clause: &[Comparison]) -> Result<Vec<SeccompRule>, PolicyError> {
    let compile_err = |source| PolicyError::Compile {
        location: rule.location.clone(),
        syscall: rule.syscall.clone(),
        source,
    };
    // Each comparison becomes one or more alternative conditions; the clause is their product.
    let mut products: Vec<Vec<SeccompCondition>> = vec![Vec::new()];
    for c in clause {
        let alternatives = conditions(c).map_err(compile_err)?;
        let count = products.len() * alternatives.len();
        if count > MAX_ALTERNATIVES {
            return Err(PolicyError::TooManyAlternatives {
                location: rule.location.clone(),
                syscall: rule.syscall.clone(),
                count,
                max: MAX_ALTERNATIVES,
            });
        }
        products = products
            .iter()
            .flat_map(|p| {
                alternatives.iter().map(move |a| {
                    let mut p = p.clone();
                    p.push(a.clone());
                    p
                })
            })
            .collect();
    }
    products
        .into_iter()
        .map(|conds| SeccompRule::new(conds).map_err(compile_err))
        .collect()
}

/// The alternative conditions one comparison stands for.
fn conditions(c: &Comparison) -> Result<Vec<SeccompCondition>, seccompiler::BackendError> {
    let cond = |op, value| SeccompCondition::new(c.arg, SeccompCmpArgLen::Qword, op, value);
    Ok(match c.op {
        Op::Eq => vec![cond(SeccompCmpOp::Eq, c.value)?],
        Op::Ne => vec![cond(SeccompCmpOp::Ne, c.value)?],
        Op::Lt => vec![cond(SeccompCmpOp::Lt, c.value)?],
        Op::Le => vec![cond(SeccompCmpOp::Le, c.value)?],
        Op::Gt => vec![cond(SeccompCmpOp::Gt, c.value)?],
        Op::Ge => vec![cond(SeccompCmpOp::Ge, c.value)?],
        Op::In => vec![cond(SeccompCmpOp::MaskedEq(!c.value), 0)?],
        Op::AnyBitSet => (0..64)
            .map(|b| 1u64 << b)
            .filter(|bit| c.value & bit != 0)
            .map(|bit| cond(SeccompCmpOp::MaskedEq(bit), bit))
            .collect::<Result<_, _>>()?,
    })
}

/// Installs `filters` in order on every thread of the process (TSYNC), after setting
/// no_new_privs. Pass the output of [`device_filters`] unchanged: its last filter is the
/// allow-list, after which neither `prctl` nor `seccomp` is allowed.
pub fn install(filters: &[BpfProgram]) -> Result<(), PolicyError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PolicyError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    for (i, f) in filters.iter().enumerate() {
        seccompiler::apply_filter_all_threads(f).map_err(|source| PolicyError::Install {
            index: i + 1,
            count: filters.len(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bit_set_expands_per_bit_and_in_uses_the_complement() {
        let c = Comparison {
            arg: 2,
            op: Op::AnyBitSet,
            value: 0b1010,
        };
        assert_eq!(conditions(&c).expect("conditions").len(), 2);
        let c = Comparison {
            arg: 2,
            op: Op::In,
            value: !4,
        };
        let v = conditions(&c).expect("conditions");
        let expected =
            SeccompCondition::new(2, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(4), 0)
                .expect("condition");
        assert_eq!(v, vec![expected]);
    }

    #[test]
    fn device_names_are_checked() {
        assert!(device_policy_file("block").is_ok());
        assert!(device_policy_file("../etc/passwd").is_err());
        assert!(device_policy_file("").is_err());
        assert!(matches!(
            load_policy("nosuch", None),
            Err(PolicyError::UnknownDevice(_))
        ));
        assert!(device_policy_file("common").is_err());
        for d in DEVICES {
            let root = device_policy_file(d).expect("device name");
            assert!(EMBEDDED_POLICIES.iter().any(|(n, _)| *n == root), "{root}");
        }
    }
}
