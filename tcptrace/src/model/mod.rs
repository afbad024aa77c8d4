//! The pure model: what tcptrace knows, and the arithmetic on it.
//!
//! Takes in: decoded transitions, the kernel's socket table, holders and
//! host facts, all as plain values. Gives out: per-socket state, leaks with
//! their ages, per-owner activity, the per-process snapshot `top` shows and
//! `serve` exports, and findings. Imports nothing of probe/,
//! host/, engine/, view/ or commands/, no aya, no /proc, no sockets, no
//! output format: every file here is unit-tested without root.

pub(crate) mod activity;
pub(crate) mod diagnose;
pub(crate) mod endpoint;
pub(crate) mod filter;
#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod health;
pub(crate) mod holder;
pub(crate) mod inferred_owners;
pub(crate) mod kernel_counts;
pub mod kernel_socket;
pub(crate) mod leak_report;
pub(crate) mod leaks;
pub(crate) mod process;
pub(crate) mod python_frames;
pub mod python_layout;
pub(crate) mod python_lines;
pub(crate) mod stack;
pub(crate) mod stack_gaps;
pub(crate) mod top_snapshot;
pub mod tracker;
pub mod transition;
