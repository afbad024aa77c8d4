//! Ring-buffer bytes -> typed records, with length checks and no unsafe.
//!
//! A record that is short, of an unknown kind, or carries a state or family
//! the kernel does not define is a [`DecodeError`]: counted and skipped by the
//! caller, never a panic and never a guess.

use std::{
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use bytes::Buf;
use tcptrace_common::{
    AF_INET, AF_INET6, DESTROYED_RECORD_SIZE, RecordKind, STACK_COPY_NOT_STORED,
    STACK_COPY_UNREADABLE, STACK_RECORD_SIZE, StackKind, TRANSITION_RECORD_SIZE, TcpState,
    TransitionRecord, owner_counts::DestinationKey,
};
use thiserror::Error;

use crate::model::{
    python_frames::{CopiedFrame, CopiedPython, PythonWalk},
    transition::{Comm, Process, Record, StackCopyFailure, StackSample, Transition},
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes, expected {expected}")]
    WrongLength { len: usize, expected: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("unknown TCP state {0}")]
    UnknownState(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("unknown stack kind {0}")]
    UnknownStackKind(u8),
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut buf = bytes;
    if buf.remaining() < 4 {
        return Err(DecodeError::WrongLength {
            len: bytes.len(),
            expected: TRANSITION_RECORD_SIZE,
        });
    }
    let raw_kind = buf.get_u32_ne();
    match RecordKind::from_raw(raw_kind) {
        Some(RecordKind::Transition) => decode_transition(bytes).map(Record::Transition),
        Some(RecordKind::Destroyed) => decode_destroyed(bytes),
        Some(RecordKind::Stack) => decode_stack(bytes),
        None => Err(DecodeError::UnknownKind(raw_kind)),
    }
}

fn decode_stack(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() != STACK_RECORD_SIZE {
        return Err(DecodeError::WrongLength {
            len: bytes.len(),
            expected: STACK_RECORD_SIZE,
        });
    }
    let mut buf = &bytes[4..];
    let tgid = buf.get_u32_ne();
    let timestamp_ns = buf.get_u64_ne();
    let cookie = buf.get_u64_ne();
    let copy_status = buf.get_i32_ne();
    let raw_kind = buf.get_u8();
    Ok(Record::Stack(StackSample {
        timestamp_ns,
        cookie,
        tgid,
        kind: StackKind::from_raw(raw_kind).ok_or(DecodeError::UnknownStackKind(raw_kind))?,
        copied: match copy_status {
            0 => Ok(()),
            STACK_COPY_UNREADABLE => Err(StackCopyFailure::Unreadable),
            STACK_COPY_NOT_STORED => Err(StackCopyFailure::NotStored),
            other => Err(StackCopyFailure::Other(other)),
        },
    }))
}

fn decode_destroyed(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() != DESTROYED_RECORD_SIZE {
        return Err(DecodeError::WrongLength {
            len: bytes.len(),
            expected: DESTROYED_RECORD_SIZE,
        });
    }
    // After the kind and the kernel's timestamp, which nothing reads.
    let mut buf = &bytes[16..];
    Ok(Record::Destroyed {
        cookie: buf.get_u64_ne(),
    })
}

/// The address a per-destination count is for; `None` for a family that is
/// neither IPv4 nor IPv6.
pub fn destination_address(key: &DestinationKey) -> Option<SocketAddr> {
    let raw = key.address;
    let ip = match key.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(raw)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, key.port))
}

/// Fields are read at their offsets in `TransitionRecord` (constants, so
/// no bounds check is left once the length is known); the unit test
/// `decodes_what_the_probe_writes` checks them against the struct itself.
fn decode_transition(bytes: &[u8]) -> Result<Transition, DecodeError> {
    let Ok(bytes) = <&[u8; TRANSITION_RECORD_SIZE]>::try_from(bytes) else {
        return Err(DecodeError::WrongLength {
            len: bytes.len(),
            expected: TRANSITION_RECORD_SIZE,
        });
    };
    macro_rules! field {
        ($name:ident, $ty:ty) => {
            <$ty>::from_ne_bytes(array(bytes, offset_of!(TransitionRecord, $name)))
        };
        ($name:ident) => {
            array(bytes, offset_of!(TransitionRecord, $name))
        };
    }
    let owner_tgid = field!(owner_tgid, u32);
    let socket_inode = field!(socket_inode, u64);
    let netns_inode = field!(netns_inode, u32);
    let family = field!(family, u16);
    let state = |raw| TcpState::from_raw(raw).ok_or(DecodeError::UnknownState(raw));
    let address = |raw: [u8; 16]| match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(raw))),
        other => Err(DecodeError::UnknownFamily(other)),
    };
    Ok(Transition {
        timestamp_ns: field!(timestamp_ns, u64),
        cookie: field!(cookie, u64),
        skaddr: field!(skaddr, u64),
        owner: (owner_tgid != 0).then(|| Process {
            tgid: owner_tgid,
            comm: Comm::from_kernel(&field!(owner_comm)),
        }),
        local: SocketAddr::new(address(field!(local_addr))?, field!(local_port, u16)),
        remote: SocketAddr::new(address(field!(remote_addr))?, field!(remote_port, u16)),
        old_state: state(field!(old_state, u8))?,
        new_state: state(field!(new_state, u8))?,
        netns_inode: (netns_inode != 0).then_some(netns_inode),
        socket_inode: (socket_inode != 0).then_some(socket_inode),
    })
}

/// The Python frames the probe copied beside a stack, as the model has them.
pub fn python_frames(raw: &tcptrace_common::PyFrames) -> CopiedPython {
    let count = (raw.count as usize).min(raw.frames.len());
    CopiedPython {
        walk: PythonWalk::from_status(raw.status),
        frames: raw.frames[..count]
            .iter()
            .zip(raw.flags)
            .map(|(frame, flags)| CopiedFrame {
                code: frame.code,
                instr: frame.instr,
                flags,
            })
            .collect(),
    }
}

/// `N` bytes at `offset` of a record whose length is known.
#[inline(always)]
fn array<const N: usize>(bytes: &[u8; TRANSITION_RECORD_SIZE], offset: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use tcptrace_common::TASK_COMM_LEN;

    use super::*;

    pub(crate) fn sample_record() -> TransitionRecord {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..6].copy_from_slice(b"server");
        let mut local_addr = [0u8; 16];
        local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut remote_addr = [0u8; 16];
        remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        TransitionRecord {
            kind: RecordKind::Transition as u32,
            owner_tgid: 4242,
            timestamp_ns: 123_456_789,
            cookie: 77,
            skaddr: 0xffff_8880_1234_5678,
            socket_inode: 0,
            local_addr,
            remote_addr,
            owner_comm: comm,
            netns_inode: 4026531840,
            local_port: 8080,
            remote_port: 45678,
            family: AF_INET,
            old_state: TcpState::Established as u8,
            new_state: TcpState::CloseWait as u8,
            _reserved: 0,
        }
    }

    /// The bytes exactly as the probe writes them: the struct's own memory.
    pub(crate) fn record_bytes(record: &TransitionRecord) -> Vec<u8> {
        record.to_bytes().to_vec()
    }

    fn transition(bytes: &[u8]) -> Transition {
        match decode(bytes) {
            Ok(Record::Transition(t)) => t,
            other => panic!("expected a transition, got {other:?}"),
        }
    }

    #[test]
    fn decodes_what_the_probe_writes() {
        let mut record = sample_record();
        record.new_state = TcpState::Close as u8;
        record.socket_inode = 31337;
        let t = transition(&record_bytes(&record));
        assert_eq!(t.socket_inode, Some(31337));
        assert_eq!(t.new_state, TcpState::Close);
        let t = transition(&record_bytes(&sample_record()));
        assert_eq!(t.socket_inode, None);
        assert_eq!(t.timestamp_ns, 123_456_789);
        assert_eq!(t.cookie, 77);
        assert_eq!(t.skaddr, 0xffff_8880_1234_5678);
        assert_eq!(
            t.owner,
            Some(Process {
                tgid: 4242,
                comm: "server".into()
            })
        );
        assert_eq!(t.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.remote, "127.0.0.2:45678".parse().unwrap());
        assert_eq!(t.old_state, TcpState::Established);
        assert_eq!(t.new_state, TcpState::CloseWait);
        assert_eq!(t.netns_inode, Some(4026531840));
    }

    #[test]
    fn decodes_ipv6_and_unknown_owner() {
        let mut record = sample_record();
        record.family = AF_INET6;
        record.local_addr = Ipv6Addr::LOCALHOST.octets();
        record.remote_addr = "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets();
        record.owner_tgid = 0;
        record.netns_inode = 0;
        let t = transition(&record_bytes(&record));
        assert_eq!(t.local, "[::1]:8080".parse().unwrap());
        assert_eq!(t.remote, "[::ffff:10.1.2.3]:45678".parse().unwrap());
        assert_eq!(t.owner, None);
        assert_eq!(t.netns_inode, None);
    }

    #[test]
    fn short_long_and_empty_records_are_errors() {
        let bytes = record_bytes(&sample_record());
        for len in [0, 3, 4, TRANSITION_RECORD_SIZE - 1] {
            assert!(
                matches!(decode(&bytes[..len]), Err(DecodeError::WrongLength { .. })),
                "length {len}"
            );
        }
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode(&long),
            Err(DecodeError::WrongLength { len: 112, .. })
        ));
    }

    #[test]
    fn decodes_stack_records_and_rejects_unknown_kinds() {
        let record = |copy_status: i32, kind: u8| {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&(RecordKind::Stack as u32).to_ne_bytes());
            bytes.extend_from_slice(&77u32.to_ne_bytes());
            bytes.extend_from_slice(&5u64.to_ne_bytes());
            bytes.extend_from_slice(&9u64.to_ne_bytes());
            bytes.extend_from_slice(&copy_status.to_ne_bytes());
            bytes.extend_from_slice(&[kind, 0, 0, 0]);
            bytes
        };
        assert_eq!(
            decode(&record(0, 3)),
            Ok(Record::Stack(StackSample {
                timestamp_ns: 5,
                cookie: 9,
                tgid: 77,
                kind: StackKind::Eof,
                copied: Ok(())
            }))
        );
        let Ok(Record::Stack(failed)) = decode(&record(-1, 1)) else {
            panic!("a failed stack is still a record");
        };
        assert_eq!(failed.copied, Err(StackCopyFailure::Unreadable));
        assert_eq!(decode(&record(1, 9)), Err(DecodeError::UnknownStackKind(9)));
        assert!(decode(&record(1, 1)[..31]).is_err());
    }

    #[test]
    fn decodes_destroyed_records_with_length_checks() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(RecordKind::Destroyed as u32).to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&99u64.to_ne_bytes());
        bytes.extend_from_slice(&4242u64.to_ne_bytes());
        assert_eq!(decode(&bytes), Ok(Record::Destroyed { cookie: 4242 }));
        assert!(matches!(
            decode(&bytes[..20]),
            Err(DecodeError::WrongLength { .. })
        ));
    }

    #[test]
    fn unknown_kind_state_and_family_are_errors() {
        let mut bytes = record_bytes(&sample_record());
        bytes[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));

        let mut record = sample_record();
        record.new_state = 13;
        assert_eq!(
            decode(&record_bytes(&record)),
            Err(DecodeError::UnknownState(13))
        );
        record.new_state = 0;
        assert_eq!(
            decode(&record_bytes(&record)),
            Err(DecodeError::UnknownState(0))
        );

        let mut record = sample_record();
        record.family = 1;
        assert_eq!(
            decode(&record_bytes(&record)),
            Err(DecodeError::UnknownFamily(1))
        );
    }

    #[test]
    fn state_names_match_the_kernel() {
        for (raw, name) in [
            (1, "ESTABLISHED"),
            (2, "SYN_SENT"),
            (3, "SYN_RECV"),
            (4, "FIN_WAIT1"),
            (5, "FIN_WAIT2"),
            (6, "TIME_WAIT"),
            (7, "CLOSE"),
            (8, "CLOSE_WAIT"),
            (9, "LAST_ACK"),
            (10, "LISTEN"),
            (11, "CLOSING"),
            (12, "NEW_SYN_RECV"),
        ] {
            let state = TcpState::from_raw(raw).unwrap();
            assert_eq!(state.name(), name);
            assert_eq!(state as u8, raw);
        }
        assert_eq!(TcpState::from_raw(0), None);
        assert_eq!(TcpState::from_raw(255), None);
    }
}
