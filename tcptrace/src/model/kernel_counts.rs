//! The probe's per-owner counters, read whole at each refresh, as what
//! changed since the previous read. Pure: fed the values each read
//! returned, tested without root.
//!
//! The kernel keeps one 32-bit value per counter and CPU, each stamped with
//! when that CPU first counted into the entry. A CPU's difference between
//! two reads is exact modulo 2^32 while the stamp is unchanged; a new stamp
//! is an entry the LRU evicted and the probe made again, whose whole value
//! is new.

use std::{collections::HashMap, hash::Hash};

/// One CPU's value of an entry: its stamp and its counters.
pub type CpuCounts<const N: usize> = (u64, [u32; N]);

pub struct CountDeltas<K, const N: usize> {
    previous: HashMap<K, Vec<CpuCounts<N>>>,
    /// Entries that vanished between two reads without being forgotten:
    /// evicted from a full map, with whatever they counted since the read
    /// before.
    pub evicted: u64,
}

impl<K, const N: usize> Default for CountDeltas<K, N> {
    fn default() -> Self {
        Self {
            previous: HashMap::new(),
            evicted: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, const N: usize> CountDeltas<K, N> {
    /// What each entry of `read` counted since the previous read, for the
    /// entries that counted anything.
    pub fn advance(&mut self, read: Vec<(K, Vec<CpuCounts<N>>)>) -> Vec<(K, [u64; N])> {
        let mut next = HashMap::with_capacity(read.len());
        let mut changed = Vec::new();
        for (key, cpus) in read {
            let before = self.previous.remove(&key);
            let mut delta = [0u64; N];
            for (cpu, (stamp, counts)) in cpus.iter().enumerate() {
                let prior = before
                    .as_ref()
                    .and_then(|b| b.get(cpu))
                    .filter(|(prior_stamp, _)| prior_stamp == stamp);
                for (slot, count) in counts.iter().enumerate() {
                    delta[slot] += u64::from(match prior {
                        Some((_, prior_counts)) => count.wrapping_sub(prior_counts[slot]),
                        None => *count,
                    });
                }
            }
            if delta.iter().any(|&d| d > 0) {
                changed.push((key.clone(), delta));
            }
            next.insert(key, cpus);
        }
        self.evicted += self.previous.len() as u64;
        self.previous = next;
        changed
    }

    /// Forgets the entries `forgotten` picks, which the caller then deletes
    /// from the kernel's map: gone by choice, not evicted, and new from
    /// zero if they come back. Returns them.
    pub fn forget(&mut self, forgotten: impl Fn(&K) -> bool) -> Vec<K> {
        let keys: Vec<K> = self
            .previous
            .keys()
            .filter(|k| forgotten(k))
            .cloned()
            .collect();
        for key in &keys {
            self.previous.remove(key);
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_adds_what_it_counted_since_the_last_read() {
        let mut deltas = CountDeltas::<u32, 2>::default();
        let first = deltas.advance(vec![(7, vec![(100, [3, 0]), (0, [0, 0])])]);
        assert_eq!(first, vec![(7, [3, 0])]);
        let second = deltas.advance(vec![(7, vec![(100, [5, 1]), (200, [4, 0])])]);
        assert_eq!(second, vec![(7, [6, 1])]);
        // Nothing new: nothing reported.
        let third = deltas.advance(vec![(7, vec![(100, [5, 1]), (200, [4, 0])])]);
        assert!(third.is_empty());
        assert_eq!(deltas.evicted, 0);
    }

    #[test]
    fn a_wrapped_counter_is_exact_and_a_made_again_entry_is_new() {
        let mut deltas = CountDeltas::<u32, 1>::default();
        deltas.advance(vec![
            (1, vec![(100, [u32::MAX - 1])]),
            (2, vec![(100, [50])]),
        ]);
        let next = deltas.advance(vec![(1, vec![(100, [3])]), (2, vec![(300, [2])])]);
        assert_eq!(next, vec![(1, [5]), (2, [2])]);
    }

    #[test]
    fn an_entry_gone_unasked_was_evicted_and_a_forgotten_one_was_not() {
        let mut deltas = CountDeltas::<u32, 1>::default();
        deltas.advance(vec![(1, vec![(100, [1])]), (2, vec![(100, [1])])]);
        deltas.forget(|key| *key == 2);
        deltas.advance(Vec::new());
        assert_eq!(deltas.evicted, 1);
        // Forgotten and counted again: all of it is new.
        let back = deltas.advance(vec![(2, vec![(100, [1])])]);
        assert_eq!(back, vec![(2, [1])]);
    }
}
