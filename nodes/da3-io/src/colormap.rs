//! Colour maps shared by the DA3 node and the exporters: percentiles and the
//! colour-mapped depth image (back-projection is in [`crate::geometry`]).

/// Percentile `p` (0..=100) of the finite values, linearly interpolated
/// between ranks (numpy's default); `None` when there is no finite value.
pub fn percentile(values: &[f32], p: f64) -> Option<f32> {
    percentiles(values, &[p]).pop().flatten()
}

/// Several percentiles of the finite values at once (numpy's linear interpolation), in
/// O(n) each by selection instead of a sort (a 504x378 map: ~1 ms instead of ~8).
pub fn percentiles(values: &[f32], ps: &[f64]) -> Vec<Option<f32>> {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    ps.iter()
        .map(|&p| {
            if v.is_empty() {
                return None;
            }
            let pos = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let f = (pos - lo as f64) as f32;
            let (_, &mut a, rest) = v.select_nth_unstable_by(lo, f32::total_cmp);
            // The next value in order is the smallest of those after the selected one.
            let b = if hi > lo {
                rest.iter().copied().fold(f32::INFINITY, f32::min)
            } else {
                a
            };
            Some(a + (b - a) * f)
        })
        .collect()
}

/// Turbo colour map (polynomial fit), `t` in [0, 1].
pub fn turbo(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) as f64;
    let r = 0.13572138
        + t * (4.61539260
            + t * (-42.66032258 + t * (132.13108234 + t * (-152.94239396 + t * 59.28637943))));
    let g = 0.09140261
        + t * (2.19418839
            + t * (4.84296658 + t * (-14.18503333 + t * (4.27729857 + t * 2.82956604))));
    let b = 0.10667330
        + t * (12.64194608
            + t * (-60.58204836 + t * (110.36276771 + t * (-89.90310912 + t * 27.34824973))));
    let c = |x: f64| (x.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
    [c(r), c(g), c(b)]
}

/// Packed RGB8 of a depth map: turbo of inverse depth over its 2nd-98th
/// percentiles (near = warm, one outlier does not flatten the picture);
/// invalid (non-finite or non-positive) depth is black.
pub fn colorize_depth(depth: &[f32]) -> Vec<u8> {
    let inv: Vec<f32> = depth
        .iter()
        .map(|&d| {
            if d > 0.0 && d.is_finite() {
                1.0 / d
            } else {
                f32::NAN
            }
        })
        .collect();
    let q = percentiles(&inv, &[2.0, 98.0]);
    let lo = q[0].unwrap_or(0.0);
    let hi = q[1].unwrap_or(1.0);
    let span = if hi > lo { hi - lo } else { 1.0 };
    inv.iter()
        .flat_map(|&x| {
            if x.is_finite() {
                turbo((x - lo) / span)
            } else {
                [0, 0, 0]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[0.0, 10.0], 25.0), Some(2.5));
        assert_eq!(percentile(&[f32::NAN], 50.0), None);
        assert_eq!(percentile(&[1.0, f32::NAN, 3.0], 100.0), Some(3.0));
        // Against a sort, on many values and percentiles.
        let v: Vec<f32> = (0..1001)
            .map(|i| ((i * 7919) % 1009) as f32 * 0.37 - 50.0)
            .collect();
        let mut sorted = v.clone();
        sorted.sort_by(f32::total_cmp);
        for p in [0.0, 0.1, 2.0, 33.3, 50.0, 97.5, 98.0, 100.0] {
            let pos = p / 100.0 * 1000.0;
            let (lo, hi) = (f64::floor(pos) as usize, f64::ceil(pos) as usize);
            let want = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64) as f32;
            assert_eq!(percentile(&v, p), Some(want), "p{p}");
        }
    }

    #[test]
    fn turbo_ends_and_colorized_depth() {
        assert_eq!(turbo(0.0), [35, 23, 27]);
        let hot = turbo(1.0);
        assert!(hot[0] > 100 && hot[2] < 60, "{hot:?}");
        let rgb = colorize_depth(&[1.0, 2.0, f32::NAN, -1.0]);
        assert_eq!(rgb.len(), 12);
        assert_eq!(&rgb[6..], &[0, 0, 0, 0, 0, 0], "invalid depth is black");
        assert_ne!(&rgb[0..3], &rgb[3..6], "near and far differ");
    }
}
