//! `GaussianAdapter`: the GS head's per-pixel raw parameters -> world-space 3D Gaussians,
//! with the predicted cameras (the reference's `gs_adapter.py`, `sh_degree` 2, offsets in
//! depth and xy, SH colour). Per pixel, on the host in f64:
//! - centre: the pixel (plus its predicted sub-pixel offset) cast along its unit ray from
//!   the camera centre by the predicted depth plus its offset;
//! - scale: `min + (max - min) * sigmoid(raw)`, times depth and the pixel footprint;
//! - rotation: the predicted quaternion taken to the world frame;
//! - colour: SH coefficients (higher bands damped) rotated to the world frame (e3nn's Wigner
//!   D matrices, as the reference's `rotate_sh`);
//! - opacity: the head's density.
//!
//! With known input cameras (`gt`), the predicted cameras' scale is fitted to them (Umeyama,
//! clamped to [1/3, 3]) and depths and camera centres are scaled by it.

use da3_io::align::umeyama_scale;
use da3_io::gaussians::Gaussians;
use da3_io::geometry::{affine_inverse, inverse3, matmul, Mat3, Mat34};

use super::config::GsAdapterConfig;
use super::transform::{mat_to_quat, quat_to_mat};

fn inv2(m: [[f64; 2]; 2]) -> [[f64; 2]; 2] {
    let d = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    [[m[1][1] / d, -m[0][1] / d], [-m[1][0] / d, m[0][0] / d]]
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Inputs of one batch element, views in order; maps are `views * H * W` (channels last).
pub struct AdapterInput<'a> {
    pub views: usize,
    pub height: usize,
    pub width: usize,
    /// Predicted world-to-camera extrinsics, one per view.
    pub extrinsics: &'a [Mat34],
    /// Predicted intrinsics in pixels, one per view.
    pub intrinsics: &'a [Mat3],
    /// Known world-to-camera extrinsics given to the network, if any.
    pub gt_extrinsics: Option<&'a [Mat34]>,
    pub depth: &'a [f32],
    pub density: &'a [f32],
    pub raw: &'a [f32],
}

impl GsAdapterConfig {
    /// SH coefficients per colour channel.
    pub fn d_sh(&self) -> usize {
        if self.pred_color {
            1
        } else {
            (self.sh_degree + 1) * (self.sh_degree + 1)
        }
    }

    /// Raw channels the head must give (without the density).
    pub fn d_in(&self) -> usize {
        2 * self.pred_offset_xy as usize + 3 + 4 + 3 * self.d_sh() + self.pred_offset_depth as usize
    }

    /// The Gaussians of one batch element.
    pub fn gaussians(&self, a: &AdapterInput) -> eyre::Result<Gaussians> {
        let (v, h, w) = (a.views, a.height, a.width);
        let hw = h * w;
        let c = self.d_in();
        eyre::ensure!(
            a.extrinsics.len() == v
                && a.intrinsics.len() == v
                && a.depth.len() == v * hw
                && a.density.len() == v * hw
                && a.raw.len() == v * hw * c,
            "GS adapter: inputs for {v} views of {w}x{h} with {c} raw channels do not match"
        );
        let d_sh = self.d_sh();
        let mut c2w: Vec<Mat34> = a.extrinsics.iter().map(affine_inverse).collect();
        // Scale of the predicted cameras fitted to the given ones (`batch_align_poses_umeyama`).
        let mut depth_scale = 1.0;
        if let Some(gt) = a.gt_extrinsics {
            eyre::ensure!(
                gt.len() == v,
                "GS adapter: {} input cameras for {v} views",
                gt.len()
            );
            if gt != a.extrinsics {
                let centres = |e: &[Mat34]| -> Vec<[f64; 3]> {
                    e.iter()
                        .map(|m| {
                            let c = affine_inverse(m);
                            [c[0][3], c[1][3], c[2][3]]
                        })
                        .collect()
                };
                let s = umeyama_scale(&centres(a.extrinsics), &centres(gt));
                let s = if s.is_finite() {
                    s.clamp(1.0 / 3.0, 3.0)
                } else {
                    1.0
                };
                for m in &mut c2w {
                    (0..3).for_each(|r| m[r][3] *= s);
                }
                depth_scale = s;
            }
        }
        let mask: Vec<f64> = (0..d_sh)
            .map(|k| {
                if self.pred_color {
                    return 1.0;
                }
                let degree = (k as f64).sqrt().floor() as i32;
                if degree == 0 {
                    1.0
                } else {
                    0.1 * 0.25f64.powi(degree)
                }
            })
            .collect();
        let n = v * hw;
        let mut g = Gaussians {
            views: v,
            height: h,
            width: w,
            means: Vec::with_capacity(n),
            scales: Vec::with_capacity(n),
            rotations: Vec::with_capacity(n),
            harmonics: Vec::with_capacity(n * 3 * d_sh),
            d_sh,
            opacities: Vec::with_capacity(n),
        };
        let (wf, hf) = (w as f64, h as f64);
        for (view, (k, m)) in a.intrinsics.iter().zip(&c2w).enumerate() {
            let kn: Mat3 = [
                [k[0][0] / wf, k[0][1] / wf, k[0][2] / wf],
                [k[1][0] / hf, k[1][1] / hf, k[1][2] / hf],
                k[2],
            ];
            let kn_inv = inverse3(&kn);
            let i2 = inv2([[kn[0][0], kn[0][1]], [kn[1][0], kn[1][1]]]);
            let (px, py) = (1.0 / wf, 1.0 / hf);
            let multiplier =
                0.1 * ((i2[0][0] * px + i2[0][1] * py) + (i2[1][0] * px + i2[1][1] * py));
            let rot: Mat3 = [
                [m[0][0], m[0][1], m[0][2]],
                [m[1][0], m[1][1], m[1][2]],
                [m[2][0], m[2][1], m[2][2]],
            ];
            let origin = [m[0][3], m[1][3], m[2][3]];
            let sh_rot = (self.sh_degree > 0 && !self.pred_color).then(|| wigner_bands(&rot, d_sh));
            for row in 0..h {
                for col in 0..w {
                    let p = view * hw + row * w + col;
                    let mut raw = &a.raw[p * c..(p + 1) * c];
                    let mut depth = a.depth[p] as f64;
                    if self.pred_offset_depth {
                        depth += raw[c - 1] as f64;
                        raw = &raw[..c - 1];
                    }
                    depth *= depth_scale;
                    let mut x = (col as f64 + 0.5) / wf;
                    let mut y = (row as f64 + 0.5) / hf;
                    if self.pred_offset_xy {
                        x += raw[0] as f64 * px;
                        y += raw[1] as f64 * py;
                        raw = &raw[2..];
                    }
                    // centre along the unit ray
                    let d = [
                        kn_inv[0][0] * x + kn_inv[0][1] * y + kn_inv[0][2],
                        kn_inv[1][0] * x + kn_inv[1][1] * y + kn_inv[1][2],
                        kn_inv[2][0] * x + kn_inv[2][1] * y + kn_inv[2][2],
                    ];
                    let norm = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                    let mut mean = [0f32; 3];
                    for (r, o) in mean.iter_mut().enumerate() {
                        let dw = (rot[r][0] * d[0] + rot[r][1] * d[1] + rot[r][2] * d[2]) / norm;
                        *o = (origin[r] + dw * depth) as f32;
                    }
                    g.means.push(mean);
                    // scales
                    let (smin, smax) = (self.scale_min, self.scale_max);
                    let mut s = [0f32; 3];
                    for (i, o) in s.iter_mut().enumerate() {
                        let v = smin + (smax - smin) * sigmoid(raw[i] as f64);
                        *o = (v * depth * multiplier) as f32;
                    }
                    g.scales.push(s);
                    // rotation: raw quaternion taken as (x, y, z, w), then, as the reference
                    // does, reordered to (w, x, y, z) and read by `quat_to_mat` as (x, y, z, w)
                    let q = &raw[3..7];
                    let qn =
                        (q.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).sqrt() + 1e-8;
                    let q = [
                        q[3] as f64 / qn,
                        q[0] as f64 / qn,
                        q[1] as f64 / qn,
                        q[2] as f64 / qn,
                    ];
                    let world = matmul(&rot, &quat_to_mat(q));
                    g.rotations.push(mat_to_quat(&world).map(|v| v as f32));
                    // colour
                    let sh = &raw[7..7 + 3 * d_sh];
                    for ch in 0..3 {
                        let coef: Vec<f64> = (0..d_sh)
                            .map(|k| sh[ch * d_sh + k] as f64 * mask[k])
                            .collect();
                        match &sh_rot {
                            Some(bands) => g
                                .harmonics
                                .extend(rotate(bands, &coef).iter().map(|&v| v as f32)),
                            None => g.harmonics.extend(coef.iter().map(|&v| v as f32)),
                        }
                    }
                    // opacity: map_pdf_to_opacity at step 0 (exponent 1)
                    let pdf = a.density[p];
                    g.opacities.push(0.5 * (1.0 - (1.0 - pdf) + pdf));
                }
            }
        }
        Ok(g)
    }
}

/// One Wigner D matrix per SH band (`(2l+1)^2` values, row-major), band 0 included.
type Bands = Vec<Vec<f64>>;

fn rotate(bands: &Bands, coef: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(coef.len());
    for (l, d) in bands.iter().enumerate() {
        let n = 2 * l + 1;
        let base = l * l;
        for i in 0..n {
            out.push((0..n).map(|j| d[i * n + j] * coef[base + j]).sum());
        }
    }
    out
}

/// The reference's `rotate_sh`: the rotation in e3nn's axis order (y, z, x), its YXY Euler
/// angles (`matrix_to_angles`) and `wigner_D(l, alpha, -beta, gamma)` per band.
fn wigner_bands(r: &Mat3, d_sh: usize) -> Bands {
    // P^-1 R P with P = [[0,0,1],[1,0,0],[0,1,0]]
    let p: Mat3 = [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
    let pt: Mat3 = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]];
    let rp = matmul(&matmul(&pt, r), &p);
    let (alpha, beta, gamma) = matrix_to_angles(&rp);
    let degrees = (d_sh as f64).sqrt().round() as usize;
    let two_pi = 2.0 * std::f64::consts::PI;
    let (a, b, g) = (
        alpha.rem_euclid(two_pi),
        (-beta).rem_euclid(two_pi),
        gamma.rem_euclid(two_pi),
    );
    (0..degrees)
        .map(|l| {
            let (x0, x1) = so3_generators(l);
            let n = 2 * l + 1;
            let ea = expm(&scaled(&x1, a), n);
            let eb = expm(&scaled(&x0, b), n);
            let eg = expm(&scaled(&x1, g), n);
            mul(&mul(&ea, &eb, n), &eg, n)
        })
        .collect()
}

fn rot_x(t: f64) -> Mat3 {
    let (s, c) = t.sin_cos();
    [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]
}

fn rot_y(t: f64) -> Mat3 {
    let (s, c) = t.sin_cos();
    [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
}

/// e3nn's `matrix_to_angles`: R = Ry(alpha) Rx(beta) Ry(gamma).
fn matrix_to_angles(r: &Mat3) -> (f64, f64, f64) {
    let x = [r[0][1], r[1][1], r[2][1]];
    let n = (x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).sqrt().max(1e-12);
    let x = x.map(|v| (v / n).clamp(-1.0, 1.0));
    let beta = x[1].acos();
    let alpha = x[0].atan2(x[2]);
    let m = matmul(&rot_y(alpha), &rot_x(beta));
    let mt = [
        [m[0][0], m[1][0], m[2][0]],
        [m[0][1], m[1][1], m[2][1]],
        [m[0][2], m[1][2], m[2][2]],
    ];
    let rr = matmul(&mt, r);
    (alpha, beta, rr[0][2].atan2(rr[0][0]))
}

#[derive(Clone, Copy, Default)]
struct C64(f64, f64);

impl C64 {
    fn mul(self, o: C64) -> C64 {
        C64(self.0 * o.0 - self.1 * o.1, self.0 * o.1 + self.1 * o.0)
    }
    fn add(self, o: C64) -> C64 {
        C64(self.0 + o.0, self.1 + o.1)
    }
    fn conj(self) -> C64 {
        C64(self.0, -self.1)
    }
}

/// e3nn's `so3_generators(l)[0]` and `[1]`: the SU(2) generators in the real SH basis.
fn so3_generators(l: usize) -> (Vec<f64>, Vec<f64>) {
    let n = 2 * l + 1;
    let j = l as f64;
    let jj = j * (j + 1.0);
    let mut raising = vec![C64::default(); n * n];
    let mut lowering = vec![C64::default(); n * n];
    for k in 0..n - 1 {
        let m = -j + k as f64;
        raising[(k + 1) * n + k] = C64(-(jj - m * (m + 1.0)).sqrt(), 0.0);
        let m = -j + 1.0 + k as f64;
        lowering[k * n + k + 1] = C64((jj - m * (m - 1.0)).sqrt(), 0.0);
    }
    let gx: Vec<C64> = (0..n * n)
        .map(|i| C64(0.5 * (raising[i].0 + lowering[i].0), 0.0))
        .collect();
    let mut gz = vec![C64::default(); n * n];
    for k in 0..n {
        gz[k * n + k] = C64(0.0, -j + k as f64);
    }
    // change of basis real -> complex, times (-i)^l
    let s = std::f64::consts::FRAC_1_SQRT_2;
    let mut q = vec![C64::default(); n * n];
    for mi in 0..n {
        let m = mi as i64 - l as i64;
        let a = m.unsigned_abs() as usize;
        if m < 0 {
            q[mi * n + l + a] = C64(s, 0.0);
            q[mi * n + l - a] = C64(0.0, -s);
        } else if m == 0 {
            q[mi * n + l] = C64(1.0, 0.0);
        } else {
            let sign = if m % 2 == 0 { 1.0 } else { -1.0 };
            q[mi * n + l + a] = C64(sign * s, 0.0);
            q[mi * n + l - a] = C64(0.0, sign * s);
        }
    }
    let mut phase = C64(1.0, 0.0);
    for _ in 0..l {
        phase = phase.mul(C64(0.0, -1.0));
    }
    q.iter_mut().for_each(|v| *v = v.mul(phase));
    // X = real(Q^H G Q)
    let to_real = |g: &[C64]| -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for r in 0..n {
            for c in 0..n {
                let mut acc = C64::default();
                for a in 0..n {
                    for b in 0..n {
                        acc = acc.add(q[a * n + r].conj().mul(g[a * n + b]).mul(q[b * n + c]));
                    }
                }
                out[r * n + c] = acc.0;
            }
        }
        out
    };
    (to_real(&gx), to_real(&gz))
}

fn scaled(m: &[f64], s: f64) -> Vec<f64> {
    m.iter().map(|v| v * s).collect()
}

fn mul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for r in 0..n {
        for k in 0..n {
            let av = a[r * n + k];
            for c in 0..n {
                out[r * n + c] += av * b[k * n + c];
            }
        }
    }
    out
}

/// Matrix exponential (scaling and squaring, Taylor series) of a small real matrix.
fn expm(a: &[f64], n: usize) -> Vec<f64> {
    let norm = (0..n)
        .map(|r| (0..n).map(|c| a[r * n + c].abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let squarings = if norm > 0.5 {
        (norm / 0.5).log2().ceil() as i32
    } else {
        0
    };
    let b = scaled(a, 0.5f64.powi(squarings));
    let mut result: Vec<f64> = (0..n * n)
        .map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    let mut term = result.clone();
    for k in 1..=20 {
        term = scaled(&mul(&term, &b, n), 1.0 / k as f64);
        result.iter_mut().zip(&term).for_each(|(r, t)| *r += t);
    }
    for _ in 0..squarings {
        result = mul(&result, &result, n);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot_z(t: f64) -> Mat3 {
        let (s, c) = t.sin_cos();
        [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    }

    /// Every band is orthogonal and a representation: D(R1 R2) = D(R1) D(R2) (values are
    /// checked against the reference by the GS fixture in tests/parity.rs).
    #[test]
    fn wigner_bands_are_a_representation() {
        let r1 = matmul(&rot_x(0.3), &matmul(&rot_y(-1.1), &rot_z(2.0)));
        let r2 = matmul(&rot_z(-0.7), &rot_y(0.4));
        let (b1, b2, b12) = (
            wigner_bands(&r1, 9),
            wigner_bands(&r2, 9),
            wigner_bands(&matmul(&r1, &r2), 9),
        );
        assert!((b1[0][0] - 1.0).abs() < 1e-12);
        for l in 1..3 {
            let n = 2 * l + 1;
            let prod = mul(&b1[l], &b2[l], n);
            for (a, b) in prod.iter().zip(&b12[l]) {
                assert!((a - b).abs() < 1e-9, "band {l}: {a} vs {b}");
            }
            let mut t = vec![0.0; n * n];
            for r in 0..n {
                for c in 0..n {
                    t[c * n + r] = b1[l][r * n + c];
                }
            }
            let id = mul(&b1[l], &t, n);
            for (i, v) in id.iter().enumerate() {
                let want = if i % (n + 1) == 0 { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn adapter_places_centres_on_the_rays() {
        let cfg = GsAdapterConfig::default();
        let (h, w) = (2, 3);
        let c = cfg.d_in();
        let e: Mat34 = [
            [1.0, 0.0, 0.0, 0.5],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ];
        let k: Mat3 = [[3.0, 0.0, 1.5], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]];
        let raw = vec![0f32; h * w * c];
        let depth = vec![2f32; h * w];
        let dens = vec![0.25f32; h * w];
        let g = cfg
            .gaussians(&AdapterInput {
                views: 1,
                height: h,
                width: w,
                extrinsics: &[e],
                intrinsics: &[k],
                gt_extrinsics: None,
                depth: &depth,
                density: &dens,
                raw: &raw,
            })
            .unwrap();
        g.validate().unwrap();
        // pixel (row 0, col 1): centre ray through x = 1.5 = cx, y = 0.5: direction
        // (0, -1/6, 1) normalised, camera centre at (-0.5, 0, 0)
        let m = g.means[1];
        let n = (1.0f64 + 1.0 / 36.0).sqrt();
        assert!((m[0] as f64 + 0.5).abs() < 1e-6);
        assert!((m[1] as f64 + 2.0 / 6.0 / n).abs() < 1e-6);
        assert!((m[2] as f64 - 2.0 / n).abs() < 1e-6);
        assert!((g.opacities[0] - 0.25).abs() < 1e-7);
        // scales: (min + (max - min) / 2) * depth * 0.1 * (1/3 + 1/3)
        let want = (1e-5 + (30.0 - 1e-5) * 0.5) * 2.0 * 0.1 * (2.0 / 3.0);
        assert!((g.scales[0][0] as f64 - want).abs() < 1e-4);
    }
}
