//! The arithmetic of the rounds: medians and ranges.

pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

pub(super) fn spread(values: impl Iterator<Item = f64>) -> Option<Spread> {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: values[0],
        max: values[n - 1],
    })
}

/// Each traced round's value over the untraced round of the same
/// alternation cycle: drift between cycles (other load, thermal, frequency)
/// cancels out of each ratio instead of widening the ratio of medians.
/// Rounds are `(cycle, value)`; a traced round whose cycle has no untraced
/// round, or one of zero, has no ratio.
pub(super) fn paired_ratios(traced: &[(usize, f64)], untraced: &[(usize, f64)]) -> Vec<f64> {
    traced
        .iter()
        .filter_map(|&(cycle, value)| {
            let (_, base) = untraced.iter().find(|&&(c, _)| c == cycle)?;
            (*base > 0.0).then(|| value / base)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = spread([3.0, 1.0, 2.0].into_iter()).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = spread([4.0, 1.0, 3.0, 2.0].into_iter()).unwrap();
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        assert!(spread(std::iter::empty()).is_none());
    }

    #[test]
    fn each_traced_round_is_divided_by_the_untraced_round_of_its_cycle() {
        let untraced = [(0, 1000.0), (1, 800.0), (2, 1000.0)];
        let traced = [(1, 760.0), (0, 950.0), (2, 900.0)];
        assert_eq!(paired_ratios(&traced, &untraced), [0.95, 0.95, 0.9]);
    }

    #[test]
    fn a_round_without_an_untraced_partner_has_no_ratio() {
        let untraced = [(0, 1000.0), (2, 0.0)];
        let traced = [(0, 500.0), (1, 900.0), (2, 900.0)];
        assert_eq!(paired_ratios(&traced, &untraced), [0.5]);
    }
}
