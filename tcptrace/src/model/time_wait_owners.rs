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
    /// Oldest generation first, each with the time it began.
    generations: VecDeque<(u64, foldhash::HashMap<u64, Process>)>,
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
            .is_none_or(|(began, _)| at_ns.saturating_sub(*began) >= span)
        {
            self.expire(at_ns);
            // Sized like the last one: no growth, one rehash after another,
            // while the churn goes on at the same rate.
            let capacity = self.generations.back().map_or(0, |(_, g)| g.len());
            let mut generation = foldhash::HashMap::default();
            generation.reserve(capacity);
            self.generations.push_back((at_ns, generation));
        }
        let mut dropped = 0;
        if self.len() >= MAX_TIME_WAIT_OWNERS && self.generations.len() > 1 {
            // Full: the oldest owners go first. Their minisocks are the
            // first the kernel drops, and a table read still lists the
            // newest ones for up to a minute.
            if let Some((_, oldest)) = self.generations.pop_front() {
                dropped += oldest.len() as u64;
            }
        }
        if self.len() >= MAX_TIME_WAIT_OWNERS {
            return dropped + 1;
        }
        if let Some((_, newest)) = self.generations.back_mut() {
            newest.insert(cookie, process);
        }
        dropped
    }

    pub fn len(&self) -> usize {
        self.generations.iter().map(|(_, g)| g.len()).sum()
    }

    /// Forgets the owners the kernel has dropped by `now_ns`: the
    /// generations whose span ended more than `TIME_WAIT_MEMORY` ago.
    pub fn expire(&mut self, now_ns: u64) {
        let keep = (TIME_WAIT_MEMORY + TIME_WAIT_GENERATION).as_nanos() as u64;
        while self
            .generations
            .front()
            .is_some_and(|(began, _)| now_ns.saturating_sub(*began) >= keep)
        {
            self.generations.pop_front();
        }
    }

    pub fn owner_of(&self, cookie: u64) -> Option<&Process> {
        self.generations
            .iter()
            .rev()
            .find_map(|(_, generation)| generation.get(&cookie))
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
        owners.expire((1 + keep_s) * second);
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
}
