//! Post-processing shared by the DA3 node and the exporters: percentiles,
//! the colour-mapped depth image, and back-projection of depth to world points.

/// Percentile `p` (0..=100) of the finite values, linearly interpolated
/// between ranks (numpy's default); `None` when there is no finite value.
pub fn percentile(values: &[f32], p: f64) -> Option<f32> {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    let pos = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let f = (pos - lo as f64) as f32;
    Some(v[lo] + (v[hi] - v[lo]) * f)
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
    let lo = percentile(&inv, 2.0).unwrap_or(0.0);
    let hi = percentile(&inv, 98.0).unwrap_or(1.0);
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

/// Back-projects a row-major depth map (`width` pixels a row) to world
/// points: pixel `(u, v)` at depth `d` is `d * K⁻¹ [u, v, 1]` in the camera
/// (OpenCV axes, pixel centres at integers), then `Rᵀ (x - t)` with the
/// world-to-camera `extrinsics` `[R | t]` (row-major 3x4).
///
/// Keeps pixels with finite positive depth and, when `conf` is given,
/// confidence at or above its `conf_percentile` percentile. Returns each kept
/// pixel's index with its world point, in pixel order.
pub fn back_project(
    depth: &[f32],
    width: usize,
    conf: Option<&[f32]>,
    conf_percentile: f64,
    intrinsics: &[f64; 9],
    extrinsics: &[f64; 12],
) -> Vec<(usize, [f32; 3])> {
    let (fx, fy, cx, cy) = (intrinsics[0], intrinsics[4], intrinsics[2], intrinsics[5]);
    let e = extrinsics;
    let threshold = conf
        .and_then(|c| percentile(c, conf_percentile))
        .unwrap_or(f32::NEG_INFINITY);
    let width = width.max(1);
    (0..depth.len())
        .filter(|&i| {
            let d = depth[i];
            d.is_finite()
                && d > 0.0
                && conf.is_none_or(|c| c.get(i).is_some_and(|&x| x >= threshold))
        })
        .map(|i| {
            let (u, v) = ((i % width) as f64, (i / width) as f64);
            let d = depth[i] as f64;
            let q = [
                (u - cx) / fx * d - e[3],
                (v - cy) / fy * d - e[7],
                d - e[11],
            ];
            let w = [
                e[0] * q[0] + e[4] * q[1] + e[8] * q[2],
                e[1] * q[0] + e[5] * q[1] + e[9] * q[2],
                e[2] * q[0] + e[6] * q[1] + e[10] * q[2],
            ];
            (i, [w[0] as f32, w[1] as f32, w[2] as f32])
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

    #[test]
    fn back_projection_into_the_world() {
        let k = [2.0, 0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0];
        // World-to-camera: identity rotation, t = (0.5, 0, -1).
        let e = [1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0];
        let p = back_project(&[2.0, 2.0, 2.0, 4.0], 2, None, 0.0, &k, &e);
        assert_eq!(p.len(), 4);
        // Pixel (1,1) at depth 4: camera (0,0,4), world (-0.5, 0, 5).
        assert_eq!(p[3], (3, [-0.5, 0.0, 5.0]));
        // Pixel (0,0) at depth 2: camera (-1,-1,2), world (-1.5, -1, 3).
        assert_eq!(p[0], (0, [-1.5, -1.0, 3.0]));
        // Confidence below the percentile and invalid depth are dropped.
        let conf: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let kept = back_project(&[1.0; 100], 10, Some(&conf), 40.0, &k, &e);
        assert_eq!(kept.len(), 60);
        assert!(back_project(&[f32::NAN, -1.0], 2, None, 0.0, &k, &e).is_empty());
    }
}
