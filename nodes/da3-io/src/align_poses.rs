//! Robust similarity fit of one set of camera poses onto another: the maths that puts a
//! multi-view inference (poses and depth in the inference's own frame and scale) into a
//! world frame through the views it shares with that world (the DA3 node's `track` mode
//! keyframes, `window` mode's shared frames).
//!
//! Unlike [`umeyama`](crate::align::umeyama) on camera centres alone, the fit uses each
//! camera's rotation as well, so it is defined for one or two shared cameras and for
//! cameras on a straight line (where the centres' covariance has rank 1). The scale comes
//! from per-camera scale observations (a depth ratio: the same camera's depth in the world
//! over its depth in the inference) when given, else from the baselines between cameras.
//!
//! Robustness: every single camera (with a scale observation) and every pair of cameras is
//! a hypothesis; the one that the most cameras agree with (position within `pos_tol`, a
//! fraction of the scene length, rotation within `rot_tol`, scale within `scale_tol`) wins,
//! then is refitted on those inliers. With three cameras one bad camera is outvoted.
//!
//! Conventions: poses are camera-to-world (`r` maps camera axes to the frame's axes, `c`
//! the camera centre); the similarity maps the source frame onto the target frame,
//! `x_dst = s R x_src + t`, so a source pose `(r, c)` becomes `(R r, s R c + t)` and source
//! depth becomes `s` times as deep.

use crate::align::Sim3;
use crate::geometry::{mat_vec, matmul, matrix_from_quat, quat_from_matrix, transpose, Mat3, Vec3};

/// A camera pose, camera-to-world: rotation `r` (camera axes in the frame) and centre `c`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CamPose {
    pub r: Mat3,
    pub c: Vec3,
}

impl CamPose {
    /// The camera-to-world pose of flat world-to-camera extrinsics `[R | t]`.
    pub fn from_world_to_camera(e: &[f64; 12]) -> Self {
        let (r, c) = crate::geometry::camera_to_world(e);
        Self { r, c }
    }

    /// Flat world-to-camera extrinsics `[R | t]` of this pose.
    pub fn world_to_camera(&self) -> [f64; 12] {
        crate::geometry::world_to_camera(&self.r, &self.c)
    }

    /// This pose moved by the similarity `m` (source frame to target frame).
    pub fn transformed(&self, m: &Sim3) -> Self {
        Self {
            r: matmul(&m.r, &self.r),
            c: m.apply(&self.c),
        }
    }

    /// Distance between the centres.
    pub fn distance(&self, o: &Self) -> f64 {
        dist(&self.c, &o.c)
    }

    /// Angle of the relative rotation, radians.
    pub fn angle_to(&self, o: &Self) -> f64 {
        rotation_angle(&matmul(&transpose(&self.r), &o.r))
    }
}

/// One camera seen in both frames, with an optional scale observation `target / source`
/// (e.g. the median ratio of its depth in the target frame to its depth in the source).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PosePair {
    pub src: CamPose,
    pub dst: CamPose,
    pub scale: Option<f64>,
}

/// Tolerances of [`align_poses`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoseFitOptions {
    /// Length of the scene in the target frame (e.g. the median depth of the cameras):
    /// positions are compared relative to it. Must be positive.
    pub ref_len: f64,
    /// Largest position error of an inlier, as a fraction of `ref_len`.
    pub pos_tol: f64,
    /// Largest rotation error of an inlier, radians.
    pub rot_tol: f64,
    /// Largest `|ln(s / scale observation)|` of an inlier.
    pub scale_tol: f64,
    /// Smallest target-frame baseline (fraction of `ref_len`) that gives a scale by itself
    /// (only used where cameras carry no scale observation).
    pub min_baseline: f64,
}

impl PoseFitOptions {
    /// Tolerances for a scene of length `ref_len`: 5 % position, 5 degrees, 10 % scale.
    pub fn for_scene(ref_len: f64) -> Self {
        Self {
            ref_len,
            pos_tol: 0.05,
            rot_tol: 5f64.to_radians(),
            scale_tol: 0.1,
            min_baseline: 0.05,
        }
    }
}

/// The fit of [`align_poses`].
#[derive(Clone, Debug, PartialEq)]
pub struct PoseFit {
    /// Source frame to target frame.
    pub sim: Sim3,
    /// Which pairs agree with the fit.
    pub inliers: Vec<bool>,
    /// Position error of each pair after the fit, as a fraction of `ref_len`.
    pub pos_err: Vec<f64>,
    /// Rotation error of each pair after the fit, radians.
    pub rot_err: Vec<f64>,
    /// RMS of the inliers' position errors (fraction of `ref_len`).
    pub residual: f64,
}

impl PoseFit {
    pub fn inlier_count(&self) -> usize {
        self.inliers.iter().filter(|&&b| b).count()
    }
}

/// Why [`align_poses`] found no fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoseFitError {
    /// No pairs given, or a non-positive scene length.
    Empty,
    /// No scale: no pair has a positive scale observation and the baselines are too short.
    NoScale,
}

impl std::fmt::Display for PoseFitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "no shared cameras to align"),
            Self::NoScale => write!(f, "no scale: no depth ratio and too short baselines"),
        }
    }
}

fn dist(a: &Vec3, b: &Vec3) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt()
}

/// Angle of a rotation matrix, radians (`acos((tr - 1) / 2)`, clamped).
pub fn rotation_angle(r: &Mat3) -> f64 {
    ((r[0][0] + r[1][1] + r[2][2] - 1.0) / 2.0)
        .clamp(-1.0, 1.0)
        .acos()
}

/// Mean of rotations (normalised mean of sign-aligned quaternions): exact for equal ones.
fn mean_rotation(rs: &[Mat3]) -> Mat3 {
    let Some(first) = rs.first() else {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    };
    if rs.len() == 1 {
        return *first;
    }
    let q0 = quat_from_matrix(first);
    let mut acc = [0.0; 4];
    for r in rs {
        let q = quat_from_matrix(r);
        let sign = if (0..4).map(|i| q[i] * q0[i]).sum::<f64>() < 0.0 {
            -1.0
        } else {
            1.0
        };
        for i in 0..4 {
            acc[i] += sign * q[i];
        }
    }
    let n = acc.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n <= 0.0 {
        return *first;
    }
    matrix_from_quat(&acc.map(|v| v / n))
}

/// The median (the mean of the two middle values for an even count), by selection.
fn median(mut v: Vec<f64>) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let (lo, mid, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let mid = *mid;
    Some(if n % 2 == 1 {
        mid
    } else {
        let below = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (below + mid) / 2.0
    })
}

/// Depth maps are sampled at most this many pixels (evenly spaced) for their medians.
pub const DEPTH_SAMPLES: usize = 4096;

/// Every `step`-th index of `len` so that at most [`DEPTH_SAMPLES`] are taken.
fn sample_step(len: usize) -> usize {
    len.div_ceil(DEPTH_SAMPLES).max(1)
}

fn valid_scale(s: Option<f64>) -> Option<f64> {
    s.filter(|s| s.is_finite() && *s > 0.0)
}

/// The similarity of rotation `r` and scale `s` that best maps the centres of `idx`
/// (least squares on the translation).
fn with_translation(pairs: &[PosePair], idx: &[usize], r: Mat3, s: f64) -> Sim3 {
    let mut t = [0.0; 3];
    for &i in idx {
        let rc = mat_vec(&r, &pairs[i].src.c);
        for k in 0..3 {
            t[k] += pairs[i].dst.c[k] - s * rc[k];
        }
    }
    Sim3 {
        r,
        t: t.map(|v| v / idx.len() as f64),
        s,
    }
}

/// The scale of the cameras `idx` under rotation `r`: the median of their scale
/// observations, else the least-squares ratio of their baselines when those are long
/// enough.
fn scale_of(pairs: &[PosePair], idx: &[usize], r: &Mat3, o: &PoseFitOptions) -> Option<f64> {
    if let Some(s) = median(
        idx.iter()
            .filter_map(|&i| valid_scale(pairs[i].scale))
            .collect(),
    ) {
        return Some(s);
    }
    if idx.len() < 2 {
        return None;
    }
    let n = idx.len() as f64;
    let mean = |f: &dyn Fn(usize) -> Vec3| -> Vec3 {
        let mut m = [0.0; 3];
        for &i in idx {
            let v = f(i);
            for k in 0..3 {
                m[k] += v[k] / n;
            }
        }
        m
    };
    let ms = mean(&|i| pairs[i].src.c);
    let md = mean(&|i| pairs[i].dst.c);
    let (mut num, mut den, mut spread) = (0.0, 0.0, 0.0);
    for &i in idx {
        let a = mat_vec(r, &std::array::from_fn(|k| pairs[i].src.c[k] - ms[k]));
        let b: Vec3 = std::array::from_fn(|k| pairs[i].dst.c[k] - md[k]);
        num += (0..3).map(|k| a[k] * b[k]).sum::<f64>();
        den += (0..3).map(|k| a[k] * a[k]).sum::<f64>();
        spread += (0..3).map(|k| b[k] * b[k]).sum::<f64>();
    }
    let spread = (spread / n).sqrt();
    (den > 0.0 && spread >= o.min_baseline * o.ref_len && num > 0.0).then(|| num / den)
}

/// Errors of every pair under `m`: (position / ref_len, rotation, |ln scale ratio|).
fn errors(pairs: &[PosePair], m: &Sim3, o: &PoseFitOptions) -> Vec<(f64, f64, f64)> {
    pairs
        .iter()
        .map(|p| {
            let moved = p.src.transformed(m);
            let pos = moved.distance(&p.dst) / o.ref_len;
            let rot = moved.angle_to(&p.dst);
            let sc = valid_scale(p.scale).map_or(0.0, |s| (m.s / s).ln().abs());
            (pos, rot, sc)
        })
        .collect()
}

fn is_inlier(e: &(f64, f64, f64), o: &PoseFitOptions) -> bool {
    e.0 <= o.pos_tol && e.1 <= o.rot_tol && e.2 <= o.scale_tol
}

/// Fits the similarity taking each pair's `src` pose onto its `dst` pose (see the module
/// doc): hypotheses from every camera with a scale observation and every pair of cameras,
/// the one with the most inliers (ties: the smallest normalised error), refitted on its
/// inliers.
pub fn align_poses(pairs: &[PosePair], o: &PoseFitOptions) -> Result<PoseFit, PoseFitError> {
    if pairs.is_empty() || !(o.ref_len.is_finite() && o.ref_len > 0.0) {
        return Err(PoseFitError::Empty);
    }
    let rel: Vec<Mat3> = pairs
        .iter()
        .map(|p| matmul(&p.dst.r, &transpose(&p.src.r)))
        .collect();
    let mut subsets: Vec<Vec<usize>> = (0..pairs.len()).map(|i| vec![i]).collect();
    for i in 0..pairs.len() {
        for j in i + 1..pairs.len() {
            subsets.push(vec![i, j]);
        }
    }
    let score = |m: &Sim3| -> (usize, f64) {
        let errs = errors(pairs, m, o);
        let inl: Vec<&(f64, f64, f64)> = errs.iter().filter(|e| is_inlier(e, o)).collect();
        let cost = inl
            .iter()
            .map(|e| e.0 / o.pos_tol + e.1 / o.rot_tol + e.2 / o.scale_tol)
            .sum::<f64>();
        (inl.len(), cost)
    };
    let mut best: Option<(Sim3, usize, f64)> = None;
    for idx in &subsets {
        let r = mean_rotation(&idx.iter().map(|&i| rel[i]).collect::<Vec<_>>());
        let Some(s) = scale_of(pairs, idx, &r, o) else {
            continue;
        };
        let m = with_translation(pairs, idx, r, s);
        let (k, cost) = score(&m);
        if best
            .as_ref()
            .is_none_or(|b| k > b.1 || (k == b.1 && cost < b.2))
        {
            best = Some((m, k, cost));
        }
    }
    let (mut m, k, _) = best.ok_or(PoseFitError::NoScale)?;
    if k > 0 {
        // Refit on the inliers (kept only when it keeps at least as many).
        let inl: Vec<usize> = errors(pairs, &m, o)
            .iter()
            .enumerate()
            .filter(|(_, e)| is_inlier(e, o))
            .map(|(i, _)| i)
            .collect();
        let r = mean_rotation(&inl.iter().map(|&i| rel[i]).collect::<Vec<_>>());
        if let Some(s) = scale_of(pairs, &inl, &r, o) {
            let refit = with_translation(pairs, &inl, r, s);
            if score(&refit).0 >= k {
                m = refit;
            }
        }
    }
    let errs = errors(pairs, &m, o);
    let inliers: Vec<bool> = errs.iter().map(|e| is_inlier(e, o)).collect();
    let inl_pos: Vec<f64> = errs
        .iter()
        .zip(&inliers)
        .filter(|(_, &b)| b)
        .map(|(e, _)| e.0)
        .collect();
    let residual = if inl_pos.is_empty() {
        f64::INFINITY
    } else {
        (inl_pos.iter().map(|v| v * v).sum::<f64>() / inl_pos.len() as f64).sqrt()
    };
    Ok(PoseFit {
        sim: m,
        pos_err: errs.iter().map(|e| e.0).collect(),
        rot_err: errs.iter().map(|e| e.1).collect(),
        inliers,
        residual,
    })
}

/// Median of the per-element ratios `num / den` over the elements where both are finite
/// and positive (same lengths), else the ratio of the two medians; `None` when neither
/// gives a positive finite number. The scale observation of one camera's two depth maps.
/// Large maps are sampled ([`DEPTH_SAMPLES`] evenly spaced pixels).
pub fn depth_ratio(num: &[f32], den: &[f32]) -> Option<f64> {
    let ok = |v: &f32| v.is_finite() && *v > 0.0;
    let r = if num.len() == den.len() {
        median(
            num.iter()
                .zip(den)
                .step_by(sample_step(num.len()))
                .filter(|(a, b)| ok(a) && ok(b))
                .map(|(a, b)| *a as f64 / *b as f64)
                .collect(),
        )
    } else {
        None
    };
    let r = r.or_else(|| Some(positive_median(num)? / positive_median(den)?));
    r.filter(|v| v.is_finite() && *v > 0.0)
}

/// Median of the finite positive values (large maps sampled, as in [`depth_ratio`]).
pub fn positive_median(v: &[f32]) -> Option<f64> {
    median(
        v.iter()
            .step_by(sample_step(v.len()))
            .filter(|x| x.is_finite() && **x > 0.0)
            .map(|x| *x as f64)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::geometry::testing::rot_xyz as rot;

    fn world() -> Vec<CamPose> {
        // On a straight line (centre-only Umeyama is degenerate here), turning slowly.
        (0..4)
            .map(|i| CamPose {
                r: rot(0.0, 0.1 * i as f64, 0.0),
                c: [0.3 * i as f64, 0.0, 0.0],
            })
            .collect()
    }

    /// The world poses as an inference sees them: through the inverse of `m`.
    fn seen(w: &[CamPose], m: &Sim3) -> Vec<CamPose> {
        let rt = transpose(&m.r);
        w.iter()
            .map(|p| {
                let d: Vec3 = std::array::from_fn(|k| p.c[k] - m.t[k]);
                let c = mat_vec(&rt, &d).map(|v| v / m.s);
                CamPose {
                    r: matmul(&rt, &p.r),
                    c,
                }
            })
            .collect()
    }

    fn truth() -> Sim3 {
        Sim3 {
            r: rot(0.3, -0.5, 1.1),
            t: [1.0, -2.0, 0.5],
            s: 2.5,
        }
    }

    fn assert_close(a: &Sim3, b: &Sim3, tol: f64) {
        assert!((a.s - b.s).abs() < tol * b.s, "scale {} vs {}", a.s, b.s);
        for i in 0..3 {
            assert!((a.t[i] - b.t[i]).abs() < tol, "t {:?} vs {:?}", a.t, b.t);
            for j in 0..3 {
                assert!((a.r[i][j] - b.r[i][j]).abs() < tol, "{:?}", a.r);
            }
        }
    }

    #[test]
    fn exact_on_a_straight_line_with_depth_ratios() {
        let w = world();
        let m = truth();
        let pairs: Vec<PosePair> = seen(&w, &m)
            .into_iter()
            .zip(&w)
            .map(|(src, dst)| PosePair {
                src,
                dst: *dst,
                scale: Some(m.s),
            })
            .collect();
        let fit = align_poses(&pairs, &PoseFitOptions::for_scene(2.0)).unwrap();
        assert_close(&fit.sim, &m, 1e-9);
        assert_eq!(fit.inlier_count(), 4);
        assert!(fit.residual < 1e-9);
        // Without depth ratios the baselines give the scale.
        let no_hint: Vec<PosePair> = pairs
            .iter()
            .map(|p| PosePair { scale: None, ..*p })
            .collect();
        let fit = align_poses(&no_hint, &PoseFitOptions::for_scene(2.0)).unwrap();
        assert_close(&fit.sim, &m, 1e-9);
    }

    #[test]
    fn one_camera_with_a_depth_ratio_is_enough() {
        let w = &world()[..1];
        let m = truth();
        let src = seen(w, &m)[0];
        let pairs = [PosePair {
            src,
            dst: w[0],
            scale: Some(m.s),
        }];
        let fit = align_poses(&pairs, &PoseFitOptions::for_scene(2.0)).unwrap();
        assert_close(&fit.sim, &m, 1e-9);
        let alone = [PosePair {
            scale: None,
            ..pairs[0]
        }];
        assert_eq!(
            align_poses(&alone, &PoseFitOptions::for_scene(2.0)),
            Err(PoseFitError::NoScale)
        );
        assert_eq!(
            align_poses(&[], &PoseFitOptions::for_scene(2.0)),
            Err(PoseFitError::Empty)
        );
    }

    #[test]
    fn one_bad_camera_of_three_is_outvoted() {
        let w = &world()[..3];
        let m = truth();
        let mut src = seen(w, &m);
        for bad in 0..3 {
            let keep = src[bad];
            src[bad].c = [src[bad].c[0] + 0.4, src[bad].c[1] - 0.3, src[bad].c[2]];
            src[bad].r = matmul(&rot(0.4, 0.0, 0.2), &src[bad].r);
            let pairs: Vec<PosePair> = src
                .iter()
                .zip(w)
                .enumerate()
                .map(|(i, (s, d))| PosePair {
                    src: *s,
                    dst: *d,
                    scale: Some(if i == bad { 0.7 * m.s } else { m.s }),
                })
                .collect();
            let fit = align_poses(&pairs, &PoseFitOptions::for_scene(2.0)).unwrap();
            assert_close(&fit.sim, &m, 1e-9);
            assert_eq!(fit.inliers.iter().filter(|b| !**b).count(), 1);
            assert!(!fit.inliers[bad]);
            src[bad] = keep;
        }
    }

    #[test]
    fn depth_ratios() {
        assert_eq!(depth_ratio(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]), Some(2.0));
        // Invalid pixels are skipped; different sizes fall back to the medians.
        assert_eq!(
            depth_ratio(&[2.0, f32::NAN, 6.0], &[1.0, 2.0, 0.0]),
            Some(2.0)
        );
        assert_eq!(depth_ratio(&[3.0, 3.0], &[1.0, 1.0, 1.0]), Some(3.0));
        assert_eq!(depth_ratio(&[0.0], &[1.0]), None);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![5.0, 1.0, 3.0]), Some(3.0));
        // Large maps are sampled (every 25th of 100 000 here): still about the median.
        let big: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 + 1.0).collect();
        let m = positive_median(&big).unwrap();
        assert!((m - 500.5).abs() < 15.0, "{m}");
    }
}
