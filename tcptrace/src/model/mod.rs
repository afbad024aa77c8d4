pub mod activity;
pub mod diagnose;
pub mod endpoint;
pub mod filter;
pub mod leaks;
pub mod tracker;
pub mod transition;
