//! 3x3 stride-1 pad-1 convolutions by Winograd F(2x2, 3x3), with the same fusions as the
//! other convolutions (input ReLU, residual, ReLU + 1x1 after).

use rayon::prelude::*;

use super::buffers::{chunk_len, sgemm, with_scratch, Mat, SyncPtr};
use super::conv::relu_then_1x1;
use super::simd;

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

/// Winograd F(2x2, 3x3) weights `U = G g Gᵀ`, as 16 matrices `U[ξ]` (Co × Ci), ξ = 4i + j.
fn winograd_weights(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * co * ci];
    for o in 0..co {
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
                    u[((i * 4 + j) * co + o) * ci + c] = v;
                }
            }
        }
    }
    u
}

/// 3x3 convolution, stride 1, padding 1, by Winograd F(2x2, 3x3): each 2x2 output tile
/// from a 4x4 input tile in 16 multiplies per (input, output) channel pair instead of 36.
/// Per band of tile rows: input transform `V = Bᵀ d B` into 16 matrices (Ci × tiles), 16
/// GEMMs `M[ξ] = U[ξ] · V[ξ]`, output transform `Y = Aᵀ M A` (+ bias, residual, or the
/// fused ReLU + 1x1). Rounding differs from the direct sum by a few ulps.
pub(super) fn winograd_conv(x: &[f32], wt: &[f32], p: WinogradConv<'_>, out: &mut [f32]) {
    let th = p.h.div_ceil(2);
    let tw = p.w.div_ceil(2);
    let u = winograd_weights(wt, p.co, p.ci);
    // Bands of whole tile rows, at least ~512 tiles for the GEMMs' sake.
    let rows = chunk_len(th, 1).max(512usize.div_ceil(tw)).min(th);
    let nband = th.div_ceil(rows);
    let run = WinogradRun {
        p: &p,
        x,
        u: &u,
        out: SyncPtr(out.as_mut_ptr()),
    };
    let avx2 = simd::available();
    (0..p.b * nband).into_par_iter().for_each(|task| {
        let (bi, band) = (task / nband, task % nband);
        let ty0 = band * rows;
        let nty = rows.min(th - ty0);
        if avx2 {
            unsafe { winograd_band_avx2(&run, bi, ty0, nty) }
        } else {
            winograd_band(&run, bi, ty0, nty)
        }
    });
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
                    Mat::rows(u.as_ptr().add(xi * co * ci), ci),
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

#[cfg(test)]
mod tests {
    use crate::model::cpu::conv::Conv2dOp;
    use crate::testing::{max_rel_err, rand};
    use crate::tuning::Tuning;
    use candle_core::Tensor;

    #[test]
    fn winograd_conv_matches_candle() {
        // 16+ channels (the Winograd path's minimum), odd and even sizes, one-pixel maps,
        // several bands per image; with bias, input ReLU + residual, and the fused 1x1.
        for (ci, co, h, w) in [
            (16usize, 16usize, 9usize, 11usize),
            (17, 20, 1, 1),
            (16, 18, 2, 3),
            (20, 16, 37, 53),
            (16, 32, 64, 6),
        ] {
            let x = rand(&[2, ci, h, w], 70);
            let wt = rand(&[co, ci, 3, 3], 71);
            let b = rand(&[co], 72);
            let r = rand(&[2, co, h, w], 73);
            let w2 = rand(&[3, co, 1, 1], 74);
            let b2 = rand(&[3], 75);
            let conv = |x: &Tensor| x.conv2d(&wt, 1, 1, 1, 1).unwrap();
            let plus_b = |y: Tensor| y.broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap();
            let op = |with_bias: bool, relu_in, residual, then_1x1| Conv2dOp {
                weight: &wt,
                bias: with_bias.then_some(&b),
                stride: 1,
                padding: 1,
                relu_in,
                residual,
                then_1x1,
                by_rows: true,
                winograd: true,
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
                assert!(e < 1e-5, "case {i}, {ci}->{co} {h}x{w}: {e}");
            }
        }
    }
}
