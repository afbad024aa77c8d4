//! The kernel side, and the only code that touches aya.
//!
//! Takes in: the running kernel's BTF and the options of the command.
//! Gives out: a loaded, attached probe whose ring buffer yields bytes that
//! `records` decodes into [`crate::model::transition`] values, plus the
//! probe's counters and map occupancy. `preflight` says, before anything is
//! loaded, what this kernel and these privileges allow.

pub(crate) mod btf;
pub(crate) mod layout;
pub mod loader;
pub mod preflight;
pub mod records;
pub mod ring_reader;
