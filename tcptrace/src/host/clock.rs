//! Kernel timestamps (CLOCK_MONOTONIC) to wall-clock time.

use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Realtime minus monotonic, sampled once at start: tcptrace shows when an
    /// event happened in the wall-clock time of its start, unaffected by
    /// later clock steps.
    realtime_minus_monotonic_ns: i128,
}

impl WallClock {
    pub fn new() -> Self {
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: realtime - monotonic,
        }
    }

    pub fn wall_time(&self, monotonic_ns: u64) -> SystemTime {
        let since_epoch = i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns;
        let since_epoch = u64::try_from(since_epoch).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(since_epoch)
    }
}

/// CLOCK_MONOTONIC now, the clock of the probe's timestamps.
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_timestamp_of_now_maps_to_about_now() {
        let clock = WallClock::new();
        let now_monotonic = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let wall = clock.wall_time(now_monotonic);
        let skew = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
        let earlier = clock.wall_time(now_monotonic - 1_000_000_000);
        assert_eq!(
            wall.duration_since(earlier).unwrap(),
            Duration::from_secs(1)
        );
    }
}
