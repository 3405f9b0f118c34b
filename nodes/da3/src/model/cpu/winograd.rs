//! 3x3 stride-1 pad-1 convolutions by Winograd F(2x2, 3x3) or F(4x4, 3x3), with the same
//! fusions as the other convolutions (input ReLU, residual, ReLU + 1x1 after).

use rayon::prelude::*;

use super::buffers::{sgemm, with_scratch, Mat, SyncPtr};
use super::conv::relu_then_1x1;
use super::simd;

/// The Winograd output tile: F(2x2, 3x3) (16 multiplies per 4 outputs and channel pair) or
/// F(4x4, 3x3) (36 per 16: fewer multiplies and smaller transformed operands, more work per
/// tile in the transforms, rounding a few ulps further from the direct sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tile {
    F2,
    F4,
}

/// The tile for a 3x3 stride-1 convolution of `ci -> co` channels on an `h x w` map, or
/// `None` where Winograd loses to the by-rows GEMMs. Measured on DA3-SMALL's DPT shapes
/// (`cargo bench -p da3 --bench kernels`, AMD EPYC Zen 4, 2 threads): F(4x4) ahead on maps of
/// 8192 pixels and more from 64 channels in and out together (64->64 108x144 3.1 vs 3.9 ms,
/// 64->32 216x288 7.4-8.3 vs 10.5, 32->32 378x504 17-18 vs 20 by rows); on smaller maps
/// F(2x2) from 96 channels, and F(4x4) behind it (54x72 even, 27x36 0.6 vs 0.43 ms).
pub(super) fn tile_for(ci: usize, co: usize, h: usize, w: usize) -> Option<Tile> {
    if ci < 16 || co < 16 {
        None
    } else if h * w >= 8192 && ci + co >= 64 {
        Some(Tile::F4)
    } else if ci + co >= 96 {
        Some(Tile::F2)
    } else {
        None
    }
}

/// Shapes and fusions of a Winograd convolution (3x3, stride 1, padding 1).
pub(super) struct WinogradConv<'a> {
    pub(super) b: usize,
    pub(super) ci: usize,
    pub(super) co: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) relu_in: bool,
    /// `out` holds a residual to add to.
    pub(super) accumulate: bool,
    /// ReLU + 1x1 conv (weight (O2, Co), bias) after the conv, as in [`Conv2dOp`].
    pub(super) then_1x1: Option<(&'a [f32], Option<&'a [f32]>)>,
}

/// 3x3 convolution, stride 1, padding 1, by Winograd with output tiles of `tile`: F(2x2,
/// 3x3) makes each 2x2 output tile from a 4x4 input tile in 16 multiplies per (input,
/// output) channel pair instead of 36, F(4x4, 3x3) each 4x4 tile from a 6x6 one in 36
/// instead of 144. Per band of tile rows: input transform `V = Bᵀ d B` into 16 (36)
/// matrices (Ci × tiles), as many GEMMs `M[ξ] = U[ξ] · V[ξ]`, output transform
/// `Y = Aᵀ M A` (+ bias, residual, or the fused ReLU + 1x1). Rounding differs from the
/// direct sum by a few ulps (F(4x4): a few more).
pub(super) fn winograd_conv(
    x: &[f32],
    wt: &[f32],
    p: WinogradConv<'_>,
    tile: Tile,
    out: &mut [f32],
) {
    match tile {
        Tile::F2 => run_bands::<F2, 2, 4>(x, wt, &p, out),
        Tile::F4 => run_bands::<F4, 4, 6>(x, wt, &p, out),
    }
}

/// Bands per image of `th` tile rows of `tw` tiles, for `b` images on `threads` threads: up
/// to 4 per thread, of at least ~64 tiles each for the GEMMs' sake (bands of 512 or more
/// measured no faster, and starve a thread on DA3's small maps), and where that allows, a
/// count that gives every thread the same share (7 bands on 2 threads keep one idle an
/// eighth of the time).
fn bands(b: usize, th: usize, tw: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let most = (th * tw / 64).min(4 * threads).min(th).max(1);
    (1..=most)
        .rev()
        .find(|n| (b * n).is_multiple_of(threads))
        .unwrap_or(most)
}

/// What every band of one Winograd convolution reads (and where it writes).
struct WinogradRun<'a> {
    p: &'a WinogradConv<'a>,
    x: &'a [f32],
    /// The transformed weights ([`weights`]).
    u: &'a [f32],
    /// The output (the tasks' output rows are disjoint).
    out: SyncPtr,
}

/// One Winograd algorithm F(S×S, 3×3): output tiles of S×S pixels from input tiles of A×A,
/// A = S + 2, as the three matrices of `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, each applied
/// elementwise to whole rows of tiles (the loops the compiler vectorises).
trait Algorithm<const S: usize, const A: usize> {
    /// `G (a, b, c)ᵀ`: one column (or row) of a 3x3 kernel to A values.
    fn g(a: f32, b: f32, c: f32) -> [f32; A];
    /// `r = Bᵀ d` for A vectors d.
    fn bt(d: [&[f32]; A], r: [&mut [f32]; A]);
    /// `y = Aᵀ m` for A vectors m.
    fn at(m: [&[f32]; A], y: [&mut [f32]; S]);
}

/// F(2x2, 3x3): 16 multiplies per 4 outputs and channel pair (the direct sum: 36).
struct F2;

impl Algorithm<2, 4> for F2 {
    /// G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
    #[inline(always)]
    fn g(a: f32, b: f32, c: f32) -> [f32; 4] {
        [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
    }

    /// Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
    #[inline(always)]
    fn bt(d: [&[f32]; 4], r: [&mut [f32]; 4]) {
        let [r0, r1, r2, r3] = r;
        let n = r0.len();
        let (d0, d1, d2, d3) = (&d[0][..n], &d[1][..n], &d[2][..n], &d[3][..n]);
        let (r1, r2, r3) = (&mut r1[..n], &mut r2[..n], &mut r3[..n]);
        for i in 0..n {
            r0[i] = d0[i] - d2[i];
            r1[i] = d1[i] + d2[i];
            r2[i] = d2[i] - d1[i];
            r3[i] = d1[i] - d3[i];
        }
    }

    /// Aᵀ = [1 1 1 0; 0 1 -1 -1].
    #[inline(always)]
    fn at(m: [&[f32]; 4], y: [&mut [f32]; 2]) {
        let [y0, y1] = y;
        let n = y0.len();
        let (m0, m1, m2, m3) = (&m[0][..n], &m[1][..n], &m[2][..n], &m[3][..n]);
        let y1 = &mut y1[..n];
        for i in 0..n {
            y0[i] = m0[i] + m1[i] + m2[i];
            y1[i] = m1[i] - m2[i] - m3[i];
        }
    }
}

/// F(4x4, 3x3), points 0, ±1, ±2, ∞: 36 multiplies per 16 outputs and channel pair (the
/// direct sum: 144).
struct F4;

impl Algorithm<4, 6> for F4 {
    /// G = [¼ 0 0; -⅙ -⅙ -⅙; -⅙ ⅙ -⅙; 1/24 1/12 ⅙; 1/24 -1/12 ⅙; 0 0 1].
    #[inline(always)]
    fn g(a: f32, b: f32, c: f32) -> [f32; 6] {
        [
            0.25 * a,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            a / 24.0 + b / 12.0 + c / 6.0,
            a / 24.0 - b / 12.0 + c / 6.0,
            c,
        ]
    }

    /// Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
    /// 0 4 0 -5 0 1].
    #[inline(always)]
    fn bt(d: [&[f32]; 6], r: [&mut [f32]; 6]) {
        let [r0, r1, r2, r3, r4, r5] = r;
        let n = r0.len();
        let (d0, d1, d2, d3, d4, d5) = (
            &d[0][..n],
            &d[1][..n],
            &d[2][..n],
            &d[3][..n],
            &d[4][..n],
            &d[5][..n],
        );
        let (r1, r2, r3, r4, r5) = (
            &mut r1[..n],
            &mut r2[..n],
            &mut r3[..n],
            &mut r4[..n],
            &mut r5[..n],
        );
        for i in 0..n {
            let (a, b, c, e) = (d1[i], d2[i], d3[i], d4[i]);
            let (s, t) = (e - 4.0 * b, c - 4.0 * a); // d4 - 4 d2, d3 - 4 d1
            let (u, v) = (e - b, 2.0 * (c - a)); // d4 - d2, 2 (d3 - d1)
            r0[i] = 4.0 * d0[i] - 5.0 * b + e;
            r1[i] = s + t;
            r2[i] = s - t;
            r3[i] = u + v;
            r4[i] = u - v;
            r5[i] = 4.0 * a - 5.0 * c + d5[i];
        }
    }

    /// Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
    #[inline(always)]
    fn at(m: [&[f32]; 6], y: [&mut [f32]; 4]) {
        let [y0, y1, y2, y3] = y;
        let n = y0.len();
        let (m0, m1, m2, m3, m4, m5) = (
            &m[0][..n],
            &m[1][..n],
            &m[2][..n],
            &m[3][..n],
            &m[4][..n],
            &m[5][..n],
        );
        let (y1, y2, y3) = (&mut y1[..n], &mut y2[..n], &mut y3[..n]);
        for i in 0..n {
            let (p, q) = (m1[i] + m2[i], m1[i] - m2[i]);
            let (r, s) = (m3[i] + m4[i], m3[i] - m4[i]);
            y0[i] = m0[i] + p + r;
            y1[i] = q + 2.0 * s;
            y2[i] = p + 4.0 * r;
            y3[i] = q + 8.0 * s + m5[i];
        }
    }
}

/// The weights `U = G g Gᵀ` as A² matrices `U[ξ]` (Co × Ci, row stride A²·Ci), ξ = A·i + j:
/// per output channel o, the A² rows `U[ξ][o]` back to back (each channel's block written
/// by one task, in cache).
fn weights<T: Algorithm<S, A>, const S: usize, const A: usize>(
    w: &[f32],
    co: usize,
    ci: usize,
) -> Vec<f32> {
    let mut u = vec![0f32; A * A * co * ci];
    u.par_chunks_mut(A * A * ci)
        .enumerate()
        .for_each(|(o, uo)| {
            for c in 0..ci {
                let g = &w[(o * ci + c) * 9..(o * ci + c) * 9 + 9];
                // G g (A × 3) column by column, then each of its rows times Gᵀ.
                let cols: [[f32; A]; 3] = std::array::from_fn(|k| T::g(g[k], g[3 + k], g[6 + k]));
                for i in 0..A {
                    let row = T::g(cols[0][i], cols[1][i], cols[2][i]);
                    for (j, v) in row.into_iter().enumerate() {
                        uo[(i * A + j) * ci + c] = v;
                    }
                }
            }
        });
    u
}

/// All bands of one convolution with algorithm `T`.
fn run_bands<T: Algorithm<S, A>, const S: usize, const A: usize>(
    x: &[f32],
    wt: &[f32],
    p: &WinogradConv<'_>,
    out: &mut [f32],
) {
    let (th, tw) = (p.h.div_ceil(S), p.w.div_ceil(S));
    let u = weights::<T, S, A>(wt, p.co, p.ci);
    let nband = bands(p.b, th, tw, rayon::current_num_threads());
    let run = WinogradRun {
        p,
        x,
        u: &u,
        out: SyncPtr(out.as_mut_ptr()),
    };
    let avx2 = simd::available();
    (0..p.b * nband).into_par_iter().for_each(|task| {
        let (bi, band) = (task / nband, task % nband);
        // Tile rows split as evenly as whole rows allow.
        let ty0 = band * th / nband;
        let nty = (band + 1) * th / nband - ty0;
        // The scratch is taken out here, not inside the band: a closure passed to the
        // thread-local's `with` is compiled on its own, without the AVX2 of `band_avx2`.
        with_scratch(scratch_sizes::<S, A>(p, ty0, nty).iter().sum(), |buf| {
            if avx2 {
                unsafe { band_avx2::<T, S, A>(&run, bi, ty0, nty, buf) }
            } else {
                winograd_band::<T, S, A>(&run, bi, ty0, nty, buf)
            }
        })
    });
}

/// The scratch of the band of tile rows `ty0 .. ty0 + nty`, in floats: V, M, the
/// row-transformed input rows, the row phases, the column-transformed outputs and, with the
/// fused 1x1, the conv's output rows.
fn scratch_sizes<const S: usize, const A: usize>(
    p: &WinogradConv<'_>,
    ty0: usize,
    nty: usize,
) -> [usize; 6] {
    let tw = p.w.div_ceil(S);
    let nt = nty * tw;
    let np = ((S * (ty0 + nty)).min(p.h) - S * ty0) * p.w;
    [
        A * A * p.ci * nt,
        A * A * p.co * nt,
        (S * nty + 2) * A * tw, // input rows S·ty0 - 1 .. S·(ty0 + nty)
        S * (tw + 1),
        S * A * tw,
        if p.then_1x1.is_some() { p.co * np } else { 0 },
    ]
}

/// [`winograd_band`] compiled for AVX2 + FMA (its loops vectorise 8 wide).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn band_avx2<T: Algorithm<S, A>, const S: usize, const A: usize>(
    run: &WinogradRun<'_>,
    bi: usize,
    ty0: usize,
    nty: usize,
    buf: &mut [f32],
) {
    winograd_band::<T, S, A>(run, bi, ty0, nty, buf)
}

/// `N` slices of `len` floats at `start`, `start + stride`, … of `buf` (`stride >= len`).
fn rows_mut<const N: usize>(
    buf: &mut [f32],
    start: usize,
    stride: usize,
    len: usize,
) -> [&mut [f32]; N] {
    let mut it = buf[start..].chunks_mut(stride).map(|c| &mut c[..len]);
    std::array::from_fn(|_| it.next().expect("rows within the buffer"))
}

/// Tile rows `ty0 .. ty0 + nty` of image `bi` (output rows `S·ty0 ..`), in `buf`
/// ([`scratch_sizes`]).
#[inline(always)]
fn winograd_band<T: Algorithm<S, A>, const S: usize, const A: usize>(
    run: &WinogradRun<'_>,
    bi: usize,
    ty0: usize,
    nty: usize,
    buf: &mut [f32],
) {
    let WinogradRun { p, x, u, out: optr } = *run;
    let WinogradConv { ci, co, h, w, .. } = *p;
    let tw = w.div_ceil(S);
    let npix = h * w;
    let co_out = p.then_1x1.map_or(co, |(w2, _)| w2.len() / co);
    let nt = nty * tw;
    let (oy0, oy1) = (S * ty0, (S * (ty0 + nty)).min(h));
    let np = (oy1 - oy0) * w;
    let fused = p.then_1x1.is_some();
    let sizes = scratch_sizes::<S, A>(p, ty0, nty);
    let (v, rest) = buf.split_at_mut(sizes[0]);
    let (m, rest) = rest.split_at_mut(sizes[1]);
    let (rt, rest) = rest.split_at_mut(sizes[2]);
    let (q, rest) = rest.split_at_mut(sizes[3]);
    let (sbuf, ybuf) = rest.split_at_mut(sizes[4]);
    let xb = &x[bi * ci * npix..(bi + 1) * ci * npix];
    // Input transform.
    for c in 0..ci {
        let plane = &xb[c * npix..(c + 1) * npix];
        // Row transform of each input row. Tile tx reads entries S·tx .. S·tx + A - 1
        // of the zero-padded row xpad (xpad[i] = x[i - 1]); as S phases of tw + 1
        // entries, Q_k[t] = xpad[S·t + k], its input k is Q_(k mod S)[tx + k div S].
        for (r, rrow) in rt.chunks_exact_mut(A * tw).enumerate() {
            let y = (S * ty0 + r) as isize - 1;
            if y < 0 || y >= h as isize {
                rrow.fill(0.0);
                continue;
            }
            let src = &plane[y as usize * w..(y as usize + 1) * w];
            // x[S·t + k] = xpad[S·t + k + 1], by whole tiles; then the last, partial
            // one and the zeros around the row.
            let whole = w / S;
            for (t, tile) in src.chunks_exact(S).enumerate() {
                for (k, &val) in tile.iter().enumerate() {
                    q[((k + 1) % S) * (tw + 1) + t + (k + 1) / S] = val;
                }
            }
            q[0] = 0.0;
            for at in S * whole + 1..S * (tw + 1) {
                q[(at % S) * (tw + 1) + at / S] = src.get(at - 1).copied().unwrap_or(0.0);
            }
            if p.relu_in {
                q.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let d = std::array::from_fn(|k| {
                let at = (k % S) * (tw + 1) + k / S;
                &q[at..at + tw]
            });
            T::bt(d, rows_mut(rrow, 0, tw, tw));
        }
        // Column transform: rows S·t .. S·t + A - 1 of the row-transformed band, per
        // column component j, into V[A·i + j].
        for t in 0..nty {
            for j in 0..A {
                let d = std::array::from_fn(|k| {
                    let at = ((S * t + k) * A + j) * tw;
                    &rt[at..at + tw]
                });
                let start = (j * ci + c) * nt + t * tw;
                T::bt(d, rows_mut(v, start, A * ci * nt, tw));
            }
        }
    }
    // A² GEMMs.
    for xi in 0..A * A {
        unsafe {
            sgemm(
                (co, nt, ci),
                Mat::rows(m.as_mut_ptr().add(xi * co * nt), nt),
                false,
                Mat::rows(u.as_ptr().add(xi * ci), A * A * ci),
                Mat::rows(v.as_ptr().add(xi * ci * nt), nt),
                1.0,
            )
        };
    }
    // Output transform: per column component j, S_r,j = Aᵀ over the rows i of M[A·i +
    // j]; then per output row r, Aᵀ over the S_r,j gives the S output columns of every
    // tile.
    let ob = unsafe { optr.get().add(bi * co_out * npix + oy0 * w) };
    let (yb, ys) = if fused {
        (ybuf.as_mut_ptr(), np)
    } else {
        (ob, npix)
    };
    let add = p.accumulate && !fused;
    let full = w / S;
    for o in 0..co {
        let bv = p.bias.map_or(0.0, |bv| bv[o]);
        for t in 0..nty {
            for j in 0..A {
                let mm = std::array::from_fn(|i| {
                    let at = ((A * i + j) * co + o) * nt + t * tw;
                    &m[at..at + tw]
                });
                T::at(mm, rows_mut(sbuf, j * tw, A * tw, tw));
            }
            for r in 0..S {
                let y = S * t + r;
                if oy0 + y >= oy1 {
                    break;
                }
                let dst = unsafe { std::slice::from_raw_parts_mut(yb.add(o * ys + y * w), w) };
                // The S output columns of every tile, in `rt` (free again by now).
                let sr = std::array::from_fn(|j| &sbuf[(r * A + j) * tw..(r * A + j + 1) * tw]);
                T::at(sr, rows_mut(rt, 0, tw, tw));
                let (tiles, tail) = dst.split_at_mut(S * full);
                for k in 0..S {
                    let yk = &rt[k * tw..k * tw + full];
                    let col = tiles.iter_mut().skip(k).step_by(S);
                    if add {
                        col.zip(yk).for_each(|(d, y)| *d += y + bv);
                    } else {
                        col.zip(yk).for_each(|(d, y)| *d = y + bv);
                    }
                }
                for (k, d) in tail.iter_mut().enumerate() {
                    let y = rt[k * tw + full] + bv;
                    *d = if add { *d + y } else { y };
                }
            }
        }
    }
    if let Some(w2b2) = p.then_1x1 {
        unsafe { relu_then_1x1(ybuf, np, w2b2, ob, npix) };
    }
}

#[cfg(test)]
mod tests {
    use super::Tile;
    use crate::model::cpu::conv::Conv2dOp;
    use crate::testing::{max_rel_err, rand};
    use crate::tuning::Tuning;
    use candle_core::Tensor;

    #[test]
    fn bands_share_the_work_evenly() {
        use super::bands;
        // DA3-SMALL's 108x144 map by F(4x4): 27 x 36 tiles, one image, two threads.
        assert_eq!(bands(1, 27, 36, 2), 8);
        // 14 x 18 tiles (27x36 by F(2x2)): room for three bands of 64+, two share evenly.
        assert_eq!(bands(1, 14, 18, 2), 2);
        // Four images already share evenly; one tile row is the least a band has.
        assert_eq!(bands(4, 3, 100, 2), 3);
        assert_eq!(bands(1, 1, 10, 2), 1);
        for (b, th, tw, t) in [(1, 27, 36, 2), (3, 95, 126, 2), (1, 7, 9, 4), (2, 50, 3, 3)] {
            let n = bands(b, th, tw, t);
            assert!(
                (1..=th).contains(&n) && n <= 4 * t,
                "{b} {th} {tw} {t}: {n}"
            );
        }
    }

    #[test]
    fn winograd_conv_matches_candle() {
        // 16+ channels (the Winograd path's minimum), odd and even sizes, one-pixel maps,
        // several bands per image (the last two); with bias, input ReLU + residual, and the
        // fused 1x1; both tiles.
        for (ci, co, h, w) in [
            (16usize, 16usize, 9usize, 11usize),
            (17, 20, 1, 1),
            (16, 18, 2, 3),
            (20, 16, 37, 53),
            (16, 32, 64, 6),
            (16, 16, 70, 40),
        ] {
            let x = rand(&[2, ci, h, w], 70);
            let wt = rand(&[co, ci, 3, 3], 71);
            let b = rand(&[co], 72);
            let r = rand(&[2, co, h, w], 73);
            let w2 = rand(&[3, co, 1, 1], 74);
            let b2 = rand(&[3], 75);
            let conv = |x: &Tensor| x.conv2d(&wt, 1, 1, 1, 1).unwrap();
            let plus_b = |y: Tensor| y.broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap();
            for tile in [Tile::F2, Tile::F4] {
                let op = |with_bias: bool, relu_in, residual, then_1x1| Conv2dOp {
                    weight: &wt,
                    bias: with_bias.then_some(&b),
                    stride: 1,
                    padding: 1,
                    relu_in,
                    residual,
                    then_1x1,
                    by_rows: true,
                    winograd: Some(tile),
                    col_band: Tuning::DEFAULT.col_band,
                    row_band: Tuning::DEFAULT.row_band,
                };
                let cases: [(Conv2dOp, Tensor); 4] = [
                    (op(true, false, None, None), plus_b(conv(&x))),
                    (op(false, false, None, None), conv(&x)),
                    (
                        op(true, true, Some(&r), None),
                        (plus_b(conv(&x.relu().unwrap())) + &r).unwrap(),
                    ),
                    (
                        op(
                            true,
                            false,
                            None,
                            Some((
                                w2.flatten_all().unwrap().to_vec1().unwrap(),
                                Some(b2.to_vec1().unwrap()),
                            )),
                        ),
                        plus_b(conv(&x))
                            .relu()
                            .unwrap()
                            .conv2d(&w2, 0, 1, 1, 1)
                            .unwrap()
                            .broadcast_add(&b2.reshape((1, 3, 1, 1)).unwrap())
                            .unwrap(),
                    ),
                ];
                for (i, (op, want)) in cases.iter().enumerate() {
                    let got = x.apply_op1_no_bwd(op).unwrap();
                    assert_eq!(got.dims(), want.dims(), "case {i}, {ci}->{co} {h}x{w}");
                    let e = max_rel_err(&got, want);
                    assert!(e < 1e-5, "{tile:?} case {i}, {ci}->{co} {h}x{w}: {e}");
                }
            }
        }
    }
}
