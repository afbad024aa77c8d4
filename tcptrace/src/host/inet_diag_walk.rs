//! One walk of the kernel's TCP hash for both address families.
//!
//! A `SOCK_DIAG_BY_FAMILY` request names one family, yet the kernel walks
//! the whole established hash (IPv4 and IPv6 share it, TIME_WAIT included)
//! for each request, skipping the other family's sockets. On a churning host
//! that hash holds hundreds of thousands of TIME_WAIT sockets, and two walks
//! per read were the agent's largest cost. The older `TCPDIAG_GETSOCK`
//! request asks for every family in one walk and answers with the same
//! `inet_diag_msg`; netlink-packet-sock-diag does not model it, so it is
//! written and parsed here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_sys::Socket;
use tcptrace_common::TcpState;

use crate::{
    host::sockdiag::{SockDiagError, receive},
    model::kernel_socket::KernelSocket,
};

/// `TCPDIAG_GETSOCK`: the request whose dump covers every family.
const TCPDIAG_GETSOCK: u16 = 18;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
pub(crate) const HEADER_LEN: usize = 16;
/// `struct inet_diag_req`: family, lengths, extensions, a 48-byte socket
/// id, the state bits and `idiag_dbs`.
const REQUEST_LEN: usize = 4 + 48 + 4 + 4;
/// `struct inet_diag_msg`.
const MESSAGE_LEN: usize = 72;
pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;

/// What a walk found, or that the kernel refused the request (then the
/// caller asks per family).
pub(crate) enum Walk {
    Sockets(Vec<KernelSocket>),
    Refused,
}

/// Dumps the sockets in the state bits `states` (bit N is state N).
pub(crate) fn walk_tcp(
    socket: &Socket,
    states: u32,
    netns_inode: u64,
) -> Result<Walk, SockDiagError> {
    socket
        .send(&request(states), 0)
        .map_err(|source| SockDiagError::Io {
            step: "send",
            source,
        })?;
    let mut sockets = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = receive(socket, &mut buf)?;
        for (kind, _, body) in messages(&buf[..size])? {
            match kind {
                NLMSG_DONE => return Ok(Walk::Sockets(sockets)),
                NLMSG_ERROR => {
                    return Ok(Walk::Refused);
                }
                TCPDIAG_GETSOCK => {
                    if let Some(found) = parse_message(body, netns_inode)? {
                        sockets.push(found);
                    }
                }
                _ => {}
            }
        }
    }
}

/// One netlink message of a datagram: (type, sequence, body).
type Message<'a> = (u16, u32, &'a [u8]);

/// The netlink messages of one datagram.
pub(crate) fn messages(datagram: &[u8]) -> Result<Vec<Message<'_>>, SockDiagError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + HEADER_LEN <= datagram.len() {
        let length = u32_at(datagram, offset) as usize;
        if length < HEADER_LEN || offset + length > datagram.len() {
            return Err(SockDiagError::Decode(format!(
                "netlink message of {length} bytes at {offset} in a reply of {}",
                datagram.len()
            )));
        }
        let kind = u16::from_ne_bytes([datagram[offset + 4], datagram[offset + 5]]);
        let sequence = u32_at(datagram, offset + 8);
        out.push((
            kind,
            sequence,
            &datagram[offset + HEADER_LEN..offset + length],
        ));
        // Messages are 4-byte aligned.
        offset += (length + 3) & !3;
    }
    Ok(out)
}

fn request(states: u32) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_LEN + REQUEST_LEN);
    packet.extend_from_slice(&((HEADER_LEN + REQUEST_LEN) as u32).to_ne_bytes());
    packet.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    packet.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    packet.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    packet.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    // Family AF_UNSPEC: every family, the point of this request.
    packet.extend_from_slice(&[0, 0, 0, 0]);
    packet.extend_from_slice(&[0; 48]);
    packet.extend_from_slice(&states.to_ne_bytes());
    packet.extend_from_slice(&0u32.to_ne_bytes());
    packet
}

/// `Ok(None)` for a family or state this agent does not model.
pub(crate) fn parse_message(
    body: &[u8],
    netns_inode: u64,
) -> Result<Option<KernelSocket>, SockDiagError> {
    if body.len() < MESSAGE_LEN {
        return Err(SockDiagError::Decode(format!(
            "inet_diag_msg of {} bytes, expected {MESSAGE_LEN}",
            body.len()
        )));
    }
    let Some(state) = TcpState::from_raw(body[1]) else {
        return Ok(None);
    };
    let address = |at: usize| -> Option<IpAddr> {
        match body[0] {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                body[at],
                body[at + 1],
                body[at + 2],
                body[at + 3],
            ))),
            AF_INET6 => {
                let bytes: [u8; 16] = body[at..at + 16].try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(bytes)))
            }
            _ => None,
        }
    };
    let (Some(local), Some(remote)) = (address(8), address(24)) else {
        return Ok(None);
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    Ok(Some(KernelSocket {
        cookie: u64::from(u32_at(body, 44)) | (u64::from(u32_at(body, 48)) << 32),
        inode: u64::from(u32_at(body, 68)),
        state,
        local: SocketAddr::new(local, port(4)),
        remote: SocketAddr::new(remote, port(6)),
        recv_queue: u32_at(body, 56),
        send_queue: u32_at(body, 60),
        netns_inode,
    }))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(family: u8, state: u8, src: &[u8], dst: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; MESSAGE_LEN];
        body[0] = family;
        body[1] = state;
        body[4..6].copy_from_slice(&8080u16.to_be_bytes());
        body[6..8].copy_from_slice(&40000u16.to_be_bytes());
        body[8..8 + src.len()].copy_from_slice(src);
        body[24..24 + dst.len()].copy_from_slice(dst);
        body[44..48].copy_from_slice(&0x1234u32.to_ne_bytes());
        body[48..52].copy_from_slice(&0x5u32.to_ne_bytes());
        body[56..60].copy_from_slice(&7u32.to_ne_bytes());
        body[68..72].copy_from_slice(&99u32.to_ne_bytes());
        body
    }

    #[test]
    fn an_ipv4_message_is_read_field_by_field() {
        let body = message(
            AF_INET,
            TcpState::CloseWait as u8,
            &[127, 0, 0, 1],
            &[10, 0, 0, 2],
        );
        let socket = parse_message(&body, 42).unwrap().unwrap();
        assert_eq!(socket.cookie, 0x5_0000_1234);
        assert_eq!(socket.inode, 99);
        assert_eq!(socket.state, TcpState::CloseWait);
        assert_eq!(socket.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(socket.remote, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(socket.recv_queue, 7);
        assert_eq!(socket.netns_inode, 42);
    }

    #[test]
    fn an_ipv6_message_keeps_all_sixteen_bytes() {
        let local = Ipv6Addr::LOCALHOST.octets();
        let remote = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets();
        let body = message(AF_INET6, TcpState::Established as u8, &local, &remote);
        let socket = parse_message(&body, 1).unwrap().unwrap();
        assert_eq!(socket.local, "[::1]:8080".parse().unwrap());
        assert_eq!(socket.remote, "[2001:db8::7]:40000".parse().unwrap());
    }

    #[test]
    fn a_short_message_is_an_error_and_an_unknown_family_is_skipped() {
        assert!(parse_message(&[0u8; 40], 1).is_err());
        let body = message(1, TcpState::CloseWait as u8, &[], &[]);
        assert!(parse_message(&body, 1).unwrap().is_none());
    }

    #[test]
    fn the_request_asks_every_family_for_the_given_states() {
        let packet = request(1 << 8);
        assert_eq!(packet.len(), HEADER_LEN + REQUEST_LEN);
        assert_eq!(u32_at(&packet, 0) as usize, packet.len());
        assert_eq!(u16::from_ne_bytes([packet[4], packet[5]]), TCPDIAG_GETSOCK);
        assert_eq!(packet[HEADER_LEN], 0, "AF_UNSPEC");
        assert_eq!(u32_at(&packet, HEADER_LEN + 52), 1 << 8);
    }

    #[test]
    fn a_datagram_splits_into_aligned_messages_and_a_torn_one_is_an_error() {
        let mut datagram = Vec::new();
        for (kind, sequence, body_len) in [(NLMSG_ERROR, 3u32, 5usize), (20, 4, 8)] {
            let length = (HEADER_LEN + body_len) as u32;
            datagram.extend_from_slice(&length.to_ne_bytes());
            datagram.extend_from_slice(&kind.to_ne_bytes());
            datagram.extend_from_slice(&[0, 0]);
            datagram.extend_from_slice(&sequence.to_ne_bytes());
            datagram.extend_from_slice(&[0; 4]);
            datagram.extend(std::iter::repeat_n(9u8, body_len));
            while datagram.len() % 4 != 0 {
                datagram.push(0);
            }
        }
        let split = messages(&datagram).unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(
            (split[0].0, split[0].1, split[0].2.len()),
            (NLMSG_ERROR, 3, 5)
        );
        assert_eq!((split[1].0, split[1].1, split[1].2.len()), (20, 4, 8));
        assert!(messages(&datagram[..datagram.len() - 4]).is_err());
    }
}
