//! Bilinear resize (align_corners = true), separable: rows blended, then gathered along x.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{contiguous_f32, output_buffer, with_scratch};
use super::profile::timed;
use super::tokens::{PlaneEmbed, UvTables};

struct BilinearOp<'a> {
    oh: usize,
    ow: usize,
    /// A UV embedding to add to the result (tables for the output size): one pass over the
    /// full-resolution map instead of two.
    uv: Option<UvTables<'a>>,
}

/// One output index's two source indices and their weights.
pub(super) type Taps = (usize, usize, f32, f32);

/// Source index pairs and weights along one axis, as PyTorch computes them in f32.
pub(super) fn bilinear_taps(inp: usize, out: usize) -> Vec<Taps> {
    let scale = if out > 1 {
        (inp - 1) as f32 / (out - 1) as f32
    } else {
        0.0
    };
    (0..out)
        .map(|o| {
            let src = scale * o as f32;
            let i0 = (src as usize).min(inp - 1);
            let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Output row of a channels-last map `xt` (rows of `iw × c`) resized: source rows by the
/// taps `ty` along y (blended into `tmp`, `iw × c` values), then each output pixel's `c`
/// channels by its taps along x, into `row` (`ow × c` values, `ow` = `tx.len()`). The same
/// sums in the same order as [`plane`]'s.
pub(super) fn row_channels_last(
    xt: &[f32],
    (c, iw): (usize, usize),
    (y0, y1, wy0, wy1): Taps,
    tx: &[Taps],
    tmp: &mut [f32],
    row: &mut [f32],
) {
    let (a, b) = (&xt[y0 * iw * c..][..iw * c], &xt[y1 * iw * c..][..iw * c]);
    for ((t, a), b) in tmp.iter_mut().zip(a).zip(b) {
        *t = wy0 * a + wy1 * b;
    }
    for (r, &(x0, x1, wx0, wx1)) in row.chunks_exact_mut(c).zip(tx) {
        let (a, b) = (&tmp[x0 * c..(x0 + 1) * c], &tmp[x1 * c..(x1 + 1) * c]);
        for ((r, a), b) in r.iter_mut().zip(a).zip(b) {
            *r = wx0 * a + wx1 * b;
        }
    }
}

/// A channels-last map (B, ih, iw, C) resized to (B, oh, ow, C), bilinear with aligned
/// corners (as [`resize_bilinear_ac`] does channels first).
pub(super) fn resize_channels_last(
    xt: &[f32],
    (b, c, ih, iw): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let (ty, tx) = (bilinear_taps(ih, oh), bilinear_taps(iw, ow));
    let mut out = output_buffer(b * oh * ow * c);
    timed("bilinear", 0.0, || {
        out.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(vy, row)| {
                let (v, y) = (vy / oh, vy % oh);
                let src = &xt[v * ih * iw * c..(v + 1) * ih * iw * c];
                with_scratch(iw * c, |tmp| {
                    row_channels_last(src, (c, iw), ty[y], &tx, tmp, row);
                });
            });
    });
    out
}

/// One plane `p` (rows of `iw`) resized into `o` by the taps along y and x, plus `embed`.
/// Separable: blend the two source rows (vectorises), then gather along x.
fn plane(
    p: &[f32],
    iw: usize,
    (ty, tx): (&[Taps], &[Taps]),
    embed: Option<PlaneEmbed<'_>>,
    o: &mut [f32],
) {
    let ow = tx.len();
    let mut tmp = vec![0f32; iw];
    for (oy, (orow, &(y0, y1, wy0, wy1))) in o.chunks_exact_mut(ow).zip(ty).enumerate() {
        let r0 = &p[y0 * iw..(y0 + 1) * iw];
        let r1 = &p[y1 * iw..(y1 + 1) * iw];
        for ((t, a), b) in tmp.iter_mut().zip(r0).zip(r1) {
            *t = wy0 * a + wy1 * b;
        }
        for (d, &(x0, x1, wx0, wx1)) in orow.iter_mut().zip(tx) {
            *d = wx0 * tmp[x0] + wx1 * tmp[x1];
        }
        if let Some(e) = embed {
            e.add_to_row(oy, orow);
        }
    }
}

impl CustomOp1 for BilinearOp<'_> {
    fn name(&self) -> &'static str {
        "da3-bilinear-ac"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-bilinear", s, l)?;
        let (b, c, ih, iw) = l.shape().dims4()?;
        let (oh, ow) = (self.oh, self.ow);
        let ty = bilinear_taps(ih, oh);
        let tx = bilinear_taps(iw, ow);
        if let Some(uv) = &self.uv {
            uv.check("da3-bilinear", (c, oh, ow))?;
        }
        let mut out = output_buffer(b * c * oh * ow);
        out.par_chunks_mut(oh * ow)
            .zip(x[..b * c * ih * iw].par_chunks(ih * iw))
            .enumerate()
            .for_each(|(pi, (o, p))| {
                let embed = self.uv.map(|uv| uv.plane(pi % c, (c, oh, ow)));
                plane(p, iw, (&ty, &tx), embed, o)
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

/// Bilinear resize of an NCHW map with `align_corners = true`, then, with `uv`, the UV
/// embedding added (tables `ex` C/2 × ow, `ey` C/2 × oh, as [`super::add_uv_embed`]'s).
pub fn resize_bilinear_ac(
    x: &Tensor,
    oh: usize,
    ow: usize,
    uv: Option<(&[f32], &[f32])>,
) -> Result<Tensor> {
    timed("bilinear", 0.0, || {
        let uv = uv.map(|(ex, ey)| UvTables { ex, ey });
        x.contiguous()?.apply_op1_no_bwd(&BilinearOp { oh, ow, uv })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, rand};

    #[test]
    fn bilinear_matches_candle() {
        let x = rand(&[2, 3, 7, 9], 13);
        let got = resize_bilinear_ac(&x, 15, 20, None).unwrap();
        let want = x.upsample_bilinear2d(15, 20, true).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);
    }
}
