pub mod clock;
pub mod container;
pub mod procfs;
pub mod reader;
pub mod sockdiag;
pub mod symbolize;
