pub mod btf;
pub mod layout;
pub mod loader;
pub mod preflight;
pub mod records;
