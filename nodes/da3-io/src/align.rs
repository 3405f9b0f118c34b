//! The reference's pose alignment (`depth_anything_3.utils.pose_align.align_poses_umeyama`):
//! the Umeyama Sim(3) fit of one set of camera centres onto another (evo's
//! `umeyama_alignment(x, y, with_scale=True)`), and for 10+ views its RANSAC variant, drawing
//! subsets exactly as numpy's `default_rng(42).choice(N, size, replace=False)` does.
//!
//! Pure `f64` maths, no tensors.

use crate::geometry::det3;

/// A similarity `y = s R x + t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sim3 {
    pub r: [[f64; 3]; 3],
    pub t: [f64; 3],
    pub s: f64,
}

impl Sim3 {
    /// `s R x + t`.
    pub fn apply(&self, x: &[f64; 3]) -> [f64; 3] {
        std::array::from_fn(|i| {
            self.s * (0..3).map(|j| self.r[i][j] * x[j]).sum::<f64>() + self.t[i]
        })
    }
}

/// Eigen-decomposition of a symmetric 3x3 matrix (cyclic Jacobi): eigenvalues descending,
/// with the unit eigenvectors as the matching columns.
fn sym3_eigen(m: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = m;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..64 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        if off < 1e-300 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // Rotate rows/columns p and q: A' = J^T A J, V' = V J.
            let mut b = a;
            for k in 0..3 {
                b[k][p] = c * a[k][p] - s * a[k][q];
                b[k][q] = s * a[k][p] + c * a[k][q];
            }
            let mut d = b;
            for k in 0..3 {
                d[p][k] = c * b[p][k] - s * b[q][k];
                d[q][k] = s * b[p][k] + c * b[q][k];
            }
            a = d;
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0, 1, 2];
    order.sort_by(|&x, &y| a[y][y].total_cmp(&a[x][x]));
    let values = order.map(|i| a[i][i]);
    let vectors = std::array::from_fn(|r| order.map(|i| v[r][i]));
    (values, vectors)
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn mean(p: &[[f64; 3]]) -> [f64; 3] {
    let mut m = [0.0; 3];
    for v in p {
        for i in 0..3 {
            m[i] += v[i];
        }
    }
    m.map(|s| s / p.len() as f64)
}

/// How [`umeyama`] can fail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Degenerate {
    /// `x` has no spread (one position): the scale is undefined.
    NoSpread,
    /// Fewer than three distinct positions in general position (covariance rank < 2, where
    /// evo raises); carries the ratio of spreads `sqrt(sigma_y / sigma_x)`.
    Rank { spread_ratio: f64 },
}

/// The Umeyama Sim(3) fit of the points `x` onto `y` (evo's
/// `umeyama_alignment(x, y, with_scale=True)`): scale `trace(D S) / sigma_x`.
pub fn umeyama(x: &[[f64; 3]], y: &[[f64; 3]]) -> Result<Sim3, Degenerate> {
    assert_eq!(x.len(), y.len());
    if x.is_empty() {
        return Err(Degenerate::NoSpread);
    }
    let n = x.len() as f64;
    let (mx, my) = (mean(x), mean(y));
    let spread = |p: &[[f64; 3]], m: [f64; 3]| -> f64 {
        p.iter()
            .map(|v| (0..3).map(|i| (v[i] - m[i]).powi(2)).sum::<f64>())
            .sum::<f64>()
            / n
    };
    let (sigma_x, sigma_y) = (spread(x, mx), spread(y, my));
    if sigma_x <= 0.0 {
        return Err(Degenerate::NoSpread);
    }
    let mut cov = [[0f64; 3]; 3];
    for (a, b) in x.iter().zip(y) {
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += (b[i] - my[i]) * (a[j] - mx[j]) / n;
            }
        }
    }
    // cov = U D V^T: V and D^2 from cov^T cov, u_i = cov v_i / d_i.
    let mut ctc = [[0f64; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            ctc[i][j] = (0..3).map(|k| cov[k][i] * cov[k][j]).sum();
        }
    }
    let (ev, vecs) = sym3_eigen(ctc);
    let sv = ev.map(|e| e.max(0.0).sqrt());
    if sv[1] <= f64::EPSILON * sv[0].max(f64::MIN_POSITIVE) * 16.0 {
        return Err(Degenerate::Rank {
            spread_ratio: (sigma_y / sigma_x).sqrt(),
        });
    }
    let sign = if det3(&cov) < 0.0 { -1.0 } else { 1.0 };
    let s = (sv[0] + sv[1] + sign * sv[2]) / sigma_x;
    let v: [[f64; 3]; 2] = std::array::from_fn(|k| std::array::from_fn(|i| vecs[i][k]));
    let u: [[f64; 3]; 2] = std::array::from_fn(|k| {
        std::array::from_fn(|i| (0..3).map(|j| cov[i][j] * v[k][j]).sum::<f64>() / sv[k])
    });
    // The proper rotation taking v1, v2 to u1, u2 (= U S V^T, S fixing det +1).
    let (u3, v3) = (cross(u[0], u[1]), cross(v[0], v[1]));
    let r: [[f64; 3]; 3] = std::array::from_fn(|i| {
        std::array::from_fn(|j| u[0][i] * v[0][j] + u[1][i] * v[1][j] + u3[i] * v3[j])
    });
    let rmx: [f64; 3] = std::array::from_fn(|i| (0..3).map(|j| r[i][j] * mx[j]).sum());
    let t = std::array::from_fn(|i| my[i] - s * rmx[i]);
    Ok(Sim3 { r, t, s })
}

/// Scale of the Umeyama Sim(3) alignment of the points `x` onto `y` (see [`umeyama`]).
///
/// Falls back to the ratio of spreads when the covariance has rank < 2 (fewer than three
/// distinct positions, where the reference raises), and to 1 when `x` has no spread.
pub fn umeyama_scale(x: &[[f64; 3]], y: &[[f64; 3]]) -> f64 {
    match umeyama(x, y) {
        Ok(m) => m.s,
        Err(Degenerate::NoSpread) => 1.0,
        Err(Degenerate::Rank { spread_ratio }) => {
            tracing::warn!(
                "degenerate camera layout for Umeyama alignment; using the ratio of spreads"
            );
            spread_ratio
        }
    }
}

/// Seed of the reference's RANSAC draws (`random_state=42`).
pub const RANSAC_SEED: u64 = 42;
/// RANSAC rounds of the reference (`ransac_max_iters=10`).
pub const RANSAC_ITERS: usize = 10;

fn dist(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt()
}

/// `np.median`: the mean of the two middle values for an even count.
fn median(mut v: Vec<f64>) -> f64 {
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

/// The reference's `_ransac_align_sim3(pose_ref, pose_est, random_state=42)` on camera
/// centres: `x` (est) onto `y` (ref). Subsets of `max(3, ceil(N / 2))` views, 10 rounds,
/// inliers within the median nearest-neighbour distance after a plain fit, a refit on the
/// best inlier set. Errors where the plain fit is degenerate (the reference raises there).
pub fn ransac_umeyama(x: &[[f64; 3]], y: &[[f64; 3]]) -> Result<Sim3, Degenerate> {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let sub_n = 3.max(n.div_ceil(2));
    let mut rng = NumpyRng::new(RANSAC_SEED);
    let first = umeyama(x, y)?;
    let aligned: Vec<[f64; 3]> = x.iter().map(|p| first.apply(p)).collect();
    let thresh = median(
        aligned
            .iter()
            .map(|p| y.iter().map(|q| dist(p, q)).fold(f64::INFINITY, f64::min))
            .collect(),
    );
    let mut best = first;
    let mut best_inliers: Option<Vec<bool>> = None;
    let mut best_score = (-1i64, f64::INFINITY);
    for _ in 0..RANSAC_ITERS {
        let sample = rng.choice(n, sub_n);
        let xs: Vec<[f64; 3]> = sample.iter().map(|&i| x[i]).collect();
        let ys: Vec<[f64; 3]> = sample.iter().map(|&i| y[i]).collect();
        let Ok(m) = umeyama(&xs, &ys) else {
            continue;
        };
        let errs: Vec<f64> = x.iter().zip(y).map(|(p, q)| dist(&m.apply(p), q)).collect();
        let inliers: Vec<bool> = errs.iter().map(|&e| e <= thresh).collect();
        let k = inliers.iter().filter(|&&b| b).count() as i64;
        let mean_err = if k > 0 {
            errs.iter()
                .zip(&inliers)
                .filter(|(_, &b)| b)
                .map(|(e, _)| e)
                .sum::<f64>()
                / k as f64
        } else {
            f64::INFINITY
        };
        if k > best_score.0 || (k == best_score.0 && mean_err < best_score.1) {
            best_score = (k, mean_err);
            best = m;
            best_inliers = Some(inliers);
        }
    }
    if let Some(inl) = best_inliers.filter(|b| b.iter().filter(|&&b| b).count() >= 3) {
        let pick = |p: &[[f64; 3]]| -> Vec<[f64; 3]> {
            p.iter()
                .zip(&inl)
                .filter(|(_, &b)| b)
                .map(|(v, _)| *v)
                .collect()
        };
        // Where the refit is degenerate the reference raises; keep the best round's fit.
        if let Ok(m) = umeyama(&pick(x), &pick(y)) {
            return Ok(m);
        }
    }
    Ok(best)
}

/// numpy's `Generator(PCG64(SeedSequence(seed)))` as far as `choice(n, size,
/// replace=False)` needs it (numpy 1.17+ streams; checked against numpy 2.4).
pub struct NumpyRng {
    state: u128,
    inc: u128,
    /// PCG64's buffered upper half for 32-bit draws.
    half: Option<u32>,
}

impl NumpyRng {
    const MULT: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;

    /// `np.random.default_rng(seed)`.
    pub fn new(seed: u64) -> Self {
        let w = seed_sequence_u64x4(seed);
        let initstate = ((w[0] as u128) << 64) | w[1] as u128;
        let initseq = ((w[2] as u128) << 64) | w[3] as u128;
        let mut r = Self {
            state: 0,
            inc: (initseq << 1) | 1,
            half: None,
        };
        r.step();
        r.state = r.state.wrapping_add(initstate);
        r.step();
        r
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(Self::MULT).wrapping_add(self.inc);
    }

    /// PCG64 (XSL-RR) output.
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let (hi, lo) = ((self.state >> 64) as u64, self.state as u64);
        (hi ^ lo).rotate_right((hi >> 58) as u32)
    }

    fn next_u32(&mut self) -> u32 {
        if let Some(h) = self.half.take() {
            return h;
        }
        let n = self.next_u64();
        self.half = Some((n >> 32) as u32);
        n as u32
    }

    /// numpy's `random_bounded_uint64(0, max)` for `max < 2^32 - 1` (Lemire): `0..=max`.
    fn bounded(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        assert!(max < u32::MAX as u64, "range beyond 32 bits");
        let excl = max + 1;
        let mut m = self.next_u32() as u64 * excl;
        let mut left = m & 0xffff_ffff;
        if left < excl {
            let threshold = (u32::MAX as u64 - max) % excl;
            while left < threshold {
                m = self.next_u32() as u64 * excl;
                left = m & 0xffff_ffff;
            }
        }
        m >> 32
    }

    /// `Generator.choice(n, size, replace=False)` (shuffled), as indices.
    pub fn choice(&mut self, n: usize, size: usize) -> Vec<usize> {
        assert!(size <= n, "sample larger than the population");
        let (n64, size64) = (n as u64, size as u64);
        if n > 10_000 && size > n / 50 {
            // Tail shuffle of 0..n.
            let mut idx: Vec<u64> = (0..n64).collect();
            for i in (((n - size).max(1))..n).rev() {
                let j = self.bounded(i as u64) as usize;
                idx.swap(i, j);
            }
            return idx[n - size..].iter().map(|&v| v as usize).collect();
        }
        // Floyd's algorithm with numpy's open-addressing set, then a shuffle.
        let mut mask = (1.2 * size as f64) as u64;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        let mut set = vec![u64::MAX; mask as usize + 1];
        let mut idx = vec![0u64; size];
        for j in n64 - size64..n64 {
            let val = self.bounded(j);
            let mut loc = val & mask;
            while set[loc as usize] != u64::MAX && set[loc as usize] != val {
                loc = (loc + 1) & mask;
            }
            let out = if set[loc as usize] == u64::MAX {
                set[loc as usize] = val;
                val
            } else {
                loc = j & mask;
                while set[loc as usize] != u64::MAX {
                    loc = (loc + 1) & mask;
                }
                set[loc as usize] = j;
                j
            };
            idx[(j + size64 - n64) as usize] = out;
        }
        for i in (1..size).rev() {
            let j = self.bounded(i as u64) as usize;
            idx.swap(i, j);
        }
        idx.into_iter().map(|v| v as usize).collect()
    }
}

/// numpy's `SeedSequence(seed).generate_state(4, np.uint64)`.
fn seed_sequence_u64x4(seed: u64) -> [u64; 4] {
    const INIT_A: u32 = 0x43b0_d7e5;
    const MULT_A: u32 = 0x931e_8875;
    const INIT_B: u32 = 0x8b51_f9dd;
    const MULT_B: u32 = 0x58f3_8ded;
    const MIX_L: u32 = 0xca01_f9dd;
    const MIX_R: u32 = 0x4973_f715;
    let mut entropy = vec![seed as u32];
    if seed >> 32 != 0 {
        entropy.push((seed >> 32) as u32);
    }
    let mut hash_const = INIT_A;
    let mut hashmix = |v: u32| -> u32 {
        let mut v = v ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> 16)
    };
    let mix = |x: u32, y: u32| -> u32 {
        let r = MIX_L.wrapping_mul(x).wrapping_sub(MIX_R.wrapping_mul(y));
        r ^ (r >> 16)
    };
    let mut pool = [0u32; 4];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(entropy.get(i).copied().unwrap_or(0));
    }
    for src in 0..4 {
        for dst in 0..4 {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    let mut hb = INIT_B;
    let words: Vec<u32> = (0..8)
        .map(|i| {
            let mut v = pool[i % 4] ^ hb;
            hb = hb.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hb);
            v ^ (v >> 16)
        })
        .collect();
    std::array::from_fn(|i| words[2 * i] as u64 | (words[2 * i + 1] as u64) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_streams() {
        // np.random.default_rng(42).bit_generator.random_raw(3)
        let mut r = NumpyRng::new(42);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [0xc621fbcd16d92688, 0x705a5661a791ffc1, 0xdbcd12c26eda1624]
        );
        // [rng.choice(np.arange(n), size=max(3, (n+1)//2), replace=False) for _ in range(3)]
        let mut r = NumpyRng::new(42);
        let got: Vec<Vec<usize>> = (0..3).map(|_| r.choice(10, 5)).collect();
        assert_eq!(got, [[5, 3, 7, 0, 4], [7, 0, 3, 9, 6], [4, 5, 3, 8, 1]]);
        let mut r = NumpyRng::new(42);
        let got: Vec<Vec<usize>> = (0..3).map(|_| r.choice(11, 6)).collect();
        assert_eq!(
            got,
            [[7, 5, 4, 9, 3, 0], [7, 10, 8, 6, 9, 5], [9, 4, 1, 6, 7, 5]]
        );
        let mut r = NumpyRng::new(42);
        r.choice(40, 20);
        assert_eq!(
            r.choice(40, 20),
            [20, 17, 1, 25, 34, 24, 16, 3, 12, 6, 13, 38, 31, 8, 36, 35, 26, 29, 37, 33]
        );
        // The tail-shuffle path (n > 10000).
        let mut r = NumpyRng::new(42);
        assert_eq!(
            &r.choice(20_000, 10_000)[..8],
            [17022, 5656, 12347, 18175, 4713, 14494, 1685, 18013]
        );
    }

    #[test]
    fn ransac_matches_the_reference() {
        // Figures from the reference's `_ransac_align_sim3` (with evo's Umeyama) on the
        // same points: 12 centres, a similarity of scale 0.3 with noise, two outliers.
        let n = 12;
        let x: Vec<[f64; 3]> = (0..n)
            .map(|i| {
                let i = i as f64;
                [3.0 * (0.5 * i).cos(), 1.5 * (0.7 * i).sin(), 0.25 * i]
            })
            .collect();
        let (ca, sa) = (0.4f64.cos(), 0.4f64.sin());
        let mut y: Vec<[f64; 3]> = x
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let r = [ca * p[0] - sa * p[1], sa * p[0] + ca * p[1], p[2]];
                let t = [0.5, -1.0, 2.0];
                std::array::from_fn(|j| {
                    0.3 * r[j] + t[j] + 0.01 * (3.1 * i as f64 + j as f64).sin()
                })
            })
            .collect();
        for (k, d) in [(3, [1.0, -0.5, 0.7]), (8, [-0.8, 0.9, 0.2])] {
            for j in 0..3 {
                y[k][j] += d[j];
            }
        }
        let plain = umeyama(&x, &y).unwrap();
        assert!((plain.s - 0.28359375368372713).abs() < 1e-12, "{}", plain.s);
        let m = ransac_umeyama(&x, &y).unwrap();
        assert!((m.s - 0.29985125444366406).abs() < 1e-12, "{}", m.s);
        let r_ref = [
            [
                0.9209225607262402,
                -0.3897352998861004,
                0.002834284409833147,
            ],
            [
                0.38974527588243857,
                0.9209068905055425,
                -0.00539619743285183,
            ],
            [
                -0.000507023417930623,
                0.0060741289172859545,
                0.9999814237700366,
            ],
        ];
        let t_ref = [0.4992851074326215, -0.9974107875221248, 1.9997357679486862];
        for i in 0..3 {
            assert!((m.t[i] - t_ref[i]).abs() < 1e-10, "{:?}", m.t);
            for (got, want) in m.r[i].iter().zip(&r_ref[i]) {
                assert!((got - want).abs() < 1e-10, "{:?}", m.r);
            }
        }
    }

    #[test]
    fn eigen_of_diagonal_and_rotated() {
        let (e, _) = sym3_eigen([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]);
        assert_eq!(e, [3.0, 2.0, 1.0]);
        let m = [[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]];
        let (e, v) = sym3_eigen(m);
        assert!(
            (e[0] - 5.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12 && (e[2] - 1.0).abs() < 1e-12
        );
        for k in 0..3 {
            for i in 0..3 {
                let mv: f64 = (0..3).map(|j| m[i][j] * v[j][k]).sum();
                assert!((mv - e[k] * v[i][k]).abs() < 1e-12);
            }
        }
    }
}
