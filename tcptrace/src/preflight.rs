//! Checks that turn the kernel's cryptic refusals into one line that says
//! what to do, run before anything is loaded.

use std::fs;

use thiserror::Error;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The ring buffer (5.8), `bpf_get_socket_cookie` in tracing programs (5.12)
/// and `bpf_task_pt_regs` (5.15, for the stack fingerprint).
pub const MINIMUM_KERNEL: (u32, u32) = (5, 15);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its eBPF probe: run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "kernel {release} is too old: tcptrace needs Linux {}.{} or newer (BPF ring buffer, socket cookies in tracing programs, a task's saved registers)",
        MINIMUM_KERNEL.0,
        MINIMUM_KERNEL.1
    )]
    KernelTooOld { release: String },
}

pub fn check_privileges() -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if has_needed_capabilities(effective) {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
    }
}

fn has_needed_capabilities(effective: u64) -> bool {
    let has = |cap: u32| effective & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check_kernel_version() -> Result<(), PreflightError> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    check_release(release.trim())
}

fn check_release(release: &str) -> Result<(), PreflightError> {
    // An unparsable release is not proof of an old kernel: let loading decide.
    match parse_release(release) {
        Some(version) if version < MINIMUM_KERNEL => Err(PreflightError::KernelTooOld {
            release: release.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert!(has_needed_capabilities(1 << CAP_SYS_ADMIN));
        assert!(has_needed_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_needed_capabilities(1 << CAP_BPF));
        assert!(!has_needed_capabilities(0));
    }

    #[test]
    fn kernel_releases() {
        assert_eq!(check_release("6.18.44-fc-v595"), Ok(()));
        assert_eq!(check_release("5.15.0"), Ok(()));
        assert!(check_release("5.10.0").is_err());
        assert_eq!(check_release("garbage"), Ok(()));
        assert_eq!(
            check_release("5.4.0-150-generic"),
            Err(PreflightError::KernelTooOld {
                release: "5.4.0-150-generic".into()
            })
        );
        assert!(check_release("4.19.0").is_err());
    }
}
