//! Per-owner counts for `top` and `serve` (`count_owners`): every
//! transition, and every connect per destination, counted in per-CPU maps
//! that the agent reads once per refresh, instead of a record each.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_ns, macros::map,
    maps::LruPerCpuHashMap,
};
use tcptrace_common::{
    AF_INET, Counter, SocketOwner,
    owner_counts::{
        DESTINATION_KEYS_CAPACITY, DestinationCounts, DestinationKey, OWNER_KEYS_CAPACITY,
        OwnerCounts, OwnerKey, pair_slot,
    },
};

use crate::{
    count,
    kernel_read::{load_field, read_netns_inode},
};

#[map]
static OWNER_COUNTS: LruPerCpuHashMap<OwnerKey, OwnerCounts> =
    LruPerCpuHashMap::with_max_entries(OWNER_KEYS_CAPACITY, 0);

#[map]
static DESTINATIONS: LruPerCpuHashMap<DestinationKey, DestinationCounts> =
    LruPerCpuHashMap::with_max_entries(DESTINATION_KEYS_CAPACITY, 0);

/// Counts `old` -> `new` for `owner`, or, for a socket of no known owner,
/// for the port it is bound to in its namespace (`local_port`).
pub(crate) fn count_transition(
    sk: *const u8,
    old_state: u8,
    new_state: u8,
    owner: &SocketOwner,
    local_port: impl FnOnce() -> u16,
) {
    let key = if owner.tgid != 0 {
        OwnerKey {
            tgid: owner.tgid,
            netns_inode: 0,
            local_port: 0,
            _reserved: [0; 6],
        }
    } else {
        OwnerKey {
            tgid: 0,
            netns_inode: read_netns_inode(sk),
            local_port: local_port(),
            _reserved: [0; 6],
        }
    };
    let Some(counts) = entry(&OWNER_COUNTS, &key, &OwnerCounts::ZERO) else {
        count(Counter::OwnerCountLost);
        return;
    };
    // SAFETY: this CPU's value of a live entry; the program does not nest
    // on a CPU, so nothing else writes it meanwhile.
    let counts = unsafe { &mut *counts };
    mark_created(&mut counts.created_ns);
    if owner.tgid != 0 {
        // A command can change (exec, prctl): the newest is shown.
        counts.comm = owner.comm;
    }
    if let Some(slot) = counts.pairs.get_mut(pair_slot(old_state, new_state)) {
        *slot = slot.wrapping_add(1);
    }
}

/// A connect() by `tgid` (in its own syscall): an attempt to the socket's
/// destination; `failed` at SYN_SENT -> CLOSE, for the owner its storage kept.
pub(crate) fn count_connect(sk: *const u8, tgid: u32, failed: bool) {
    let key = destination(sk, tgid);
    let Some(counts) = entry(&DESTINATIONS, &key, &DestinationCounts::ZERO) else {
        count(Counter::OwnerCountLost);
        return;
    };
    // SAFETY: as in `count_transition`.
    let counts = unsafe { &mut *counts };
    mark_created(&mut counts.created_ns);
    if failed {
        counts.failed = counts.failed.wrapping_add(1);
    } else {
        counts.attempted = counts.attempted.wrapping_add(1);
    }
}

fn destination(sk: *const u8, tgid: u32) -> DestinationKey {
    // SAFETY: `sk` is the tracepoint's BTF-typed socket; the offsets are
    // its members, found in BTF.
    let (family, port, address) = unsafe {
        let family: u16 = load_field(sk, config!(family_offset));
        let port = u16::from_be(load_field(sk, config!(remote_port_offset)));
        let words: [u32; 4] = if family == AF_INET {
            [load_field(sk, config!(remote_v4_offset)), 0, 0, 0]
        } else {
            let offset = config!(remote_v6_offset);
            [
                load_field(sk, offset),
                load_field(sk, offset + 4),
                load_field(sk, offset + 8),
                load_field(sk, offset + 12),
            ]
        };
        (family, port, words)
    };
    DestinationKey {
        tgid,
        family,
        port,
        // SAFETY: 16 bytes either way, and every bit pattern is a valid u8.
        address: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(address) },
    }
}

/// This CPU's first count into an entry dates it, so that the agent tells
/// an entry made again (after the LRU evicted it) from a counter that
/// wrapped.
fn mark_created(created_ns: &mut u64) {
    if *created_ns == 0 {
        // SAFETY: a helper with no arguments.
        *created_ns = unsafe { bpf_ktime_get_ns() };
    }
}

/// This CPU's value of the entry for `key`, created from `zero` if it is
/// not there yet.
fn entry<K, V>(map: &LruPerCpuHashMap<K, V>, key: &K, zero: &'static V) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    // Another CPU may insert the same key first: then this insert fails and
    // the lookup finds that entry.
    let _ = map.insert(key, zero, BPF_NOEXIST as u64);
    map.get_ptr_mut(key)
}
