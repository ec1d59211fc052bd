//! Least privilege for the agent daemon: once its probes are attached and its API
//! socket is bound, nothing it does needs more than reading other users' processes
//! (`/proc/PID/exe`, `/proc/PID/fd`: CAP_SYS_PTRACE) and looking into directories it
//! does not own (home directories for the rules' watched files, mount points for
//! their usage: CAP_DAC_READ_SEARCH). Every other capability is dropped from the
//! effective, permitted, inheritable, ambient and bounding sets, and no_new_privs is
//! set, so neither a bug in the agent nor anything it could be made to run gets them
//! back. Updating the kernel maps it already holds needs no capability.
use caps::{CapSet, Capability, CapsHashSet};

/// What the agent keeps.
pub const KEPT: [Capability; 2] = [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("dropping {cap} from the {set} set: {source}")]
    Drop {
        cap: Capability,
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error(
        "agent threads other than the one dropping privileges exist ({0}); they would keep theirs"
    )]
    OtherThreads(usize),
}

/// The threads of this process (capabilities are per thread).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// Drops everything but [`KEPT`] for this process, which must be single-threaded
/// (threads made later inherit the reduced sets). Returns what it kept; `Ok(None)`
/// if there was nothing to drop (the agent runs without root).
pub fn drop_to_kept() -> Result<Option<CapsHashSet>, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).unwrap_or_default();
    if permitted.is_empty() {
        return Ok(None);
    }
    let n = threads();
    if n > 1 {
        return Err(PrivilegeError::OtherThreads(n));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let kept: CapsHashSet = KEPT
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    let err = |cap, set| move |source| PrivilegeError::Drop { cap, set, source };
    // The bounding set first: dropping from it needs CAP_SETPCAP, still effective. A
    // dedicated user started with ambient capabilities has no CAP_SETPCAP: its
    // bounding set stays what the service manager gave (CapabilityBoundingSet=), and
    // no_new_privs keeps an exec from gaining anything in it.
    let can_bound =
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    for cap in caps::all() {
        if can_bound
            && !kept.contains(&cap)
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, CapSet::Bounding, cap).map_err(err(cap, "bounding"))?;
        }
    }
    let any = Capability::CAP_SETPCAP;
    caps::clear(None, CapSet::Ambient).map_err(err(any, "ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err(any, "inheritable"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(err(any, "effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err(any, "permitted"))?;
    Ok(Some(kept))
}
