//! The agent's background threads yield the CPU to the host's own work.
//!
//! Unwinding, symbolization (whose first stack of a binary inflates its
//! compressed DWARF, tens of milliseconds once) and host reads can all
//! wait: their results are needed by the next report, not by the next event.
//! On a saturated host they should not take their share from the service
//! being debugged. The thread that drains the ring buffer keeps the agent's
//! priority, so that events are not dropped.

/// Nice 10: under full contention such a thread gets about a tenth of a
/// default thread's share, so it still makes progress; on a host with idle
/// CPU it runs as fast as before.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (only this thread: on Linux a
/// thread id names one thread), never raising it: an agent started under
/// `nice 19` stays there. Best effort: a thread left at its priority does
/// the same work, only less politely.
pub(crate) fn run_in_background() {
    let tid = this_thread();
    // SAFETY: getpriority reads only its integer arguments. It returns the
    // nice value itself, so -1 is ambiguous; either way the max below keeps
    // at least the background value.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    // SAFETY: setpriority reads only its integer arguments.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, tid, current.max(BACKGROUND_NICE));
    }
}

fn this_thread() -> libc::id_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as libc::id_t }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: getpriority reads only its integer arguments.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, this_thread()) }
    }

    #[test]
    fn only_the_calling_thread_is_lowered_and_never_raised() {
        let before = nice_of_this_thread();
        let lowered = std::thread::spawn(|| {
            run_in_background();
            nice_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, BACKGROUND_NICE.max(before));
        assert_eq!(nice_of_this_thread(), before);

        let kept = std::thread::spawn(|| {
            // SAFETY: as above; a higher nice value is always allowed.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, this_thread(), 15) };
            run_in_background();
            nice_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(kept, 15.max(before));
    }
}
