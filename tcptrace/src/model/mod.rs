//! The pure model: what tcptrace knows, and the arithmetic on it.
//!
//! Takes in: decoded transitions, the kernel's socket table, holders and
//! host facts, all as plain values. Gives out: per-socket state, leaks with
//! their ages, per-owner activity, and findings. Imports nothing of probe/,
//! host/, engine/, view/ or commands/, no aya, no /proc, no sockets, no
//! output format: every file here is unit-tested without root.

pub mod activity;
pub mod diagnose;
pub mod endpoint;
pub mod filter;
pub mod health;
pub mod holder;
pub mod kernel_socket;
pub mod leaks;
pub mod process;
pub mod stack;
pub mod tracker;
pub mod transition;
