//! A user stack resolved to names.

use std::sync::Arc;

/// One frame per line, innermost first.
pub type Frames = Arc<Vec<String>>;
