//! Medians and percentiles of benchmark windows and delay histograms.

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of a histogram whose bucket `i` counts values in `[i, i+1)`:
/// the lower edge of the bucket holding it; `None` when the histogram is empty.
pub fn histogram_quantile(buckets: &[u64], q: f64) -> Option<usize> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(i);
        }
    }
    Some(buckets.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn quantiles_of_a_histogram() {
        let mut h = vec![0u64; 100];
        h[10] = 50;
        h[20] = 49;
        h[90] = 1;
        assert_eq!(histogram_quantile(&h, 0.5), Some(10));
        assert_eq!(histogram_quantile(&h, 0.99), Some(20));
        assert_eq!(histogram_quantile(&h, 1.0), Some(90));
        assert_eq!(histogram_quantile(&[0, 0], 0.5), None);
    }
}
