pub mod agent;
pub mod http;
pub mod monitor;
