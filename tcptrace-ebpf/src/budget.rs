//! The stack-copy budget: a copy reads 8 KiB and inserts it in a map, and
//! every socket on the host has a moment to copy, so copies are sampled by
//! a token bucket per CPU (no lock shared between CPUs), with a second
//! bucket for the processes the agent targets because they leak with no
//! code path.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use tcptrace_common::{Counter, STACK_TARGETS_CAPACITY};

use crate::{count, socket_storage::current_tgid};

/// Slot 0: every process's copies; slot 1: the targeted processes'.
#[map]
static STACK_BUDGET: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(2, 0);

/// tgid -> 1: processes that leak sockets with no code path, whose every
/// new socket the agent wants a copy of. The agent inserts and deletes.
#[map]
pub(crate) static STACK_TARGETS: HashMap<u32, u32> =
    HashMap::with_max_entries(STACK_TARGETS_CAPACITY, 0);

#[repr(C)]
struct Bucket {
    /// Nanoseconds of credit; a copy spends `cost_ns`.
    credit_ns: u64,
    /// When credit last accrued (0 until the first copy: a full bucket).
    last_ns: u64,
}

/// Which bucket paid for a copy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payer {
    Host,
    Targeted,
}

/// Which bucket lets a stack copy be taken now, on this CPU, by this
/// process; `None` when neither has room.
pub(crate) fn allows_copy() -> Option<Payer> {
    let cost = config!(stack_copy_cost_ns);
    if cost == 0 {
        return Some(Payer::Host);
    }
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if spend(0, now, cost, config!(stack_burst_copies)) {
        return Some(Payer::Host);
    }
    // SAFETY: a lookup only tests presence; the value is not read.
    let targeted = unsafe { STACK_TARGETS.get(current_tgid()) }.is_some();
    if targeted
        && spend(
            1,
            now,
            config!(targeted_copy_cost_ns),
            config!(targeted_burst_copies),
        )
    {
        return Some(Payer::Targeted);
    }
    count(Counter::StackBudgetRefused);
    None
}

/// The agent sets both buckets' costs whenever it sets a budget.
fn spend(slot: u32, now: u64, cost: u32, burst: u32) -> bool {
    let Some(bucket) = STACK_BUDGET.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's slot; the program does not nest on a CPU.
    let bucket = unsafe { &mut *bucket };
    let cap = cost as u64 * burst as u64;
    let mut credit = bucket
        .credit_ns
        .saturating_add(now.wrapping_sub(bucket.last_ns));
    if credit > cap {
        credit = cap;
    }
    bucket.last_ns = now;
    if credit < cost as u64 {
        bucket.credit_ns = credit;
        return false;
    }
    bucket.credit_ns = credit - cost as u64;
    true
}
