//! The kernel feature probes, run for real: the running kernel, which the
//! other root tests load the probe on, must be found to have every feature,
//! each by its own probe (a map created, names looked up in BTF).

mod common;

use common::require_root;
use tcptrace::probe::preflight::{self, Feature, Probed};

#[test]
fn the_running_kernel_has_every_feature_tcptrace_needs() {
    if !require_root() {
        return;
    }
    let features = preflight::probe_kernel();
    for feature in Feature::ALL {
        assert_eq!(
            features.probed.get(&feature),
            Some(&Probed::Present),
            "{feature:?} on {}: {features:#?}",
            features.release
        );
    }
    assert_eq!(preflight::decide(&features), Ok(()));
}
