pub mod agent;
pub mod http;
