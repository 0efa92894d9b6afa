//! Step 7: a landlock ruleset that handles every access right the kernel knows (filesystem,
//! TCP/UDP, and the abstract-socket and signal scopes) and grants none. Fds opened before it
//! (the image, the sockets) keep working; no path can be opened afterwards, whatever the
//! mounts. Best effort: on a kernel without landlock, or with an older ABI, the device runs
//! with what the kernel enforces and says so; the other layers still stand.

use ::landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};

use super::JailError;

/// The newest landlock ABI this build knows; older kernels get what they support.
const ABI_WANTED: ABI = ABI::V10;

/// How much of the ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockStatus {
    /// Everything.
    Enforced,
    /// Only the rights of the kernel's landlock ABI (its version, if known).
    PartiallyEnforced(Option<i32>),
    /// Nothing: the kernel lacks landlock or has it disabled.
    NotEnforced,
}

/// Applies the deny-everything ruleset to this thread (and threads it starts later).
pub fn deny_all() -> Result<LandlockStatus, JailError> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.handle_access(AccessNet::from_all(ABI_WANTED)))
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(JailError::Landlock)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::Enforced,
        RulesetStatus::PartiallyEnforced => {
            LandlockStatus::PartiallyEnforced(match status.landlock {
                ::landlock::LandlockStatus::Available { effective_abi, .. } => {
                    Some(effective_abi as i32)
                }
                _ => None,
            })
        }
        RulesetStatus::NotEnforced => LandlockStatus::NotEnforced,
    })
}
