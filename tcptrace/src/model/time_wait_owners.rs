//! Who owned each socket that went to TIME_WAIT, kept for as long as the
//! kernel keeps its minisock: the kernel's table lists TIME_WAIT entries
//! with the cookie of the socket they replaced, and no owner.
//!
//! Pure: fed with cookies, owners and event times, tested without root.

use std::{collections::VecDeque, time::Duration};

use crate::model::transition::Process;

/// TIME_WAIT lasts a fixed 60 s on Linux (TCP_TIMEWAIT_LEN); owners of
/// sockets that went there are kept a little longer so a table dump taken
/// just before the kernel drops them still finds them.
pub(crate) const TIME_WAIT_MEMORY: Duration = Duration::from_secs(65);
/// TIME_WAIT owners are kept in generations of this span, and a generation
/// is dropped whole once its newest owner is past `TIME_WAIT_MEMORY`: no
/// owner is removed one by one, on a path that sees every closing client.
/// An owner is thus kept up to one span longer than `TIME_WAIT_MEMORY`.
pub(crate) const TIME_WAIT_GENERATION: Duration = Duration::from_secs(16);
/// So a host with unbounded churn cannot grow the agent without limit: past
/// it, the oldest generation is forgotten early (and counted).
pub(crate) const MAX_TIME_WAIT_OWNERS: usize = 1 << 18;

#[derive(Default)]
pub struct TimeWaitOwners {
    /// Oldest first.
    generations: VecDeque<Generation>,
    /// The storage of the last generation dropped, for the next one: under
    /// steady churn each generation holds megabytes, and one allocated
    /// afresh as another is freed made RSS a saw-tooth of that height (the
    /// soak's 8 MiB every 80 s); reused, its pages stay resident and RSS
    /// flat.
    spare: Option<Vec<(u64, Process)>>,
}

/// Owners appended in the order their sockets closed: one write to memory
/// the previous write just touched, where a hash insert per closing client
/// was a cache miss in a table of a minute's clients. Sorted by cookie at
/// `settle`, before the table is attributed.
struct Generation {
    began_ns: u64,
    owners: Vec<(u64, Process)>,
    /// `owners[..sorted]` is in cookie order; what follows came since.
    sorted: usize,
}

impl Generation {
    /// The newest owner remembered for `cookie` (the kernel never reuses
    /// a cookie, so there is at most one unless a CLOSE was seen twice).
    fn owner_of(&self, cookie: u64) -> Option<&Process> {
        let (sorted, since) = self.owners.split_at(self.sorted);
        if let Some((_, process)) = since.iter().rev().find(|(c, _)| *c == cookie) {
            return Some(process);
        }
        // A stable sort keeps later duplicates later: take the last.
        let after = sorted.partition_point(|(c, _)| *c <= cookie);
        match after.checked_sub(1).map(|i| &sorted[i]) {
            Some((c, process)) if *c == cookie => Some(process),
            _ => None,
        }
    }
}

impl TimeWaitOwners {
    /// Remembers that `process` owned socket `cookie`, which went to
    /// TIME_WAIT at `at_ns`. Returns how many owners were forgotten early,
    /// or not remembered, because the bound was reached.
    pub fn remember(&mut self, cookie: u64, process: Process, at_ns: u64) -> u64 {
        let span = TIME_WAIT_GENERATION.as_nanos() as u64;
        if self
            .generations
            .back()
            .is_none_or(|g| at_ns.saturating_sub(g.began_ns) >= span)
        {
            self.expire(at_ns);
            // Sized like the last one: no growth, one copy after another,
            // while the churn goes on at the same rate.
            let capacity = self.generations.back().map_or(0, |g| g.owners.len());
            let mut owners = self.spare.take().unwrap_or_default();
            owners.reserve(capacity);
            self.generations.push_back(Generation {
                began_ns: at_ns,
                owners,
                sorted: 0,
            });
        }
        let mut dropped = 0;
        if self.len() >= MAX_TIME_WAIT_OWNERS && self.generations.len() > 1 {
            // Full: the oldest owners go first. Their minisocks are the
            // first the kernel drops, and a table read still lists the
            // newest ones for up to a minute.
            if let Some(oldest) = self.generations.pop_front() {
                dropped += oldest.owners.len() as u64;
                self.keep_spare(oldest);
            }
        }
        if self.len() >= MAX_TIME_WAIT_OWNERS {
            return dropped + 1;
        }
        if let Some(newest) = self.generations.back_mut() {
            newest.owners.push((cookie, process));
        }
        dropped
    }

    pub fn len(&self) -> usize {
        self.generations.iter().map(|g| g.owners.len()).sum()
    }

    /// Before the table is attributed: forgets the owners the kernel has
    /// dropped by `now_ns` (the generations whose span ended more than
    /// `TIME_WAIT_MEMORY` ago), and sorts what came since the last call, so
    /// that each lookup is a binary search. Lookups are right without it,
    /// only slower.
    pub fn settle(&mut self, now_ns: u64) {
        self.expire(now_ns);
        for generation in &mut self.generations {
            if generation.sorted < generation.owners.len() {
                // Stable, and quick on a sorted run followed by a nearly
                // sorted one (cookies are handed out in increasing order).
                generation.owners.sort_by_key(|(cookie, _)| *cookie);
                generation.sorted = generation.owners.len();
            }
        }
    }

    fn expire(&mut self, now_ns: u64) {
        let keep = (TIME_WAIT_MEMORY + TIME_WAIT_GENERATION).as_nanos() as u64;
        while self
            .generations
            .front()
            .is_some_and(|g| now_ns.saturating_sub(g.began_ns) >= keep)
        {
            if let Some(oldest) = self.generations.pop_front() {
                self.keep_spare(oldest);
            }
        }
    }

    /// One generation's storage is kept for the next; more would be memory
    /// no one uses.
    fn keep_spare(&mut self, dropped: Generation) {
        let mut owners = dropped.owners;
        if self
            .spare
            .as_ref()
            .is_none_or(|spare| spare.capacity() < owners.capacity())
        {
            owners.clear();
            self.spare = Some(owners);
        }
    }

    pub fn owner_of(&self, cookie: u64) -> Option<&Process> {
        self.generations
            .iter()
            .rev()
            .find_map(|generation| generation.owner_of(cookie))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transition::Comm;

    fn process(tgid: u32) -> Process {
        Process {
            tgid,
            comm: Comm::default(),
        }
    }

    #[test]
    fn a_dropped_generation_lends_its_storage_to_the_next() {
        let mut owners = TimeWaitOwners::default();
        let second = 1_000_000_000;
        let generation_ns = TIME_WAIT_GENERATION.as_nanos() as u64;
        for cookie in 0..1000 {
            owners.remember(cookie, process(10), second);
        }
        let first = owners.generations[0].owners.as_ptr();
        // Far past TIME_WAIT_MEMORY: the first generation expires as the
        // next begins, and that one writes where it wrote.
        let later = second + 20 * generation_ns;
        owners.remember(5000, process(10), later);
        assert_eq!(owners.generations.len(), 1);
        assert_eq!(owners.generations[0].owners.as_ptr(), first);
        assert!(owners.generations[0].owners.capacity() >= 1000);
        assert_eq!(owners.owner_of(5000).map(|p| p.tgid), Some(10));
        assert!(owners.owner_of(1).is_none());
    }

    #[test]
    fn owners_are_forgotten_a_generation_at_a_time() {
        let mut owners = TimeWaitOwners::default();
        let second = 1_000_000_000;
        let generation_s = TIME_WAIT_GENERATION.as_secs();
        assert_eq!(owners.remember(1, process(10), second), 0);
        assert_eq!(owners.remember(2, process(10), 2 * second), 0);
        assert_eq!(
            owners.remember(3, process(10), (1 + generation_s) * second),
            0
        );
        assert_eq!(owners.generations.len(), 2);
        let keep_s = (TIME_WAIT_MEMORY + TIME_WAIT_GENERATION).as_secs();
        owners.settle((1 + keep_s) * second);
        // The first generation went whole, the second stays.
        assert!(owners.owner_of(1).is_none());
        assert!(owners.owner_of(2).is_none());
        assert_eq!(owners.owner_of(3).map(|p| p.tgid), Some(10));
        assert_eq!(owners.len(), 1);
    }

    #[test]
    fn a_full_table_forgets_the_oldest_generation_first() {
        let mut owners = TimeWaitOwners::default();
        let second = 1_000_000_000;
        let old = MAX_TIME_WAIT_OWNERS as u64 - 10;
        let mut dropped = 0;
        for cookie in 1..=old {
            dropped += owners.remember(cookie, process(10), second);
        }
        let later = second + TIME_WAIT_GENERATION.as_nanos() as u64;
        for cookie in old + 1..=old + 20 {
            dropped += owners.remember(cookie, process(10), later);
        }
        // The older generation made room for the newer owners.
        assert!(owners.owner_of(1).is_none());
        assert!(owners.owner_of(old + 20).is_some());
        assert_eq!(owners.len(), 20);
        assert_eq!(dropped, old);
    }

    #[test]
    fn owners_are_found_before_and_after_settling() {
        let mut owners = TimeWaitOwners::default();
        let second = 1_000_000_000;
        // Out of cookie order, as sockets close; 5 closes twice (a CLOSE
        // seen again): the later owner wins, settled or not.
        for (cookie, tgid) in [(9, 1), (5, 2), (7, 3), (5, 4), (1, 5)] {
            owners.remember(cookie, process(tgid), second);
        }
        let owner = |owners: &TimeWaitOwners, cookie| owners.owner_of(cookie).map(|p| p.tgid);
        let expected = [
            (1, Some(5)),
            (5, Some(4)),
            (7, Some(3)),
            (9, Some(1)),
            (2, None),
            (10, None),
        ];
        for (cookie, tgid) in expected {
            assert_eq!(owner(&owners, cookie), tgid, "unsettled, cookie {cookie}");
        }
        owners.settle(second);
        for (cookie, tgid) in expected {
            assert_eq!(owner(&owners, cookie), tgid, "settled, cookie {cookie}");
        }
        // Added after a settle: found in the unsorted part, then settled.
        owners.remember(3, process(6), second);
        owners.remember(5, process(7), second);
        assert_eq!(owner(&owners, 3), Some(6));
        assert_eq!(owner(&owners, 5), Some(7));
        owners.settle(second);
        assert_eq!(owner(&owners, 3), Some(6));
        assert_eq!(owner(&owners, 5), Some(7));
        assert_eq!(owner(&owners, 9), Some(1));
    }
}
