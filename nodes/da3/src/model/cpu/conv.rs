//! 2-D convolutions as band-wise im2col + GEMM: 1x1 stride-1 straight from the input,
//! stride-1 taller kernels by rows (one GEMM per kernel row), others by full im2col, 3x3
//! with enough channels by Winograd ([`super::winograd`]: F(4x4, 3x3) on large maps,
//! F(2x2, 3x3) on smaller ones); input ReLU, residual add and a following ReLU + 1x1 conv
//! fused per band.

use std::borrow::Cow;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{
    bias_values, chunk_len, contiguous_f32, output_buffer, sgemm, with_f32, with_scratch, Mat,
    SyncPtr,
};
use super::profile::{profiling, timed};
use super::winograd::{tile_for, winograd_conv, Tile, WinogradConv};

pub(super) struct Conv2dOp<'a> {
    pub(super) weight: &'a Tensor, // (Co, Ci, kh, kw), contiguous
    pub(super) bias: Option<&'a Tensor>,
    pub(super) stride: usize,
    pub(super) padding: usize,
    /// ReLU of the input (applied while gathering the columns).
    pub(super) relu_in: bool,
    /// Added to the output (same shape).
    pub(super) residual: Option<&'a Tensor>,
    /// `w2 · relu(y) + b2` of the conv's output `y` as the result (a following ReLU + 1x1
    /// conv computed per band while `y` is in cache; `y` itself is never stored).
    pub(super) then_1x1: Option<(Vec<f32>, Option<Vec<f32>>)>,
    /// Stride-1 kernels taller than 1 by rows ([`row_cols`]) rather than full im2col.
    pub(super) by_rows: bool,
    /// 3x3 stride-1 pad-1 kernels by Winograd with this tile ([`winograd_conv`]; chosen by
    /// [`tile_for`]).
    pub(super) winograd: Option<Tile>,
    /// Target floats in one im2col band (fits in L2 with the weights' panel).
    pub(super) col_band: usize,
    /// Target floats in one by-rows column band.
    pub(super) row_band: usize,
}

impl CustomOp1 for Conv2dOp<'_> {
    fn name(&self) -> &'static str {
        "da3-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-conv2d", s, l)?;
        let (b, ci, ih, iw) = l.shape().dims4()?;
        let (co, wci, kh, kw) = self.weight.dims4()?;
        if wci != ci {
            bail!("da3-conv2d: input has {ci} channels, weight expects {wci}");
        }
        let (st, pad) = (self.stride, self.padding);
        if ih + 2 * pad < kh || iw + 2 * pad < kw {
            bail!("da3-conv2d: input {ih}x{iw} smaller than the kernel");
        }
        let oh = (ih + 2 * pad - kh) / st + 1;
        let ow = (iw + 2 * pad - kw) / st + 1;
        let npix = oh * ow;
        let kk = ci * kh * kw;
        let bias = bias_values(self.bias)?;
        // Channels of the result: the conv's own, or those of the fused 1x1 after it.
        let co_out = match &self.then_1x1 {
            Some((w2, b2)) => {
                let co2 = w2.len() / co.max(1);
                if self.residual.is_some()
                    || co2 == 0
                    || w2.len() != co2 * co
                    || b2.as_ref().is_some_and(|b2| b2.len() != co2)
                {
                    bail!(
                        "da3-conv2d: fused 1x1 of {} weights for {co} channels",
                        w2.len()
                    );
                }
                co2
            }
            None => co,
        };
        let fused = self.then_1x1.is_some();
        let mut out = match self.residual {
            Some(r) => {
                if r.dims() != [b, co, oh, ow] {
                    bail!(
                        "da3-conv2d: residual {:?} does not match the output",
                        r.dims()
                    );
                }
                r.flatten_all()?.to_vec1::<f32>()?
            }
            None => output_buffer(b * co_out * npix),
        };
        let accumulate = self.residual.is_some();
        // (the channel counts are `tile_for`'s to judge)
        let fits = (kh, kw, st, pad) == (3, 3, 1, 1);
        if let Some(tile) = self.winograd.filter(|_| fits) {
            with_f32(self.weight, |w, wl| {
                let w = &w[wl.start_offset()..wl.start_offset() + co * ci * 9];
                winograd_conv(
                    x,
                    w,
                    WinogradConv {
                        b,
                        ci,
                        co,
                        h: ih,
                        w: iw,
                        bias: bias.as_deref(),
                        relu_in: self.relu_in,
                        accumulate,
                        then_1x1: self
                            .then_1x1
                            .as_ref()
                            .map(|(w2, b2)| (&w2[..], b2.as_deref())),
                    },
                    tile,
                    &mut out,
                );
                Ok(())
            })?;
            return Ok((CpuStorage::F32(out), Shape::from((b, co_out, oh, ow))));
        }
        let optr = SyncPtr(out.as_mut_ptr());
        let direct = kh == 1 && kw == 1 && st == 1 && pad == 0 && !self.relu_in;
        // Stride-1 kernels taller than one row: bands of whole output rows, columns
        // gathered for (channel, kx) only, and one GEMM per kernel row ky reading them
        // shifted by ky rows: kh times fewer columns to copy than a full im2col.
        let by_rows = st == 1 && kh > 1 && self.by_rows;
        let band = if direct {
            chunk_len(npix, 256)
        } else if by_rows {
            let per_row = ci * kw * ow;
            let fit = (self.row_band / per_row.max(1))
                .saturating_sub(kh - 1)
                .max(1);
            chunk_len(oh, 1).min(fit) * ow
        } else {
            chunk_len(npix, 64).min((self.col_band / kk).max(64))
        };
        let nband = npix.div_ceil(band);
        let xp = x.as_ptr() as usize;
        with_f32(self.weight, |w, wl| {
            let w = &w[wl.start_offset()..];
            // by rows: the weight as kh matrices (Co × Ci·kw), one per kernel row
            let w_rows: Vec<f32> = if by_rows {
                let mut v = Vec::with_capacity(co * kk);
                for ky in 0..kh {
                    for o in 0..co {
                        for c in 0..ci {
                            let at = ((o * ci + c) * kh + ky) * kw;
                            v.extend_from_slice(&w[at..at + kw]);
                        }
                    }
                }
                v
            } else {
                Vec::new()
            };
            let wp = w.as_ptr() as usize;
            (0..b * nband).into_par_iter().for_each(|task| {
                let (bi, bj) = (task / nband, task % nband);
                let p0 = bj * band;
                let np = band.min(npix - p0);
                let xb = unsafe { (xp as *const f32).add(bi * ci * ih * iw) };
                let ob = unsafe { optr.get().add(bi * co_out * npix + p0) };
                // by rows: input rows y0 - pad .. y0 + nr + kh - 1 - pad, each ow wide
                let rlen = (np / ow.max(1) + kh - 1) * ow;
                let ncols = if direct {
                    0
                } else if by_rows {
                    ci * kw * rlen
                } else {
                    kk * np
                };
                let ny = if fused { co * np } else { 0 };
                with_scratch(ncols + ny, |buf| {
                    let (cols, ybuf) = buf.split_at_mut(ncols);
                    // The conv's output band: straight into the result, or into `ybuf`
                    // (row stride np) when a 1x1 follows.
                    let (yb, ys) = if fused {
                        (ybuf.as_mut_ptr(), np)
                    } else {
                        (ob, npix)
                    };
                    if let Some(bv) = &bias {
                        for (o, bval) in bv.iter().enumerate() {
                            let row = unsafe { std::slice::from_raw_parts_mut(yb.add(o * ys), np) };
                            if accumulate {
                                row.iter_mut().for_each(|v| *v += bval);
                            } else {
                                row.fill(*bval);
                            }
                        }
                    }
                    let acc = accumulate || bias.is_some();
                    if direct {
                        unsafe {
                            sgemm(
                                (co, np, ci),
                                Mat::rows(yb, ys),
                                acc,
                                Mat::rows(wp as *const f32, ci),
                                Mat::rows(xb.add(p0), ih * iw),
                                1.0,
                            )
                        };
                    } else if by_rows {
                        let xs = unsafe { std::slice::from_raw_parts(xb, ci * ih * iw) };
                        let y0 = p0 / ow;
                        row_cols(xs, (ci, ih, iw), (kw, pad), (ow, y0, rlen / ow), cols);
                        if self.relu_in {
                            cols.iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                        let rk = ci * kw;
                        for ky in 0..kh {
                            unsafe {
                                sgemm(
                                    (co, np, rk),
                                    Mat::rows(yb, ys),
                                    acc || ky > 0,
                                    Mat::rows(w_rows.as_ptr().add(ky * co * rk), rk),
                                    Mat::rows(cols.as_ptr().add(ky * ow), rlen),
                                    1.0,
                                )
                            };
                        }
                    } else {
                        let xs = unsafe { std::slice::from_raw_parts(xb, ci * ih * iw) };
                        im2col(xs, (ci, ih, iw), (kh, kw, st, pad), (ow, p0, np), cols);
                        if self.relu_in {
                            cols.iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                        unsafe {
                            sgemm(
                                (co, np, kk),
                                Mat::rows(yb, ys),
                                acc,
                                Mat::rows(wp as *const f32, kk),
                                Mat::rows(cols.as_ptr(), np),
                                1.0,
                            )
                        };
                    }
                    if let Some((w2, b2)) = &self.then_1x1 {
                        unsafe { relu_then_1x1(ybuf, np, (w2, b2.as_deref()), ob, npix) };
                    }
                });
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, co_out, oh, ow))))
    }
}

/// The fused ReLU + 1x1 after a convolution, for one band: `y` holds the band's `np`
/// pixels of each of the conv's Co channels (row stride `np`); output channel `o2` of the
/// 1x1 (`w2` is (O2, Co), `b2` its bias) goes to `ob + o2·npix`, `np` values.
///
/// # Safety
/// `ob + o2·npix .. + np` must be valid, writable and not aliased for every `o2 < O2`.
#[inline(always)] // into the callers' AVX2 code (the Winograd band)
pub(super) unsafe fn relu_then_1x1(
    y: &[f32],
    np: usize,
    (w2, b2): (&[f32], Option<&[f32]>),
    ob: *mut f32,
    npix: usize,
) {
    let co = y.len() / np.max(1);
    for (o2, w2row) in w2.chunks_exact(co.max(1)).enumerate() {
        let z = std::slice::from_raw_parts_mut(ob.add(o2 * npix), np);
        z.fill(b2.map_or(0.0, |b2| b2[o2]));
        for (yrow, wv) in y.chunks(np).zip(w2row) {
            for (zv, yv) in z.iter_mut().zip(yrow) {
                *zv += wv * yv.max(0.0);
            }
        }
    }
}

/// Stride-1 columns by rows: `cols[c·kw + kx][yy·ow + x] = x[c, y0 + yy - pad, x + kx - pad]`
/// for `yy < nrows` (zero outside the input), so that kernel row `ky` of output rows
/// `y0 ..` reads the same matrix from column `ky·ow` on.
fn row_cols(
    x: &[f32],
    (ci, ih, iw): (usize, usize, usize),
    (kw, pad): (usize, usize),
    (ow, y0, nrows): (usize, usize, usize),
    cols: &mut [f32],
) {
    let rlen = nrows * ow;
    for c in 0..ci {
        let plane = &x[c * ih * iw..(c + 1) * ih * iw];
        for kx in 0..kw {
            let dst = &mut cols[(c * kw + kx) * rlen..(c * kw + kx + 1) * rlen];
            // ix = x + kx - pad: a shifted copy of each input row with zero edges
            let start = kx as isize - pad as isize;
            let ja = (-start).clamp(0, ow as isize) as usize;
            let jb = (iw as isize - start).clamp(ja as isize, ow as isize) as usize;
            for (yy, seg) in dst.chunks_mut(ow).enumerate() {
                let iy = (y0 + yy) as isize - pad as isize;
                if iy < 0 || iy >= ih as isize {
                    seg.fill(0.0);
                    continue;
                }
                let row = &plane[iy as usize * iw..(iy as usize + 1) * iw];
                seg[..ja].fill(0.0);
                seg[jb..].fill(0.0);
                if jb > ja {
                    let s0 = (start + ja as isize) as usize;
                    seg[ja..jb].copy_from_slice(&row[s0..s0 + (jb - ja)]);
                }
            }
        }
    }
}

/// Columns for output pixels `p0 .. p0 + np` (row-major over the output grid of width `ow`):
/// `cols[(c·kh + ky)·kw + kx][p]`, zero where the window leaves the padded input.
fn im2col(
    x: &[f32],
    (ci, ih, iw): (usize, usize, usize),
    (kh, kw, st, pad): (usize, usize, usize, usize),
    (ow, p0, np): (usize, usize, usize),
    cols: &mut [f32],
) {
    for c in 0..ci {
        let plane = &x[c * ih * iw..(c + 1) * ih * iw];
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (c * kh + ky) * kw + kx;
                let dst = &mut cols[r * np..(r + 1) * np];
                let mut p = 0;
                while p < np {
                    let (oy, ox0) = ((p0 + p) / ow, (p0 + p) % ow);
                    let len = (ow - ox0).min(np - p);
                    let seg = &mut dst[p..p + len];
                    let iy = (oy * st + ky) as isize - pad as isize;
                    if iy < 0 || iy >= ih as isize {
                        seg.fill(0.0);
                    } else {
                        let row = &plane[iy as usize * iw..(iy as usize + 1) * iw];
                        if st == 1 {
                            // ix = ox + kx - pad: a shifted copy with zero edges.
                            let shift = kx as isize - pad as isize;
                            let start = ox0 as isize + shift; // ix of seg[0]
                            let ja = (-start).clamp(0, len as isize) as usize;
                            let jb =
                                (iw as isize - start).clamp(ja as isize, len as isize) as usize;
                            seg[..ja].fill(0.0);
                            seg[jb..].fill(0.0);
                            if jb > ja {
                                let s0 = (start + ja as isize) as usize;
                                seg[ja..jb].copy_from_slice(&row[s0..s0 + (jb - ja)]);
                            }
                        } else {
                            for (j, d) in seg.iter_mut().enumerate() {
                                let ix = ((ox0 + j) * st + kx) as isize - pad as isize;
                                *d = if ix >= 0 && (ix as usize) < iw {
                                    row[ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                    p += len;
                }
            }
        }
    }
}

/// What a convolution does around its GEMM (all optional): fused on the CPU path, applied
/// in this order by candle's ops otherwise.
#[derive(Default, Clone, Copy)]
pub struct ConvExt<'a> {
    /// ReLU of the input first.
    pub relu_in: bool,
    /// Added to the output.
    pub residual: Option<&'a Tensor>,
    /// ReLU of the output, then this 1x1 conv (weight (O2, Co, 1, 1), bias): the result is
    /// the 1x1's output. Not with `residual`.
    pub then_1x1: Option<(&'a Tensor, Option<&'a Tensor>)>,
}

/// 2-D convolution (NCHW, square stride/padding, no dilation or groups).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    ext: ConvExt<'_>,
) -> Result<Tensor> {
    let (b, _, ih, iw) = x.dims4()?;
    let (co, ci, kh, kw) = weight.dims4()?;
    let oh = (ih + 2 * padding).saturating_sub(kh) / stride + 1;
    let ow = (iw + 2 * padding).saturating_sub(kw) / stride + 1;
    let then_1x1 = match ext.then_1x1 {
        Some((w2, b2)) => Some((
            w2.flatten_all()?.to_vec1::<f32>()?,
            match b2 {
                Some(b2) => Some(b2.to_vec1::<f32>()?),
                None => None,
            },
        )),
        None => None,
    };
    let co2 = then_1x1.as_ref().map_or(0, |(w2, _)| w2.len());
    let flops = 2.0 * (b * oh * ow) as f64 * (co * ci * kh * kw + co2) as f64;
    let t = crate::tuning::get();
    let name: Cow<'static, str> = if profiling() && t.profile_shapes {
        // Per-shape rows, for finding the expensive layers.
        format!("conv{kh}x{kw}/{stride} {ci}->{co} {oh}x{ow}").into()
    } else if kh * kw == 1 {
        "conv1x1".into()
    } else {
        "conv".into()
    };
    timed(name, flops, || {
        x.contiguous()?.apply_op1_no_bwd(&Conv2dOp {
            weight,
            bias,
            stride,
            padding,
            relu_in: ext.relu_in,
            residual: ext.residual,
            then_1x1,
            by_rows: t.conv_by_rows,
            winograd: tile_for(ci, co, ih, iw).filter(|_| t.winograd),
            col_band: t.col_band,
            row_band: t.row_band,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, rand};
    use crate::tuning::Tuning;

    #[test]
    fn conv2d_matches_candle() {
        for (ci, co, k, s, p, h, w) in [
            (5usize, 7usize, 3usize, 1usize, 1usize, 19usize, 23usize),
            (3, 8, 14, 14, 0, 28, 42),
            (6, 4, 1, 1, 0, 9, 11),
            (4, 6, 3, 2, 1, 17, 12),
            (3, 5, 5, 1, 2, 13, 17),
            (4, 3, 3, 1, 0, 10, 9),
            (2, 3, 2, 1, 0, 7, 8),
            (3, 4, 3, 1, 1, 1, 6),
        ] {
            let x = rand(&[2, ci, h, w], 7);
            let wt = rand(&[co, ci, k, k], 8);
            let b = rand(&[co], 9);
            let want = x
                .conv2d(&wt, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, co, 1, 1)).unwrap())
                .unwrap();
            let got = conv2d(&x, &wt, Some(&b), s, p, ConvExt::default()).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(
                max_rel_err(&got, &want) < 1e-5,
                "conv {ci} {co} {k} {s} {p}"
            );
            // both column layouts, whatever the tuning says
            for by_rows in [false, true] {
                let op = Conv2dOp {
                    weight: &wt,
                    bias: Some(&b),
                    stride: s,
                    padding: p,
                    relu_in: false,
                    residual: None,
                    then_1x1: None,
                    by_rows,
                    winograd: None,
                    col_band: Tuning::DEFAULT.col_band,
                    row_band: Tuning::DEFAULT.row_band,
                };
                let got = x.apply_op1_no_bwd(&op).unwrap();
                assert!(
                    max_rel_err(&got, &want) < 1e-5,
                    "conv {ci} {co} {k} {s} {p} {by_rows}"
                );
            }
        }
    }

    #[test]
    fn conv2d_relu_residual_matches_candle() {
        let x = rand(&[2, 5, 9, 11], 30);
        let wt = rand(&[5, 5, 3, 3], 31);
        let b = rand(&[5], 32);
        let r = rand(&[2, 5, 9, 11], 33);
        let ext = ConvExt {
            relu_in: true,
            residual: Some(&r),
            ..Default::default()
        };
        let got = conv2d(&x, &wt, Some(&b), 1, 1, ext).unwrap();
        let want = (x
            .relu()
            .unwrap()
            .conv2d(&wt, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap())
            .unwrap()
            + &r)
            .unwrap();
        assert!(max_rel_err(&got, &want) < 1e-5);
    }

    #[test]
    fn conv2d_then_relu_1x1_matches_candle() {
        // 2 images of 37x53 pixels, several bands each
        let x = rand(&[2, 6, 37, 53], 60);
        let wt = rand(&[8, 6, 3, 3], 61);
        let b = rand(&[8], 62);
        let w2 = rand(&[2, 8, 1, 1], 63);
        let b2 = rand(&[2], 64);
        for b2 in [Some(&b2), None] {
            let ext = ConvExt {
                then_1x1: Some((&w2, b2)),
                ..Default::default()
            };
            let got = conv2d(&x, &wt, Some(&b), 1, 1, ext).unwrap();
            let y = x
                .conv2d(&wt, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 8, 1, 1)).unwrap())
                .unwrap()
                .relu()
                .unwrap()
                .conv2d(&w2, 0, 1, 1, 1)
                .unwrap();
            let want = match b2 {
                Some(b2) => y.broadcast_add(&b2.reshape((1, 2, 1, 1)).unwrap()).unwrap(),
                None => y,
            };
            assert_eq!(got.dims(), &[2, 2, 37, 53]);
            assert!(max_rel_err(&got, &want) < 1e-5);
        }
        // with a residual it is refused, not computed wrongly
        let r = rand(&[2, 8, 37, 53], 65);
        let ext = ConvExt {
            residual: Some(&r),
            then_1x1: Some((&w2, None)),
            ..Default::default()
        };
        assert!(conv2d(&x, &wt, Some(&b), 1, 1, ext).is_err());
    }
}
