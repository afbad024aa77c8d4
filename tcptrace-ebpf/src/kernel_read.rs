//! Checked reads of kernel memory at the offsets the agent found in BTF.

use core::{ffi::c_void, mem::size_of, ptr::addr_of_mut};

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use tcptrace_common::{AF_INET, TransitionRecord};

#[derive(PartialEq, Eq)]
pub(crate) struct ReadFailed;

/// # Safety
/// `record` must point to a reserved ring-buffer slot.
pub(crate) unsafe fn read_addresses(
    sk: *const u8,
    family: u16,
    record: *mut TransitionRecord,
) -> Result<(), ReadFailed> {
    // SAFETY: the caller passes a reserved slot, whose two 16-byte address
    // fields are valid for writes; `sk` is the tracepoint's BTF-typed socket
    // and the offsets are its address members, found in BTF.
    unsafe {
        let local = addr_of_mut!((*record).local_addr) as *mut [u32; 4];
        let remote = addr_of_mut!((*record).remote_addr) as *mut [u32; 4];
        if family == AF_INET {
            local.write([load_field(sk, config!(local_v4_offset)), 0, 0, 0]);
            remote.write([load_field(sk, config!(remote_v4_offset)), 0, 0, 0]);
        } else {
            local.write(load_v6(sk, config!(local_v6_offset)));
            remote.write(load_v6(sk, config!(remote_v6_offset)));
        }
    }
    Ok(())
}

/// # Safety
/// As for [`load_field`], with a 16-byte address at `offset`.
#[inline(always)]
unsafe fn load_v6(sk: *const u8, offset: u32) -> [u32; 4] {
    // SAFETY: the caller's contract; four loads within the address.
    unsafe {
        [
            load_field(sk, offset),
            load_field(sk, offset + 4),
            load_field(sk, offset + 8),
            load_field(sk, offset + 12),
        ]
    }
}

/// The inode of `sk`'s network namespace, or 0 where the kernel has none.
/// Two plain loads: the verifier types the `struct net *` member it loads,
/// so the second load is checked against `struct net` and faults to 0
/// instead of needing a helper call; `top` and `serve` pay this at every
/// softirq transition of a socket whose owner is not known.
///
/// `sk` must be a BTF-typed socket the kernel gave (a tracing argument).
pub(crate) fn read_netns_inode(sk: *const u8) -> u32 {
    if config!(has_netns) == 0 {
        return 0;
    }
    // SAFETY: `sk` is a BTF-typed socket (the caller's contract); the
    // offsets are `skc_net.net` in it and `ns.inum` in struct net, from BTF.
    unsafe {
        let net: *const u8 = load_field(sk, config!(net_offset));
        load_field::<u32>(net, config!(netns_inode_offset))
    }
}

/// The inode number of the file still attached to `sk`, or 0 when the
/// socket is orphaned (its last fd closed).
pub(crate) fn read_socket_inode(sk: *const u8) -> u64 {
    // A plain load: nearly every socket is orphaned by then, and leaves here.
    // SAFETY: `sk` is a BTF-typed socket the kernel gave (every caller's is
    // a tracepoint argument); the offset is `sk_socket`, found in BTF.
    let socket: u64 = unsafe { load_field(sk, config!(socket_offset)) };
    if socket == 0 {
        return 0;
    }
    read_field::<u64>(socket as *const u8, config!(socket_inode_number_offset)).unwrap_or(0)
}

/// A field of a socket the kernel handed the program as a BTF-typed
/// pointer: a plain load, which the verifier checks against the type and
/// turns into a fault-safe access, instead of a helper call. `offset` must
/// come from the agent's read-only config, so the verifier knows it.
///
/// # Safety
/// `base` must be a tracing argument of a BTF type with a `T` at `offset`.
#[inline(always)]
pub(crate) unsafe fn load_field<T: Copy>(base: *const u8, offset: u32) -> T {
    // SAFETY: the caller's contract; the verifier rejects the program at
    // load time if the access does not match the type.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
}

pub(crate) fn read_field<T: Copy + Default>(base: *const u8, offset: u32) -> Result<T, ReadFailed> {
    let mut value = T::default();
    // SAFETY: probe-read into a local of exactly size_of::<T>() bytes.
    unsafe {
        read_into(
            &raw mut value as *mut u8,
            size_of::<T>() as u32,
            base,
            offset,
        )?
    };
    Ok(value)
}

/// # Safety
/// `dst` must be valid for `len` bytes of writes.
pub(crate) unsafe fn read_into(
    dst: *mut u8,
    len: u32,
    base: *const u8,
    offset: u32,
) -> Result<(), ReadFailed> {
    let src = base.wrapping_add(offset as usize) as *const c_void;
    // SAFETY: `dst` is valid for `len` bytes (the caller's contract); the
    // kernel side of the read is checked by bpf_probe_read_kernel itself.
    match unsafe { bpf_probe_read_kernel(dst as *mut c_void, len, src) } {
        0 => Ok(()),
        _ => Err(ReadFailed),
    }
}
