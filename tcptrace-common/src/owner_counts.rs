//! What `top` and `serve` read from the kernel instead of a record per
//! transition: transition counts per owner, and connects per owner and
//! destination, in per-CPU maps the agent reads once per refresh.

use crate::TcpState;

/// The transitions Linux's TCP makes (`tcp_set_state` and
/// `inet_sk_state_store` callers), each with its slot in
/// [`OwnerCounts::pairs`]; any other lands in [`OTHER_PAIR_SLOT`].
pub const PAIRS: [(TcpState, TcpState); 23] = {
    use TcpState::*;
    [
        (Close, SynSent),
        (Close, Listen),
        (Close, Close),
        (Listen, Close),
        (Listen, SynRecv),
        (SynSent, Established),
        (SynSent, SynRecv),
        (SynSent, Close),
        (SynRecv, Established),
        (SynRecv, FinWait1),
        (SynRecv, CloseWait),
        (SynRecv, Close),
        (Established, FinWait1),
        (Established, CloseWait),
        (Established, Close),
        (FinWait1, FinWait2),
        (FinWait1, Closing),
        (FinWait1, Close),
        (FinWait2, Close),
        (Closing, Close),
        (CloseWait, LastAck),
        (CloseWait, Close),
        (LastAck, Close),
    ]
};

pub const PAIR_SLOTS: usize = 24;
pub const OTHER_PAIR_SLOT: usize = PAIR_SLOTS - 1;
const _: () = assert!(PAIRS.len() == OTHER_PAIR_SLOT);

/// The slot of each (old, new) pair of state numbers, both below 16: a
/// table, so that the probe finds it with one load.
pub static PAIR_SLOT_TABLE: [[u8; 16]; 16] = {
    let mut table = [[OTHER_PAIR_SLOT as u8; 16]; 16];
    let mut slot = 0;
    while slot < PAIRS.len() {
        let (old, new) = PAIRS[slot];
        table[old as usize][new as usize] = slot as u8;
        slot += 1;
    }
    table
};

/// The slot counting the transition `old` -> `new` (raw state numbers).
#[inline(always)]
pub fn pair_slot(old: u8, new: u8) -> usize {
    PAIR_SLOT_TABLE[(old & 15) as usize][(new & 15) as usize] as usize
}

/// Whose transitions an entry counts. A known owner (seen in process
/// context, or kept in the socket's storage since its connect() or
/// accept()) is `{tgid, 0, 0}`; a socket of no known owner, which is an
/// accepted socket where accept() cannot be hooked, or a socket older than
/// tcptrace, is `{0, netns, local port}`: the agent attributes it through
/// the listener on that port, as it does for a record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OwnerKey {
    pub tgid: u32,
    pub netns_inode: u32,
    pub local_port: u16,
    pub _reserved: [u8; 6],
}

pub const OWNER_KEY_SIZE: usize = 16;
const _: () = assert!(core::mem::size_of::<OwnerKey>() == OWNER_KEY_SIZE);

/// One CPU's counts for an [`OwnerKey`]. 32-bit counters wrap after 4
/// billion transitions of one owner on one CPU: the agent takes each CPU's
/// differences between reads modulo 2^32, and tells a wrapped counter from
/// an entry the LRU evicted and the probe made again by `created_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerCounts {
    /// When this CPU first counted into the entry (CLOCK_MONOTONIC ns; 0
    /// until it did).
    pub created_ns: u64,
    /// The owner's command at its newest counted transition (empty for a
    /// key of no known owner).
    pub comm: [u8; crate::TASK_COMM_LEN],
    pub pairs: [u32; PAIR_SLOTS],
}

pub const OWNER_COUNTS_SIZE: usize = 120;
const _: () = assert!(core::mem::size_of::<OwnerCounts>() == OWNER_COUNTS_SIZE);

impl OwnerCounts {
    pub const ZERO: OwnerCounts = OwnerCounts {
        created_ns: 0,
        comm: [0; crate::TASK_COMM_LEN],
        pairs: [0; PAIR_SLOTS],
    };
}

/// Connects of one owner to one destination. IPv4 addresses use the first
/// 4 bytes of `address` and leave the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DestinationKey {
    pub tgid: u32,
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub address: [u8; 16],
}

pub const DESTINATION_KEY_SIZE: usize = 24;
const _: () = assert!(core::mem::size_of::<DestinationKey>() == DESTINATION_KEY_SIZE);

/// One CPU's connects to a destination: attempted at connect(), failed at
/// SYN_SENT -> CLOSE (refused, reset or timed out). Wraps as `OwnerCounts`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DestinationCounts {
    pub created_ns: u64,
    pub attempted: u32,
    pub failed: u32,
}

impl DestinationCounts {
    pub const ZERO: DestinationCounts = DestinationCounts {
        created_ns: 0,
        attempted: 0,
        failed: 0,
    };
}

/// Capacities of the two maps. Both are LRU: past them the least recently
/// counted entry gives way, which the agent sees as an entry gone, and
/// counts; it deletes the entries of processes that exited.
pub const OWNER_KEYS_CAPACITY: u32 = 2048;
pub const DESTINATION_KEYS_CAPACITY: u32 = 8192;

// SAFETY: plain old data: integers and byte arrays, no padding (sizes
// asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for OwnerKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for OwnerCounts {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DestinationKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DestinationCounts {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_pair_has_its_own_slot_and_any_other_shares_the_last() {
        for (slot, (old, new)) in PAIRS.iter().enumerate() {
            assert_eq!(pair_slot(*old as u8, *new as u8), slot);
        }
        let unlisted = (TcpState::Established, TcpState::LastAck);
        assert!(!PAIRS.contains(&unlisted));
        assert_eq!(
            pair_slot(unlisted.0 as u8, unlisted.1 as u8),
            OTHER_PAIR_SLOT
        );
        // Out-of-range numbers stay inside the table.
        assert_eq!(pair_slot(200, 255), OTHER_PAIR_SLOT);
    }
}
