//! How a socket address is named in findings and reports.

use std::net::SocketAddr;

/// IPv6 in brackets; an IPv4 peer of a dual-stack socket shown as IPv4.
pub fn endpoint(addr: SocketAddr) -> String {
    SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string()
}
