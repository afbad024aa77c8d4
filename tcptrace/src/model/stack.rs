//! A user stack resolved to names.

use std::sync::Arc;

/// One frame per line, innermost first.
pub type Frames = Arc<Vec<String>>;

/// A user stack as unwound from the probe's copy: addresses to look up
/// (a return address already moved back into its call), innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwoundStack {
    pub addresses: Vec<u64>,
    /// Why the walk stopped before the outermost frame, if it did.
    pub truncated: Option<String>,
}
