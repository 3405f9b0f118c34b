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

/// Winograd F(2x2, 3x3) weights `U = G g Gᵀ`, as 16 matrices `U[ξ]` (Co × Ci, row stride
/// 16·Ci), ξ = 4i + j: per output channel o, the 16 rows `U[ξ][o]` back to back (each
/// channel's block written by one task, in cache).
fn winograd_weights(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * co * ci];
    u.par_chunks_mut(16 * ci).enumerate().for_each(|(o, uo)| {
        for c in 0..ci {
            let g = &w[(o * ci + c) * 9..(o * ci + c) * 9 + 9];
            // t = G g (4 × 3), G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]
            let mut t = [[0f32; 3]; 4];
            for k in 0..3 {
                let (g0, g1, g2) = (g[k], g[3 + k], g[6 + k]);
                t[0][k] = g0;
                t[1][k] = 0.5 * (g0 + g1 + g2);
                t[2][k] = 0.5 * (g0 - g1 + g2);
                t[3][k] = g2;
            }
            for (i, r) in t.iter().enumerate() {
                let row = [
                    r[0],
                    0.5 * (r[0] + r[1] + r[2]),
                    0.5 * (r[0] - r[1] + r[2]),
                    r[2],
                ];
                for (j, v) in row.into_iter().enumerate() {
                    uo[(i * 4 + j) * ci + c] = v;
                }
            }
        }
    });
    u
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
    let f4 = tile == Tile::F4;
    let size = if f4 { 4 } else { 2 };
    let th = p.h.div_ceil(size);
    let tw = p.w.div_ceil(size);
    let u = if f4 {
        winograd4_weights(wt, p.co, p.ci)
    } else {
        winograd_weights(wt, p.co, p.ci)
    };
    let nband = bands(p.b, th, tw, rayon::current_num_threads());
    let run = WinogradRun {
        p: &p,
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
        match (f4, avx2) {
            (true, true) => unsafe { winograd4_band_avx2(&run, bi, ty0, nty) },
            (true, false) => winograd4_band(&run, bi, ty0, nty),
            (false, true) => unsafe { winograd_band_avx2(&run, bi, ty0, nty) },
            (false, false) => winograd_band(&run, bi, ty0, nty),
        }
    });
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
    /// The transformed weights ([`winograd_weights`]).
    u: &'a [f32],
    /// The output (the tasks' output rows are disjoint).
    out: SyncPtr,
}

/// [`winograd_band`] compiled for AVX2 + FMA (its loops vectorise 8 wide).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn winograd_band_avx2(run: &WinogradRun<'_>, bi: usize, ty0: usize, nty: usize) {
    winograd_band(run, bi, ty0, nty)
}

/// Tile rows `ty0 .. ty0 + nty` of image `bi` (output rows `2·ty0 ..`).
#[inline(always)]
fn winograd_band(run: &WinogradRun<'_>, bi: usize, ty0: usize, nty: usize) {
    let WinogradRun { p, x, u, out: optr } = *run;
    let WinogradConv { ci, co, h, w, .. } = *p;
    let tw = w.div_ceil(2);
    let npix = h * w;
    let co_out = p.then_1x1.map_or(co, |(w2, _)| w2.len() / co);
    let nt = nty * tw;
    let (oy0, oy1) = (2 * ty0, (2 * (ty0 + nty)).min(h));
    let np = (oy1 - oy0) * w;
    let nrt = 2 * nty + 2; // input rows 2·ty0 - 1 .. 2·(ty0 + nty)
    let fused = p.then_1x1.is_some();
    let sizes = [
        16 * ci * nt,
        16 * co * nt,
        nrt * 4 * tw,
        2 * (tw + 1),
        8 * tw,
        if fused { co * np } else { 0 },
    ];
    with_scratch(sizes.iter().sum(), |buf| {
        let (v, rest) = buf.split_at_mut(sizes[0]);
        let (m, rest) = rest.split_at_mut(sizes[1]);
        let (rt, rest) = rest.split_at_mut(sizes[2]);
        let (eo, rest) = rest.split_at_mut(sizes[3]);
        let (sbuf, ybuf) = rest.split_at_mut(sizes[4]);
        let xb = &x[bi * ci * npix..(bi + 1) * ci * npix];
        // Input transform.
        for c in 0..ci {
            let plane = &xb[c * npix..(c + 1) * npix];
            // Row transform of each input row: for tile tx, with a, b, c, d = x[2tx-1 ..
            // 2tx+2] = E[tx], O[tx], E[tx+1], O[tx+1] (E, O: even / odd entries of the
            // zero-padded row): (a - c, b + c, c - b, b - d).
            for (r, rrow) in rt.chunks_exact_mut(4 * tw).enumerate() {
                let y = (2 * ty0 + r) as isize - 1;
                if y < 0 || y >= h as isize {
                    rrow.fill(0.0);
                    continue;
                }
                let src = &plane[y as usize * w..(y as usize + 1) * w];
                let (e, o) = eo.split_at_mut(tw + 1);
                // E[t] = x[2t - 1], O[t] = x[2t]; zero outside the row (E[0], O[tw], and
                // E[tw] when w is odd: the last pair is a single value).
                e[0] = 0.0;
                o[tw] = 0.0;
                for (t, pair) in src.chunks(2).enumerate() {
                    o[t] = pair[0];
                    e[t + 1] = pair.get(1).copied().unwrap_or(0.0);
                }
                if p.relu_in {
                    eo.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                let (e, o) = eo.split_at(tw + 1);
                let (r0, rr) = rrow.split_at_mut(tw);
                let (r1, rr) = rr.split_at_mut(tw);
                let (r2, r3) = rr.split_at_mut(tw);
                let (e0, e1, o0, o1) = (&e[..tw], &e[1..=tw], &o[..tw], &o[1..=tw]);
                for i in 0..tw {
                    r0[i] = e0[i] - e1[i];
                    r1[i] = o0[i] + e1[i];
                    r2[i] = e1[i] - o0[i];
                    r3[i] = o0[i] - o1[i];
                }
            }
            // Column transform: rows 2t .. 2t+3 of the row-transformed band.
            for t in 0..nty {
                for j in 0..4 {
                    let row = |k: usize| {
                        let at = ((2 * t + k) * 4 + j) * tw;
                        &rt[at..at + tw]
                    };
                    let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
                    let at = |i: usize| ((i * 4 + j) * ci + c) * nt + t * tw;
                    let (v0, v1, v2, v3) = (at(0), at(1), at(2), at(3));
                    for (i, d) in d0.iter().zip(d2).enumerate() {
                        v[v0 + i] = d.0 - d.1;
                    }
                    let (a, rest) = v[v1..].split_at_mut(v2 - v1);
                    let (bq, rest) = rest.split_at_mut(v3 - v2);
                    let (a, bq, cq) = (&mut a[..tw], &mut bq[..tw], &mut rest[..tw]);
                    for i in 0..tw {
                        a[i] = d1[i] + d2[i];
                        bq[i] = d2[i] - d1[i];
                        cq[i] = d1[i] - d3[i];
                    }
                }
            }
        }
        // 16 GEMMs.
        for xi in 0..16 {
            unsafe {
                sgemm(
                    (co, nt, ci),
                    Mat::rows(m.as_mut_ptr().add(xi * co * nt), nt),
                    false,
                    Mat::rows(u.as_ptr().add(xi * ci), 16 * ci),
                    Mat::rows(v.as_ptr().add(xi * ci * nt), nt),
                    1.0,
                )
            };
        }
        // Output transform, Aᵀ = [1 1 1 0; 0 1 -1 -1]: per row i of M, S_i0 = m_i0 + m_i1 +
        // m_i2 and S_i1 = m_i1 - m_i2 - m_i3; then y_0k = S_0k + S_1k + S_2k and y_1k =
        // S_1k - S_2k - S_3k.
        let ob = unsafe { optr.get().add(bi * co_out * npix + oy0 * w) };
        let (yb, ys) = if fused {
            (ybuf.as_mut_ptr(), np)
        } else {
            (ob, npix)
        };
        let add = p.accumulate && !fused;
        for o in 0..co {
            let bv = p.bias.map_or(0.0, |bv| bv[o]);
            for t in 0..nty {
                let mm = |xi: usize| {
                    let at = (xi * co + o) * nt + t * tw;
                    &m[at..at + tw]
                };
                for i in 0..4 {
                    let (m0, m1, m2, m3) = (mm(4 * i), mm(4 * i + 1), mm(4 * i + 2), mm(4 * i + 3));
                    let (s0, s1) = sbuf[2 * i * tw..(2 * i + 2) * tw].split_at_mut(tw);
                    for k in 0..tw {
                        s0[k] = m0[k] + m1[k] + m2[k];
                        s1[k] = m1[k] - m2[k] - m3[k];
                    }
                }
                for r in 0..2 {
                    let y = 2 * t + r;
                    if oy0 + y >= oy1 {
                        break;
                    }
                    let dst = unsafe { std::slice::from_raw_parts_mut(yb.add(o * ys + y * w), w) };
                    let sr = |i: usize, k: usize| &sbuf[(2 * i + k) * tw..(2 * i + k + 1) * tw];
                    // Even and odd output columns, in `rt` (free again by now).
                    let (ye, yo) = rt[..2 * tw].split_at_mut(tw);
                    for (k, yk) in [ye, yo].into_iter().enumerate() {
                        let (a0, a1, a2, a3) = (sr(0, k), sr(1, k), sr(2, k), sr(3, k));
                        if r == 0 {
                            for i in 0..tw {
                                yk[i] = a0[i] + a1[i] + a2[i] + bv;
                            }
                        } else {
                            for i in 0..tw {
                                yk[i] = a1[i] - a2[i] - a3[i] + bv;
                            }
                        }
                    }
                    let (ye, yo) = rt[..2 * tw].split_at(tw);
                    let (pairs, tail) = dst.split_at_mut(w / 2 * 2);
                    if add {
                        for (d, (e, o)) in pairs.chunks_exact_mut(2).zip(ye.iter().zip(yo)) {
                            d[0] += e;
                            d[1] += o;
                        }
                        if let Some(d) = tail.first_mut() {
                            *d += ye[tw - 1];
                        }
                    } else {
                        for (d, (e, o)) in pairs.chunks_exact_mut(2).zip(ye.iter().zip(yo)) {
                            d[0] = *e;
                            d[1] = *o;
                        }
                        if let Some(d) = tail.first_mut() {
                            *d = ye[tw - 1];
                        }
                    }
                }
            }
        }
        if let Some(w2b2) = p.then_1x1 {
            unsafe { relu_then_1x1(ybuf, np, w2b2, ob, npix) };
        }
    });
}

/// Winograd F(4x4, 3x3) weights `U = G g Gᵀ` as 36 matrices `U[ξ]` (Co × Ci, row stride
/// 36·Ci), ξ = 6i + j, laid out as [`winograd_weights`]'s, with
/// G = [¼ 0 0; -⅙ -⅙ -⅙; -⅙ ⅙ -⅙; 1/24 1/12 ⅙; 1/24 -1/12 ⅙; 0 0 1].
fn winograd4_weights(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let g6 = |a: f32, b: f32, c: f32| {
        [
            0.25 * a,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            a / 24.0 + b / 12.0 + c / 6.0,
            a / 24.0 - b / 12.0 + c / 6.0,
            c,
        ]
    };
    let mut u = vec![0f32; 36 * co * ci];
    u.par_chunks_mut(36 * ci).enumerate().for_each(|(o, uo)| {
        for c in 0..ci {
            let g = &w[(o * ci + c) * 9..(o * ci + c) * 9 + 9];
            // t = G g (6 × 3), column by column; then each row of t times Gᵀ.
            let cols: [[f32; 6]; 3] = std::array::from_fn(|k| g6(g[k], g[3 + k], g[6 + k]));
            for i in 0..6 {
                let row = g6(cols[0][i], cols[1][i], cols[2][i]);
                for (j, v) in row.into_iter().enumerate() {
                    uo[(i * 6 + j) * ci + c] = v;
                }
            }
        }
    });
    u
}

/// `Bᵀ d` of F(4x4, 3x3) for six vectors d0..d5, elementwise into `r[0..6]`:
/// Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
/// 0 4 0 -5 0 1].
#[inline(always)]
fn bt6(d: [&[f32]; 6], r: [&mut [f32]; 6]) {
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
        let (a, b, c, e, f) = (d1[i], d2[i], d3[i], d4[i], d5[i]);
        let s = e - 4.0 * b; // d4 - 4 d2
        let t = c - 4.0 * a; // d3 - 4 d1
        let u = e - b; // d4 - d2
        let v = 2.0 * (c - a); // 2 (d3 - d1)
        r0[i] = 4.0 * d0[i] - 5.0 * b + e;
        r1[i] = s + t;
        r2[i] = s - t;
        r3[i] = u + v;
        r4[i] = u - v;
        r5[i] = 4.0 * a - 5.0 * c + f;
    }
}

/// `Aᵀ m` of F(4x4, 3x3) for six vectors m0..m5, elementwise into `y[0..4]`:
/// Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
#[inline(always)]
fn at6(m: [&[f32]; 6], y: [&mut [f32]; 4]) {
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

/// [`winograd4_band`] compiled for AVX2 + FMA (its loops vectorise 8 wide).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn winograd4_band_avx2(run: &WinogradRun<'_>, bi: usize, ty0: usize, nty: usize) {
    winograd4_band(run, bi, ty0, nty)
}

/// F(4x4, 3x3): tile rows `ty0 .. ty0 + nty` of image `bi` (output rows `4·ty0 ..`). Each
/// 4x4 output tile from a 6x6 input tile in 36 multiplies per channel pair (2.25 per output
/// against F(2x2)'s 4 and the direct sum's 9).
#[inline(always)]
fn winograd4_band(run: &WinogradRun<'_>, bi: usize, ty0: usize, nty: usize) {
    let WinogradRun { p, x, u, out: optr } = *run;
    let WinogradConv { ci, co, h, w, .. } = *p;
    let tw = w.div_ceil(4);
    let npix = h * w;
    let co_out = p.then_1x1.map_or(co, |(w2, _)| w2.len() / co);
    let nt = nty * tw;
    let (oy0, oy1) = (4 * ty0, (4 * (ty0 + nty)).min(h));
    let np = (oy1 - oy0) * w;
    let nrt = 4 * nty + 2; // input rows 4·ty0 - 1 .. 4·(ty0 + nty)
    let fused = p.then_1x1.is_some();
    let sizes = [
        36 * ci * nt,
        36 * co * nt,
        nrt * 6 * tw,
        4 * (tw + 2),
        24 * tw,
        if fused { co * np } else { 0 },
    ];
    with_scratch(sizes.iter().sum(), |buf| {
        let (v, rest) = buf.split_at_mut(sizes[0]);
        let (m, rest) = rest.split_at_mut(sizes[1]);
        let (rt, rest) = rest.split_at_mut(sizes[2]);
        let (xr, rest) = rest.split_at_mut(sizes[3]);
        let (sbuf, ybuf) = rest.split_at_mut(sizes[4]);
        let xb = &x[bi * ci * npix..(bi + 1) * ci * npix];
        // Input transform.
        for c in 0..ci {
            let plane = &xb[c * npix..(c + 1) * npix];
            // Row transform of each input row: tile tx reads the zero-padded row's
            // entries 4tx .. 4tx+5, i.e. x[4tx-1 .. 4tx+4]: the phases P_k[tx] = xpad[4tx+k]
            // (P_4, P_5 are P_0, P_1 one tile on).
            for (r, rrow) in rt.chunks_exact_mut(6 * tw).enumerate() {
                let y = (4 * ty0 + r) as isize - 1;
                if y < 0 || y >= h as isize {
                    rrow.fill(0.0);
                    continue;
                }
                let src = &plane[y as usize * w..(y as usize + 1) * w];
                // xr: the four phases, tw + 1 entries each.
                let (q0, rest) = xr.split_at_mut(tw + 2);
                let (q1, rest) = rest.split_at_mut(tw + 2);
                let (q2, q3) = rest.split_at_mut(tw + 2);
                q0[0] = 0.0;
                for (t, quad) in src.chunks(4).enumerate() {
                    // xpad[4t + 1 ..= 4t + 4] = x[4t .. 4t + 3]
                    let at = |k: usize| quad.get(k).copied().unwrap_or(0.0);
                    q1[t] = at(0);
                    q2[t] = at(1);
                    q3[t] = at(2);
                    q0[t + 1] = at(3);
                }
                let full = w.div_ceil(4);
                for q in [&mut *q1, &mut *q2, &mut *q3] {
                    q[full..=tw].fill(0.0);
                }
                q0[full + 1..=tw].fill(0.0);
                if p.relu_in {
                    xr.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                let (q0, rest) = xr.split_at(tw + 2);
                let (q1, rest) = rest.split_at(tw + 2);
                let (q2, q3) = rest.split_at(tw + 2);
                let d = [
                    &q0[..tw],
                    &q1[..tw],
                    &q2[..tw],
                    &q3[..tw],
                    &q0[1..=tw],
                    &q1[1..=tw],
                ];
                bt6(d, rows_mut(rrow, 0, tw, tw));
            }
            // Column transform: rows 4t .. 4t+5 of the row-transformed band, per column
            // component j, into V[6i + j].
            for t in 0..nty {
                for j in 0..6 {
                    let row = |k: usize| {
                        let at = ((4 * t + k) * 6 + j) * tw;
                        &rt[at..at + tw]
                    };
                    let d = [row(0), row(1), row(2), row(3), row(4), row(5)];
                    let start = (j * ci + c) * nt + t * tw;
                    bt6(d, rows_mut(v, start, 6 * ci * nt, tw));
                }
            }
        }
        // 36 GEMMs.
        for xi in 0..36 {
            unsafe {
                sgemm(
                    (co, nt, ci),
                    Mat::rows(m.as_mut_ptr().add(xi * co * nt), nt),
                    false,
                    Mat::rows(u.as_ptr().add(xi * ci), 36 * ci),
                    Mat::rows(v.as_ptr().add(xi * ci * nt), nt),
                    1.0,
                )
            };
        }
        // Output transform: per column component j, S[r][j] = Aᵀ over the six rows i of
        // M[6i + j]; then per output row r, Y = Aᵀ over the six S[r][j], the four output
        // columns of each tile.
        let ob = unsafe { optr.get().add(bi * co_out * npix + oy0 * w) };
        let (yb, ys) = if fused {
            (ybuf.as_mut_ptr(), np)
        } else {
            (ob, npix)
        };
        let add = p.accumulate && !fused;
        let full = w / 4;
        for o in 0..co {
            let bv = p.bias.map_or(0.0, |bv| bv[o]);
            for t in 0..nty {
                for j in 0..6 {
                    let mm = |i: usize| {
                        let at = ((6 * i + j) * co + o) * nt + t * tw;
                        &m[at..at + tw]
                    };
                    at6(
                        [mm(0), mm(1), mm(2), mm(3), mm(4), mm(5)],
                        rows_mut(sbuf, j * tw, 6 * tw, tw),
                    );
                }
                for r in 0..4 {
                    let y = 4 * t + r;
                    if oy0 + y >= oy1 {
                        break;
                    }
                    let dst = unsafe { std::slice::from_raw_parts_mut(yb.add(o * ys + y * w), w) };
                    let sr = |j: usize| &sbuf[(r * 6 + j) * tw..(r * 6 + j + 1) * tw];
                    // The four output columns of every tile, in `rt` (free again by now).
                    at6(
                        [sr(0), sr(1), sr(2), sr(3), sr(4), sr(5)],
                        rows_mut(rt, 0, tw, tw),
                    );
                    let yk = |k: usize| &rt[k * tw..(k + 1) * tw];
                    let (y0, y1, y2, y3) = (yk(0), yk(1), yk(2), yk(3));
                    let (quads, tail) = dst.split_at_mut(4 * full);
                    if add {
                        for (i, d) in quads.chunks_exact_mut(4).enumerate() {
                            d[0] += y0[i] + bv;
                            d[1] += y1[i] + bv;
                            d[2] += y2[i] + bv;
                            d[3] += y3[i] + bv;
                        }
                        for (k, d) in tail.iter_mut().enumerate() {
                            *d += yk(k)[full] + bv;
                        }
                    } else {
                        for (i, d) in quads.chunks_exact_mut(4).enumerate() {
                            d[0] = y0[i] + bv;
                            d[1] = y1[i] + bv;
                            d[2] = y2[i] + bv;
                            d[3] = y3[i] + bv;
                        }
                        for (k, d) in tail.iter_mut().enumerate() {
                            *d = yk(k)[full] + bv;
                        }
                    }
                }
            }
        }
        if let Some(w2b2) = p.then_1x1 {
            unsafe { relu_then_1x1(ybuf, np, w2b2, ob, npix) };
        }
    });
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
