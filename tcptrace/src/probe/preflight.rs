//! Checks that turn the kernel's cryptic refusals into one line that says
//! what to do, run before anything is loaded.
//!
//! The kernel is judged by the features it has, probed as libbpf probes
//! them, never by its version number: distributions backport BPF features
//! (RHEL 9 ships them in a 5.14 kernel).

use std::{collections::BTreeMap, fmt, fs};

use aya::maps::MapType;
use thiserror::Error;

use tcptrace_common::names;

use crate::probe::btf::{Btf, VMLINUX_BTF};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What tcptrace cannot work without, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// Struct offsets and attach targets come from the kernel's BTF.
    Btf,
    /// The probe's tp_btf program attaches to it.
    InetSockSetState,
    /// Records reach the agent through it.
    RingBuffer,
    /// Sockets are keyed by cookie.
    SocketCookie,
    /// The stack fingerprint reads a task's saved user registers.
    TaskPtRegs,
}

impl Feature {
    pub const ALL: [Feature; 5] = [
        Feature::Btf,
        Feature::InetSockSetState,
        Feature::RingBuffer,
        Feature::SocketCookie,
        Feature::TaskPtRegs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Btf => "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y)",
            Feature::InetSockSetState => {
                "the sock:inet_sock_set_state tracepoint with BTF (btf_trace_inet_sock_set_state)"
            }
            Feature::RingBuffer => "the BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
            Feature::SocketCookie => {
                "bpf_get_socket_cookie in tracing programs (bpf_get_socket_ptr_cookie)"
            }
            Feature::TaskPtRegs => "the bpf_task_pt_regs helper",
        }
    }

    /// The mainline release that added it.
    pub fn since(self) -> &'static str {
        match self {
            Feature::Btf => "5.4",
            Feature::InetSockSetState => "5.5",
            Feature::RingBuffer => "5.8",
            Feature::SocketCookie => "5.12",
            Feature::TaskPtRegs => "5.15",
        }
    }
}

/// What a probe found out about one feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    Present,
    /// Absent, and how that was seen.
    Missing(String),
    /// The probe itself failed (why): not proof of absence, so loading
    /// the probe decides.
    Unknown(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFeatures {
    /// As in /proc/sys/kernel/osrelease, for the message only.
    pub release: String,
    pub probed: BTreeMap<Feature, Probed>,
}

/// Features the kernel lacks, with how each was seen missing.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingFeatures(pub Vec<(Feature, String)>);

impl fmt::Display for MissingFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (feature, evidence)) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{} (since Linux {}): {evidence}",
                feature.name(),
                feature.since()
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its eBPF probe: run it with sudo"
    )]
    NotPrivileged,
    #[error("kernel {release} lacks what tcptrace needs: {missing}")]
    MissingFeatures {
        release: String,
        missing: MissingFeatures,
    },
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

/// Probes the running kernel and refuses it only for a missing feature.
/// Needs the privileges `check_privileges` asks for (the ring buffer probe
/// creates a map).
pub fn check_kernel_features() -> Result<(), PreflightError> {
    decide(&probe_kernel())
}

/// The refusal, if any: every feature seen missing, named. A feature whose
/// probe failed is left to the loader.
pub fn decide(features: &KernelFeatures) -> Result<(), PreflightError> {
    let missing: Vec<(Feature, String)> = features
        .probed
        .iter()
        .filter_map(|(feature, probed)| match probed {
            Probed::Missing(evidence) => Some((*feature, evidence.clone())),
            Probed::Present | Probed::Unknown(_) => None,
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingFeatures {
            release: features.release.clone(),
            missing: MissingFeatures(missing),
        })
    }
}

/// Every feature, probed on the running kernel.
pub fn probe_kernel() -> KernelFeatures {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "(release unknown)".to_owned());
    let mut probed = match Btf::from_sys_fs() {
        Ok(btf) => probe_btf(&btf),
        Err(error) => {
            let unknown = Probed::Unknown("no kernel BTF to look in".to_owned());
            let mut probed: BTreeMap<Feature, Probed> = [
                Feature::InetSockSetState,
                Feature::SocketCookie,
                Feature::TaskPtRegs,
            ]
            .into_iter()
            .map(|feature| (feature, unknown.clone()))
            .collect();
            probed.insert(Feature::Btf, Probed::Missing(error.to_string()));
            probed
        }
    };
    probed.insert(Feature::RingBuffer, probe_ring_buffer());
    KernelFeatures { release, probed }
}

/// What the kernel's BTF says: it parsed, and names the functions and the
/// tracepoint type that each feature brought.
pub fn probe_btf(btf: &Btf) -> BTreeMap<Feature, Probed> {
    let by_name = |present: bool, what: &str| {
        if present {
            Probed::Present
        } else {
            Probed::Missing(format!("{VMLINUX_BTF} has no {what}"))
        }
    };
    let function = |name: &str| {
        by_name(
            btf.function_params(name).is_some(),
            &format!("function {name}"),
        )
    };
    let tracepoint = format!("btf_trace_{}", names::TRACEPOINT);
    [
        (Feature::Btf, Probed::Present),
        (
            Feature::InetSockSetState,
            by_name(
                btf.has_type_named(&tracepoint),
                &format!("type {tracepoint}"),
            ),
        ),
        (Feature::SocketCookie, function("bpf_get_socket_ptr_cookie")),
        (Feature::TaskPtRegs, function("bpf_task_pt_regs")),
    ]
    .into_iter()
    .collect()
}

/// Creates a one-page ring buffer map and closes it, as libbpf's probe does.
fn probe_ring_buffer() -> Probed {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => Probed::Present,
        Ok(false) => Probed::Missing("the kernel refuses to create one (EINVAL)".to_owned()),
        Err(error) => Probed::Unknown(format!("{error}: {}", error.io_error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::btf::tests::BtfBuilder;

    #[test]
    fn capabilities() {
        assert!(has_needed_capabilities(1 << CAP_SYS_ADMIN));
        assert!(has_needed_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_needed_capabilities(1 << CAP_BPF));
        assert!(!has_needed_capabilities(0));
    }

    fn kernel(release: &str, probed: &[(Feature, Probed)]) -> KernelFeatures {
        KernelFeatures {
            release: release.to_owned(),
            probed: probed.iter().cloned().collect(),
        }
    }

    fn all_present() -> Vec<(Feature, Probed)> {
        Feature::ALL.map(|f| (f, Probed::Present)).to_vec()
    }

    fn with(feature: Feature, probed: Probed) -> Vec<(Feature, Probed)> {
        let mut features = all_present();
        features.retain(|(f, _)| *f != feature);
        features.push((feature, probed));
        features
    }

    #[test]
    fn a_kernel_with_every_feature_passes_whatever_its_version() {
        for release in [
            "5.14.0-427.13.1.el9_4.x86_64",
            "4.18.0",
            "6.18.44",
            "garbage",
        ] {
            assert_eq!(
                decide(&kernel(release, &all_present())),
                Ok(()),
                "{release}"
            );
        }
    }

    #[test]
    fn each_missing_feature_is_named_with_the_release_that_added_it() {
        for feature in Feature::ALL {
            let features = kernel(
                "5.10.0-28-amd64",
                &with(feature, Probed::Missing("seen missing".into())),
            );
            let error = decide(&features).expect_err("refused").to_string();
            assert!(error.contains("kernel 5.10.0-28-amd64"), "{error}");
            assert!(error.contains(feature.name()), "{error}");
            assert!(
                error.contains(&format!("(since Linux {}): seen missing", feature.since())),
                "{error}"
            );
            for other in Feature::ALL.into_iter().filter(|f| *f != feature) {
                assert!(!error.contains(other.name()), "{error}");
            }
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn every_missing_feature_is_named_at_once() {
        let mut features = all_present();
        features.retain(|(f, _)| *f != Feature::TaskPtRegs && *f != Feature::RingBuffer);
        features.push((Feature::TaskPtRegs, Probed::Missing("a".into())));
        features.push((Feature::RingBuffer, Probed::Missing("b".into())));
        let Err(PreflightError::MissingFeatures { missing, .. }) =
            decide(&kernel("5.4.0", &features))
        else {
            panic!("refused");
        };
        let named: Vec<Feature> = missing.0.iter().map(|(f, _)| *f).collect();
        assert_eq!(named, [Feature::RingBuffer, Feature::TaskPtRegs]);
    }

    #[test]
    fn a_probe_that_failed_is_left_to_the_loader() {
        let features = kernel(
            "5.14.0",
            &with(Feature::RingBuffer, Probed::Unknown("EPERM".into())),
        );
        assert_eq!(decide(&features), Ok(()));
    }

    fn btf_with(functions: &[&str], types: &[&str]) -> Btf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        for name in functions {
            b.function(name, int, &[int]);
        }
        for name in types {
            b.typedef(name, int);
        }
        Btf::parse(&b.build()).expect("test BTF parses")
    }

    #[test]
    fn btf_names_what_each_feature_brought() {
        let full = btf_with(
            &["bpf_get_socket_ptr_cookie", "bpf_task_pt_regs"],
            &["btf_trace_inet_sock_set_state"],
        );
        assert!(probe_btf(&full).values().all(|p| *p == Probed::Present));

        // A 5.10 kernel: the tracepoint, neither helper. A typedef of the
        // helper's name is not the function.
        let old = btf_with(&[], &["btf_trace_inet_sock_set_state", "bpf_task_pt_regs"]);
        let probed = probe_btf(&old);
        assert_eq!(probed[&Feature::Btf], Probed::Present);
        assert_eq!(probed[&Feature::InetSockSetState], Probed::Present);
        assert_eq!(
            probed[&Feature::SocketCookie],
            Probed::Missing(format!(
                "{VMLINUX_BTF} has no function bpf_get_socket_ptr_cookie"
            ))
        );
        assert!(matches!(probed[&Feature::TaskPtRegs], Probed::Missing(_)));

        let no_tracepoint = btf_with(&["bpf_get_socket_ptr_cookie", "bpf_task_pt_regs"], &[]);
        assert!(matches!(
            probe_btf(&no_tracepoint)[&Feature::InetSockSetState],
            Probed::Missing(_)
        ));
    }
}
