//! The pose maths of every crate, in one place.
//!
//! Conventions: OpenCV camera axes (x right, y down, z forward), pixel centres at
//! integer coordinates. Extrinsics are world-to-camera `[R | t]`; in messages and
//! files they are the row-major 3x4 flattened to `[f64; 12]`, and intrinsics the
//! row-major 3x3 `K` flattened to `[f64; 9]`. A camera-to-world pose is the
//! rotation `Rᵀ` with the camera centre `C = -Rᵀ t`.
//!
//! The matrix products sum in index order (`a₀b₀ + a₁b₁ + a₂b₂`), so `f32` inputs
//! give the same bits as the per-crate copies this module replaced.

use std::iter::Sum;
use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::colormap::percentile;

/// The float types the generic maths runs in (`f32` for the network's inputs, `f64`
/// elsewhere).
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Sum
{
    const ONE: Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    const ONE: Self = 1.0;
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    const ONE: Self = 1.0;
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Row-major 3x3 matrix (a rotation, an intrinsics matrix `K`).
pub type Mat3<T = f64> = [[T; 3]; 3];
/// Row-major 4x4 matrix (a homogeneous rigid motion).
pub type Mat4<T = f64> = [[T; 4]; 4];
/// Rigid motion `[R | t]` as the top three rows of a 4x4 matrix.
pub type Mat34<T = f64> = [[T; 4]; 3];
/// A point or a direction.
pub type Vec3<T = f64> = [T; 3];

/// The identity world-to-camera `[I | 0]`, flattened.
pub const IDENTITY_3X4: [f64; 12] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];

/// `Σ a[k] b[k]`, in index order.
pub fn dot<T: Real, const N: usize>(a: &[T; N], b: &[T; N]) -> T {
    (0..N).map(|k| a[k] * b[k]).sum()
}

/// `Aᵀ`.
pub fn transpose<T: Copy + Default, const R: usize, const C: usize>(
    a: &[[T; C]; R],
) -> [[T; R]; C] {
    let mut o = [[T::default(); R]; C];
    for (i, row) in a.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            o[j][i] = *v;
        }
    }
    o
}

/// `A B`.
pub fn matmul<T: Real, const N: usize, const K: usize, const M: usize>(
    a: &[[T; K]; N],
    b: &[[T; M]; K],
) -> [[T; M]; N] {
    let mut o = [[T::default(); M]; N];
    for i in 0..N {
        for j in 0..M {
            o[i][j] = (0..K).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    o
}

/// `A v`.
pub fn mat_vec<T: Real, const R: usize, const C: usize>(a: &[[T; C]; R], v: &[T; C]) -> [T; R] {
    a.map(|row| dot(&row, v))
}

/// Determinant of a 3x3 matrix (cofactors along the first row).
pub fn det3<T: Real>(m: &Mat3<T>) -> T {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// The inverse of a 3x3 matrix (adjugate over determinant; infinite or NaN entries for a
/// singular one).
pub fn inverse3<T: Real>(m: &Mat3<T>) -> Mat3<T> {
    let det = det3(m);
    let mut out = [[T::default(); 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            // Cofactor (j, i): the rows and columns other than j and i, cyclically.
            let (r0, r1) = ((j + 1) % 3, (j + 2) % 3);
            let (c0, c1) = ((i + 1) % 3, (i + 2) % 3);
            *v = (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det;
        }
    }
    out
}

/// The reference's `affine_inverse`: `[R | t]⁻¹ = [Rᵀ | -Rᵀ t]`, for a 3x4 or a 4x4 matrix
/// (whose last row is kept as it is).
pub fn affine_inverse<T: Real, const R: usize>(a: &[[T; 4]; R]) -> [[T; 4]; R] {
    assert!(R >= 3, "affine_inverse needs at least 3 rows");
    let mut out = *a;
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = a[j][i];
        }
        out[i][3] = -(0..3).map(|j| a[j][i] * a[j][3]).sum::<T>();
    }
    out
}

/// 3x4 padded to 4x4 with `[0, 0, 0, 1]`.
pub fn to_mat4<T: Real>(m: &Mat34<T>) -> Mat4<T> {
    let zero = T::default();
    [m[0], m[1], m[2], [zero, zero, zero, T::ONE]]
}

/// The rotation `R` of flat world-to-camera extrinsics.
pub fn rotation_of(e: &[f64; 12]) -> Mat3 {
    [[e[0], e[1], e[2]], [e[4], e[5], e[6]], [e[8], e[9], e[10]]]
}

/// The translation `t` of flat world-to-camera extrinsics.
pub fn translation_of(e: &[f64; 12]) -> Vec3 {
    [e[3], e[7], e[11]]
}

/// Flat extrinsics of a rotation and a translation.
pub fn extrinsics_of(r: &Mat3, t: &Vec3) -> [f64; 12] {
    [
        r[0][0], r[0][1], r[0][2], t[0], r[1][0], r[1][1], r[1][2], t[1], r[2][0], r[2][1],
        r[2][2], t[2],
    ]
}

/// Camera-to-world `(Rᵀ, C)` of world-to-camera `[R | t]`: `C = -Rᵀ t`, the camera centre.
pub fn camera_to_world(e: &[f64; 12]) -> (Mat3, Vec3) {
    let rt = transpose(&rotation_of(e));
    let c = mat_vec(&rt, &translation_of(e)).map(|v| -v);
    (rt, c)
}

/// World-to-camera `[R | t]` of a camera-to-world rotation `r_cw` and centre `c`:
/// `R = r_cwᵀ`, `t = -R c`.
pub fn world_to_camera(r_cw: &Mat3, c: &Vec3) -> [f64; 12] {
    let r = transpose(r_cw);
    let t = mat_vec(&r, c).map(|v| -v);
    extrinsics_of(&r, &t)
}

/// Unit quaternion `[x, y, z, w]` (w ≥ 0) of a rotation matrix.
pub fn quat_from_matrix(m: &Mat3) -> [f64; 4] {
    let trace = m[0][0] + m[1][1] + m[2][2];
    let q = if trace > 0.0 {
        let s = (trace + 1.0).sqrt() * 2.0;
        [
            (m[2][1] - m[1][2]) / s,
            (m[0][2] - m[2][0]) / s,
            (m[1][0] - m[0][1]) / s,
            0.25 * s,
        ]
    } else if m[0][0] > m[1][1] && m[0][0] > m[2][2] {
        let s = (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt() * 2.0;
        [
            0.25 * s,
            (m[0][1] + m[1][0]) / s,
            (m[0][2] + m[2][0]) / s,
            (m[2][1] - m[1][2]) / s,
        ]
    } else if m[1][1] > m[2][2] {
        let s = (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt() * 2.0;
        [
            (m[0][1] + m[1][0]) / s,
            0.25 * s,
            (m[1][2] + m[2][1]) / s,
            (m[0][2] - m[2][0]) / s,
        ]
    } else {
        let s = (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt() * 2.0;
        [
            (m[0][2] + m[2][0]) / s,
            (m[1][2] + m[2][1]) / s,
            0.25 * s,
            (m[1][0] - m[0][1]) / s,
        ]
    };
    let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    let sign = if q[3] < 0.0 { -1.0 } else { 1.0 };
    [
        sign * q[0] / n,
        sign * q[1] / n,
        sign * q[2] / n,
        sign * q[3] / n,
    ]
}

/// Rotation matrix of a unit quaternion `[x, y, z, w]`.
pub fn matrix_from_quat(q: &[f64; 4]) -> Mat3 {
    let [x, y, z, w] = *q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// Flat `K` of pinhole parameters.
pub fn pinhole_matrix(fx: f64, fy: f64, cx: f64, cy: f64) -> [f64; 9] {
    [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
}

/// `[fx, fy, cx, cy]` of a flat `K` (the skew is not kept).
pub fn pinhole_params(k: &[f64; 9]) -> [f64; 4] {
    [k[0], k[4], k[2], k[5]]
}

/// `K` of the same camera seen in an image scaled by `(sx, sy)` (rows 0 and 1 scaled).
pub fn scale_intrinsics(k: &[f64; 9], sx: f64, sy: f64) -> [f64; 9] {
    let mut k = *k;
    k[0] *= sx;
    k[1] *= sx;
    k[2] *= sx;
    k[4] *= sy;
    k[5] *= sy;
    k
}

/// A frame's camera at the size of its depth map: what every file writer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraGeometry {
    pub width: u32,
    pub height: u32,
    /// `K`, row-major, at `width x height`; `None` when nothing gave it.
    pub intrinsics: Option<[f64; 9]>,
    /// World-to-camera `[R | t]`, row-major (identity when no pose is known).
    pub extrinsics: [f64; 12],
    /// Whether `extrinsics` came from a message (not the identity fallback).
    pub has_pose: bool,
    pub is_metric: bool,
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
    let threshold = conf
        .and_then(|c| percentile(c, conf_percentile))
        .unwrap_or(f32::NEG_INFINITY);
    back_project_above(depth, width, conf, threshold, intrinsics, extrinsics)
}

/// [`back_project`] with the confidence threshold itself: keeps pixels whose confidence
/// is at or above `threshold` (when `conf` is given), as the reference's exports do with
/// one percentile taken over all views.
pub fn back_project_above(
    depth: &[f32],
    width: usize,
    conf: Option<&[f32]>,
    threshold: f32,
    intrinsics: &[f64; 9],
    extrinsics: &[f64; 12],
) -> Vec<(usize, [f32; 3])> {
    let [fx, fy, cx, cy] = pinhole_params(intrinsics);
    let e = extrinsics;
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

/// The points of [`back_project`] with the colour of their pixel in `colours` (packed
/// RGB8 at the depth map's size; black where `colours` is too short).
pub fn coloured_points(
    kept: &[(usize, [f32; 3])],
    colours: &[u8],
) -> (Vec<[f32; 3]>, Vec<[u8; 3]>) {
    kept.iter()
        .map(|&(i, p)| {
            let c = colours.get(i * 3..i * 3 + 3).unwrap_or(&[0, 0, 0]);
            (p, [c[0], c[1], c[2]])
        })
        .unzip()
}

/// The stride that keeps at most `max` of `len` items, evenly spaced (every item when
/// they fit): how every exporter thins a point cloud.
pub fn subsample_step(len: usize, max: usize) -> usize {
    len.div_ceil(max.max(1)).max(1)
}

/// The pixel `[u, v]` where the camera `K`, `[R | t]` sees the world point `p`
/// (pixel centres at integers); `None` behind the camera or when not finite.
pub fn project(intrinsics: &[f64; 9], extrinsics: &[f64; 12], p: [f32; 3]) -> Option<[f64; 2]> {
    let e = extrinsics;
    let [x, y, z] = p.map(|v| v as f64);
    let c = [
        e[0] * x + e[1] * y + e[2] * z + e[3],
        e[4] * x + e[5] * y + e[6] * z + e[7],
        e[8] * x + e[9] * y + e[10] * z + e[11],
    ];
    if c[2].is_nan() || c[2] <= 0.0 {
        return None;
    }
    let k = intrinsics;
    let uv = [
        (k[0] * c[0] + k[1] * c[1]) / c[2] + k[2],
        k[4] * c[1] / c[2] + k[5],
    ];
    uv.iter().all(|v| v.is_finite()).then_some(uv)
}

/// The frustum of a camera: its centre, then the four image corners
/// (`(0,0)`, `(w,0)`, `(w,h)`, `(0,h)`) at depth `depth`, in world coordinates.
pub fn frustum(k: &[f64; 9], extrinsics: &[f64; 12], w: f64, h: f64, depth: f64) -> [Vec3; 5] {
    let (r, c) = camera_to_world(extrinsics);
    let mut out = [c; 5];
    for (i, (u, v)) in [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
        .into_iter()
        .enumerate()
    {
        let pc = [(u - k[2]) / k[0] * depth, (v - k[5]) / k[4] * depth, depth];
        for (a, o) in out[i + 1].iter_mut().enumerate() {
            *o = r[a][0] * pc[0] + r[a][1] * pc[1] + r[a][2] * pc[2] + c[a];
        }
    }
    out
}

/// [`frustum`] at `fraction` of the median of the valid (positive, finite) `depth`
/// (1 when there is none): the camera drawn at a size that suits its scene.
pub fn frustum_in_depth(
    k: &[f64; 9],
    extrinsics: &[f64; 12],
    w: f64,
    h: f64,
    depth: &[f32],
    fraction: f64,
) -> [Vec3; 5] {
    let valid: Vec<f32> = depth
        .iter()
        .map(|&d| if d > 0.0 { d } else { f32::NAN })
        .collect();
    let s = percentile(&valid, 50.0).unwrap_or(1.0) as f64 * fraction;
    frustum(k, extrinsics, w, h, s)
}

/// Test helpers shared by the crates' tests (rigid motions about z, identity check).
#[doc(hidden)]
pub mod testing {
    use super::{matmul, Mat3, Mat4};

    /// `Rz(az) · Ry(ay) · Rx(ax)` (radians).
    pub fn rot_xyz(ax: f64, ay: f64, az: f64) -> Mat3 {
        let (sx, cx) = ax.sin_cos();
        let (sy, cy) = ay.sin_cos();
        let (sz, cz) = az.sin_cos();
        let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
        let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
        let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
        matmul(&rz, &matmul(&ry, &rx))
    }

    pub fn rot_z(a: f32) -> Mat3<f32> {
        [
            [a.cos(), -a.sin(), 0.0],
            [a.sin(), a.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ]
    }

    pub fn ext(r: Mat3<f32>, t: [f32; 3]) -> Mat4<f32> {
        [
            [r[0][0], r[0][1], r[0][2], t[0]],
            [r[1][0], r[1][1], r[1][2], t[1]],
            [r[2][0], r[2][1], r[2][2], t[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    pub fn assert_identity(m: &Mat4<f32>) {
        for (i, row) in m.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - (i == j) as u8 as f32).abs() < 1e-6, "{m:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn rot_y(a: f64) -> Mat3 {
        let (s, c) = a.sin_cos();
        [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    }

    #[test]
    fn inverse3_inverts() {
        // An intrinsics-like matrix and a general one (no zero entries, not symmetric).
        for m in [
            [[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]],
            [[2.0, -1.0, 0.5], [0.3, 4.0, -2.0], [1.5, 0.7, 3.0]],
        ] {
            for p in [matmul(&m, &inverse3(&m)), matmul(&inverse3(&m), &m)] {
                for (i, row) in p.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        let want: f64 = if i == j { 1.0 } else { 0.0 };
                        assert!((*v - want).abs() < 1e-12, "{m:?}: {p:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn affine_inverse_inverts() {
        let e = ext(rot_z(0.3), [1.0, -2.0, 0.5]);
        let p = matmul(&e, &affine_inverse(&e));
        assert_identity(&p);
        // The 3x4 form is the top of the 4x4 one.
        let top = [e[0], e[1], e[2]];
        assert_eq!(to_mat4(&affine_inverse(&top)), affine_inverse(&e));
    }

    #[test]
    fn camera_to_world_and_back() {
        let r = rot_y(0.3);
        let t = [0.5, -0.25, 2.0];
        let e = extrinsics_of(&r, &t);
        let (rw, c) = camera_to_world(&e);
        assert_eq!(rw, transpose(&r));
        // The camera centre maps to the camera origin.
        let xc = mat_vec(&r, &c);
        for i in 0..3 {
            assert!((xc[i] + t[i]).abs() < 1e-12);
        }
        let back = world_to_camera(&rw, &c);
        for (a, b) in back.iter().zip(e) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!((det3(&r) - 1.0).abs() < 1e-12);
        assert_eq!(
            camera_to_world(&IDENTITY_3X4),
            (transpose(&rotation_of(&IDENTITY_3X4)), [-0.0; 3])
        );
    }

    #[test]
    fn quaternion_of_rotation() {
        // 90 degrees about z.
        let m = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
        let q = quat_from_matrix(&m);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        for (a, b) in q.iter().zip([0.0, 0.0, h, h]) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        let back = matrix_from_quat(&q);
        for i in 0..3 {
            for j in 0..3 {
                assert!((back[i][j] - m[i][j]).abs() < 1e-12);
            }
        }
        // 180 degrees about x (trace < 0 branch).
        let m = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]];
        let q = quat_from_matrix(&m);
        assert!((q[0].abs() - 1.0).abs() < 1e-12, "{q:?}");
    }

    #[test]
    fn intrinsics_helpers() {
        let k = pinhole_matrix(8.0, 10.0, 6.0, 4.0);
        assert_eq!(pinhole_params(&k), [8.0, 10.0, 6.0, 4.0]);
        assert_eq!(
            scale_intrinsics(&k, 0.5, 0.5),
            [4.0, 0.0, 3.0, 0.0, 5.0, 2.0, 0.0, 0.0, 1.0]
        );
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

    #[test]
    fn projection_finds_the_back_projected_pixel() {
        let k = [2.0, 0.0, 1.5, 0.0, 2.5, 1.0, 0.0, 0.0, 1.0];
        let e = extrinsics_of(&rot_y(0.4), &[0.5, -1.0, 2.0]);
        let depth: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 * 0.3).collect();
        let kept = back_project(&depth, 4, None, 0.0, &k, &e);
        assert_eq!(kept.len(), 12);
        for &(i, p) in &kept {
            let [u, v] = project(&k, &e, p).unwrap();
            assert!((u - (i % 4) as f64).abs() < 1e-4, "pixel {i}: u {u}");
            assert!((v - (i / 4) as f64).abs() < 1e-4, "pixel {i}: v {v}");
        }
        // Behind the camera: no pixel.
        assert!(project(&k, &IDENTITY_3X4, [0.0, 0.0, -1.0]).is_none());
        assert!(project(&k, &IDENTITY_3X4, [f32::NAN, 0.0, 1.0]).is_none());
        // Colours by pixel index, black past the end.
        let (xyz, rgb) = coloured_points(&kept[..2], &[1, 2, 3, 4, 5, 6]);
        assert_eq!((xyz.len(), rgb), (2, vec![[1, 2, 3], [4, 5, 6]]));
        let (_, rgb) = coloured_points(&kept[2..3], &[1, 2, 3]);
        assert_eq!(rgb, [[0, 0, 0]]);
        // A threshold instead of a percentile.
        let conf: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(
            back_project_above(&depth, 4, Some(&conf), 9.0, &k, &e).len(),
            3
        );
        // The frustum scaled by the median depth.
        let f = frustum_in_depth(&k, &IDENTITY_3X4, 4.0, 3.0, &[2.0, 4.0, -1.0], 0.5);
        assert_eq!(f[1][2], 1.5);
    }

    #[test]
    fn frustum_starts_at_the_centre() {
        let k = [2.0, 0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0];
        let e = [1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0];
        let f = frustum(&k, &e, 2.0, 2.0, 2.0);
        assert_eq!(f[0], [-0.5, 0.0, 1.0]);
        // Corner (w, h) at depth 2: camera (1, 1, 2), world (0.5, 1, 3).
        assert_eq!(f[3], [0.5, 1.0, 3.0]);
    }
}
