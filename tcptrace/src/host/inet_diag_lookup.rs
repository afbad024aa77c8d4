//! Sockets looked up one by one in the kernel's TCP table, by address and
//! cookie, instead of a walk of the whole table.
//!
//! A dump walks the whole established hash, TIME_WAIT included: on a
//! churning host 10⁵–10⁶ sockets per read, to list the few in CLOSE_WAIT.
//! When the events already say which sockets are in CLOSE_WAIT, asking the
//! kernel about those alone costs a hash lookup each. Requests go out in
//! small batches (netlink answers every request of a datagram in turn), so
//! the answers never overflow the socket's receive buffer.

use std::net::{IpAddr, SocketAddr};

use crate::{
    host::inet_diag_walk::{
        AF_INET, AF_INET6, HEADER_LEN, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, messages,
        parse_message,
    },
    host::sockdiag::{SockDiagError, open, receive},
    model::kernel_socket::KernelSocket,
};

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_req_v2`: family, protocol, extensions, padding, the
/// state bits and a 48-byte socket id.
const REQUEST_LEN: usize = 8 + 48;
const IPPROTO_TCP: u8 = 6;
/// Requests per datagram. Each answer is an skb of about a kilobyte or two
/// until read; 32 of them fit the default receive buffer with room to spare.
const BATCH: usize = 32;

/// One socket to look up: where it is, and the cookie that tells it from a
/// later socket on the same addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketQuery {
    pub cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns_inode: u64,
}

/// What a lookup found. `missed` holds the cookies of the queries the
/// kernel had no matching socket for (gone, a newer socket on its
/// addresses, or one its lookup cannot match without the bound device).
#[derive(Debug, Default)]
pub struct Lookup {
    pub found: Vec<KernelSocket>,
    pub missed: Vec<u64>,
}

/// Looks `queries` up in the calling thread's network namespace.
pub(crate) fn look_up_tcp(
    queries: &[SocketQuery],
    netns_inode: u64,
) -> Result<Lookup, SockDiagError> {
    let socket = open()?;
    let mut lookup = Lookup::default();
    let mut buf = vec![0u8; 64 * 1024];
    for batch in queries.chunks(BATCH) {
        let mut packet = Vec::with_capacity(batch.len() * (HEADER_LEN + REQUEST_LEN));
        for (sequence, query) in batch.iter().enumerate() {
            packet.extend_from_slice(&request(query, sequence as u32));
        }
        socket
            .send(&packet, 0)
            .map_err(|source| SockDiagError::Io {
                step: "send",
                source,
            })?;
        let mut answered = vec![false; batch.len()];
        let mut answers = 0;
        while answers < batch.len() {
            let size = receive(&socket, &mut buf)?;
            for (kind, sequence, body) in messages(&buf[..size])? {
                let Some(query) = batch.get(sequence as usize) else {
                    continue;
                };
                if kind == NLMSG_DONE || std::mem::replace(&mut answered[sequence as usize], true) {
                    continue;
                }
                answers += 1;
                let found = match kind {
                    NLMSG_ERROR => None,
                    _ => parse_message(body, netns_inode)?,
                };
                match found {
                    Some(socket) if socket.cookie == query.cookie => lookup.found.push(socket),
                    _ => lookup.missed.push(query.cookie),
                }
            }
        }
    }
    Ok(lookup)
}

/// An exact request (no dump flag) for one socket, every state.
fn request(query: &SocketQuery, sequence: u32) -> [u8; HEADER_LEN + REQUEST_LEN] {
    let mut packet = [0u8; HEADER_LEN + REQUEST_LEN];
    packet[0..4].copy_from_slice(&((HEADER_LEN + REQUEST_LEN) as u32).to_ne_bytes());
    packet[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    packet[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    packet[8..12].copy_from_slice(&sequence.to_ne_bytes());
    // Port 0: the kernel.
    let body = &mut packet[HEADER_LEN..];
    body[0] = match query.local.ip() {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };
    body[1] = IPPROTO_TCP;
    body[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    let id = &mut body[8..];
    id[0..2].copy_from_slice(&query.local.port().to_be_bytes());
    id[2..4].copy_from_slice(&query.remote.port().to_be_bytes());
    put_address(&mut id[4..20], query.local.ip());
    put_address(&mut id[20..36], query.remote.ip());
    // id[36..40]: interface 0, any.
    id[40..44].copy_from_slice(&(query.cookie as u32).to_ne_bytes());
    id[44..48].copy_from_slice(&((query.cookie >> 32) as u32).to_ne_bytes());
    packet
}

fn put_address(out: &mut [u8], address: IpAddr) {
    match address {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(local: &str, remote: &str) -> SocketQuery {
        SocketQuery {
            cookie: 0x1122_3344_5566_7788,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            netns_inode: 1,
        }
    }

    #[test]
    fn an_ipv4_request_names_the_socket_by_addresses_ports_and_cookie() {
        let packet = request(&query("127.0.0.1:8080", "127.1.2.3:40000"), 7);
        assert_eq!(u32::from_ne_bytes(packet[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes([packet[4], packet[5]]), 20);
        // No dump flag: one answer for this socket alone.
        assert_eq!(u16::from_ne_bytes([packet[6], packet[7]]), NLM_F_REQUEST);
        assert_eq!(u32::from_ne_bytes(packet[8..12].try_into().unwrap()), 7);
        let body = &packet[16..];
        assert_eq!((body[0], body[1]), (AF_INET, IPPROTO_TCP));
        let id = &body[8..];
        assert_eq!(&id[0..4], &[0x1f, 0x90, 0x9c, 0x40]);
        assert_eq!(&id[4..8], &[127, 0, 0, 1]);
        assert_eq!(&id[8..20], &[0; 12]);
        assert_eq!(&id[20..24], &[127, 1, 2, 3]);
        let cookie_low = u32::from_ne_bytes(id[40..44].try_into().unwrap());
        let cookie_high = u32::from_ne_bytes(id[44..48].try_into().unwrap());
        assert_eq!((cookie_low, cookie_high), (0x5566_7788, 0x1122_3344));
    }

    #[test]
    fn an_ipv6_request_carries_all_sixteen_bytes() {
        let packet = request(&query("[::1]:443", "[fe80::2]:5000"), 0);
        let body = &packet[16..];
        assert_eq!(body[0], AF_INET6);
        let id = &body[8..];
        assert_eq!(id[19], 1);
        assert_eq!(&id[20..22], &[0xfe, 0x80]);
        assert_eq!(id[35], 2);
    }
}
