//! Camera pose and intrinsics from the ray head: a weighted RANSAC homography between the
//! identity-camera pixel grid and the predicted ray directions, decomposed (QL) into a
//! rotation and a lower-triangular calibration; the translation is the confidence-weighted
//! mean ray origin. Host-side f64 math; the RANSAC sample indices can be
//! injected for exact reproducibility.

#![allow(clippy::needless_range_loop)] // small fixed-size matrix code reads best indexed

use eyre::{bail, Result};

use da3_io::geometry::det3;

use super::transform::{affine_inverse, Mat3, Mat34};

pub const RANSAC_ITERS: usize = 100;
pub const RANSAC_SAMPLE: usize = 8;
const SAMPLE_RATIO: f64 = 0.3;
const REPROJ_THRESHOLD: f64 = 0.2;
const Z_THRESHOLD: f64 = 1e-4;
const MAX_INLIERS: usize = 8000;

/// Number of candidate points the RANSAC samples are drawn from for `n` rays.
pub fn ransac_candidates(n: usize) -> usize {
    RANSAC_SAMPLE.max((n as f64 * SAMPLE_RATIO) as usize)
}

/// Deterministic stand-in for the reference's `randperm(n_sample)[:8]` x 100 draws.
pub fn default_sample_indices(n_sample: usize, seed: u64) -> Vec<[usize; RANSAC_SAMPLE]> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..RANSAC_ITERS)
        .map(|_| {
            let mut perm: Vec<usize> = (0..n_sample).collect();
            let mut out = [0usize; RANSAC_SAMPLE];
            for (k, o) in out.iter_mut().enumerate() {
                let j = k + (next() as usize) % (n_sample - k);
                perm.swap(k, j);
                *o = perm[k];
            }
            out
        })
        .collect()
}

/// Eigen-decomposition of a symmetric matrix (cyclic Jacobi). Returns the eigenvector of the
/// smallest eigenvalue.
fn smallest_eigvec<const N: usize>(m: [[f64; N]; N]) -> [f64; N] {
    let mut a = m;
    let mut v = [[0.0; N]; N];
    for (i, row) in v.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for _sweep in 0..100 {
        let mut off = 0.0;
        for i in 0..N {
            for j in i + 1..N {
                off += a[i][j] * a[i][j];
            }
        }
        if off < 1e-30 {
            break;
        }
        for p in 0..N {
            for q in p + 1..N {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..N {
                    let akp = a[k][p];
                    let akq = a[k][q];
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..N {
                    let apk = a[p][k];
                    let aqk = a[q][k];
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let vp = row[p];
                    let vq = row[q];
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
    }
    let mut best = 0;
    for i in 1..N {
        if a[i][i] < a[best][best] {
            best = i;
        }
    }
    let mut out = [0.0; N];
    for i in 0..N {
        out[i] = v[i][best];
    }
    out
}

/// Weighted DLT homography (src -> dst), normalised so that H[2][2] = 1.
fn fit_homography(src: &[[f64; 2]], dst: &[[f64; 2]], w: &[f64]) -> Mat3 {
    let mut ata = [[0.0f64; 9]; 9];
    let mut add = |row: [f64; 9]| {
        for i in 0..9 {
            for j in 0..9 {
                ata[i][j] += row[i] * row[j];
            }
        }
    };
    for ((s, d), &wt) in src.iter().zip(dst).zip(w) {
        let sw = wt.sqrt();
        let (x, y, u, v) = (s[0], s[1], d[0], d[1]);
        add([
            -x * sw,
            -y * sw,
            -sw,
            0.0,
            0.0,
            0.0,
            x * u * sw,
            y * u * sw,
            u * sw,
        ]);
        add([
            0.0,
            0.0,
            0.0,
            -x * sw,
            -y * sw,
            -sw,
            x * v * sw,
            y * v * sw,
            v * sw,
        ]);
    }
    let h = smallest_eigvec(ata);
    let n = h[8];
    [
        [h[0] / n, h[1] / n, h[2] / n],
        [h[3] / n, h[4] / n, h[5] / n],
        [h[6] / n, h[7] / n, 1.0],
    ]
}

/// A = Q L with Q orthogonal and L lower triangular with a positive diagonal.
pub fn ql_decomposition(a: &Mat3) -> (Mat3, Mat3) {
    // QR (Gram-Schmidt, positive diagonal) of A with its columns reversed.
    let col = |m: &Mat3, j: usize| [m[0][j], m[1][j], m[2][j]];
    let at: [[f64; 3]; 3] = [col(a, 2), col(a, 1), col(a, 0)]; // columns of A P
    let mut q = [[0.0; 3]; 3]; // columns
    let mut r = [[0.0; 3]; 3];
    for j in 0..3 {
        let mut v = at[j];
        for i in 0..j {
            let d: f64 = (0..3).map(|k| q[i][k] * at[j][k]).sum();
            r[i][j] = d;
            for k in 0..3 {
                v[k] -= d * q[i][k];
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        r[j][j] = n;
        q[j] = v.map(|x| x / n);
    }
    // Q = Q_t P (reverse columns), L = P R P.
    let mut qm = [[0.0; 3]; 3];
    let mut l = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            qm[i][j] = q[2 - j][i];
            l[i][j] = r[2 - i][2 - j];
        }
    }
    (qm, l)
}

/// Result for one view.
#[derive(Debug, Clone, Copy)]
pub struct RayPose {
    /// World-to-camera 3x4.
    pub extrinsics: Mat34,
    pub intrinsics: Mat3,
}

/// Solve one view. `ray`: (h*w, 6) row-major, `conf`: (h*w), `(img_h, img_w)` network input size.
pub fn solve_view(
    ray: &[f32],
    conf: &[f32],
    (h, w): (usize, usize),
    (img_h, img_w): (usize, usize),
    samples: &[[usize; RANSAC_SAMPLE]],
) -> Result<RayPose> {
    let n = h * w;
    if ray.len() != n * 6 || conf.len() != n {
        bail!("ray pose: expected {n} rays");
    }
    // Identity camera (f = 1, principal point 1, image spans 2): grid centres in [-1, 1].
    let lin = |m: usize| -> Vec<f32> {
        let d = 1.0 / m as f32;
        let (lo, hi) = (-(1.0 - d) + 1.0, (1.0 - d) + 1.0);
        (0..m)
            .map(|i| if m == 1 { lo } else { lo + (hi - lo) * i as f32 / (m - 1) as f32 } - 1.0)
            .collect()
    };
    let ys = lin(h);
    let xs = lin(w);
    let mut src = Vec::with_capacity(n);
    let mut dst = Vec::with_capacity(n);
    let mut wts = Vec::with_capacity(n);
    for i in 0..n {
        let (y, x) = (ys[i / w] as f64, xs[i % w] as f64);
        src.push([x, y]);
        let r = &ray[i * 6..i * 6 + 3];
        let (rx, ry, rz) = (r[0] as f64, r[1] as f64, r[2] as f64);
        let ok = rz.abs() > Z_THRESHOLD;
        if ok {
            dst.push([rx / rz, ry / rz]);
            wts.push(conf[i] as f64);
        } else {
            dst.push([rx, ry]);
            wts.push(0.0);
        }
    }
    let n_sample = ransac_candidates(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        wts[b]
            .partial_cmp(&wts[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let cand = &order[..n_sample.min(n)];
    let mut best: Option<(f64, Vec<bool>)> = None;
    for it in samples {
        let ids: Vec<usize> = it.iter().map(|&k| cand[k.min(cand.len() - 1)]).collect();
        let s: Vec<[f64; 2]> = ids.iter().map(|&i| src[i]).collect();
        let d: Vec<[f64; 2]> = ids.iter().map(|&i| dst[i]).collect();
        let ww: Vec<f64> = ids.iter().map(|&i| wts[i]).collect();
        let hm = fit_homography(&s, &d, &ww);
        let mut score = 0.0;
        let mut mask = vec![false; n];
        for i in 0..n {
            let [x, y] = src[i];
            let px = hm[0][0] * x + hm[0][1] * y + hm[0][2];
            let py = hm[1][0] * x + hm[1][1] * y + hm[1][2];
            let pz = hm[2][0] * x + hm[2][1] * y + hm[2][2];
            let (ex, ey) = (px / pz - dst[i][0], py / pz - dst[i][1]);
            if (ex * ex + ey * ey).sqrt() < REPROJ_THRESHOLD {
                mask[i] = true;
                score += wts[i];
            }
        }
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, mask));
        }
    }
    let (_, mask) = best.ok_or_else(|| eyre::eyre!("ray pose: no RANSAC samples"))?;
    let mut inl: Vec<usize> = (0..n).filter(|&i| mask[i]).collect();
    if inl.len() < 4 {
        bail!("ray pose: only {} RANSAC inliers (need 4)", inl.len());
    }
    if inl.len() > MAX_INLIERS {
        // The reference keeps a random subset of the 95% most confident inliers; keep the most
        // confident ones instead (deterministic).
        inl.sort_by(|&a, &b| {
            wts[b]
                .partial_cmp(&wts[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        inl.truncate(MAX_INLIERS);
    }
    let s: Vec<[f64; 2]> = inl.iter().map(|&i| src[i]).collect();
    let d: Vec<[f64; 2]> = inl.iter().map(|&i| dst[i]).collect();
    let ww: Vec<f64> = inl.iter().map(|&i| wts[i]).collect();
    let mut hm = fit_homography(&s, &d, &ww);
    if det3(&hm) < 0.0 {
        hm = hm.map(|r| r.map(|v| -v));
    }
    let (rot, l) = ql_decomposition(&hm);
    let l22 = l[2][2];
    let f = [l[0][0] / l22, l[1][1] / l22];
    let pp = [l[2][0] / l22, l[2][1] / l22];
    let focal = [1.0 / f[0], 1.0 / f[1]];
    let pp = [pp[0] + 1.0, pp[1] + 1.0];
    // Translation: confidence-weighted mean of the ray origins (zero weight where z is tiny).
    let wsum: f64 = wts.iter().sum();
    let mut t = [0.0f64; 3];
    for i in 0..n {
        for k in 0..3 {
            t[k] += ray[i * 6 + 3 + k] as f64 * wts[i];
        }
    }
    let t = t.map(|v| v / wsum);
    let mut c2w = [[0.0; 4]; 3];
    for i in 0..3 {
        c2w[i][..3].copy_from_slice(&rot[i]);
        c2w[i][3] = t[i];
    }
    let (fw, fh) = (img_w as f64, img_h as f64);
    let k = [
        [focal[0] / 2.0 * fw, 0.0, pp[0] * fw * 0.5],
        [0.0, focal[1] / 2.0 * fh, pp[1] * fh * 0.5],
        [0.0, 0.0, 1.0],
    ];
    Ok(RayPose {
        extrinsics: affine_inverse(&c2w),
        intrinsics: k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ql_reconstructs() {
        let a = [[2.0, 0.3, -0.1], [0.1, 1.5, 0.2], [0.05, -0.2, 1.0]];
        let (q, l) = ql_decomposition(&a);
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| q[i][k] * l[k][j]).sum();
                assert!((v - a[i][j]).abs() < 1e-12);
                if j > i {
                    assert!(l[i][j].abs() < 1e-12);
                }
            }
            assert!(l[i][i] > 0.0);
        }
    }

    #[test]
    fn homography_exact() {
        let h = [[1.2, 0.1, 0.3], [-0.05, 0.9, 0.2], [0.01, 0.02, 1.0]];
        let src: Vec<[f64; 2]> = (0..12)
            .map(|i| [(i % 4) as f64 * 0.3 - 0.5, (i / 4) as f64 * 0.4 - 0.4])
            .collect();
        let dst: Vec<[f64; 2]> = src
            .iter()
            .map(|[x, y]| {
                let z = h[2][0] * x + h[2][1] * y + h[2][2];
                [
                    (h[0][0] * x + h[0][1] * y + h[0][2]) / z,
                    (h[1][0] * x + h[1][1] * y + h[1][2]) / z,
                ]
            })
            .collect();
        let est = fit_homography(&src, &dst, &[1.0; 12]);
        for i in 0..3 {
            for j in 0..3 {
                assert!((est[i][j] - h[i][j]).abs() < 1e-9);
            }
        }
    }
}
