//! Bilinear resize (align_corners = true), separable: rows blended, then gathered along x.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{contiguous_f32, output_buffer};
use super::profile::timed;

struct BilinearOp {
    oh: usize,
    ow: usize,
}

/// Source index pairs and weights along one axis, as PyTorch computes them in f32.
fn bilinear_taps(inp: usize, out: usize) -> Vec<(usize, usize, f32, f32)> {
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

impl CustomOp1 for BilinearOp {
    fn name(&self) -> &'static str {
        "da3-bilinear-ac"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-bilinear", s, l)?;
        let (b, c, ih, iw) = l.shape().dims4()?;
        let (oh, ow) = (self.oh, self.ow);
        let ty = bilinear_taps(ih, oh);
        let tx = bilinear_taps(iw, ow);
        let mut out = output_buffer(b * c * oh * ow);
        out.par_chunks_mut(oh * ow)
            .zip(x[..b * c * ih * iw].par_chunks(ih * iw))
            .for_each(|(o, p)| {
                // Separable: blend the two source rows (vectorises), then gather along x.
                let mut tmp = vec![0f32; iw];
                for (oy, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
                    let r0 = &p[y0 * iw..(y0 + 1) * iw];
                    let r1 = &p[y1 * iw..(y1 + 1) * iw];
                    for ((t, a), b) in tmp.iter_mut().zip(r0).zip(r1) {
                        *t = wy0 * a + wy1 * b;
                    }
                    let orow = &mut o[oy * ow..(oy + 1) * ow];
                    for (d, &(x0, x1, wx0, wx1)) in orow.iter_mut().zip(tx.iter()) {
                        *d = wx0 * tmp[x0] + wx1 * tmp[x1];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

/// Bilinear resize of an NCHW map with `align_corners = true`.
pub fn resize_bilinear_ac(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    timed("bilinear", 0.0, || {
        x.contiguous()?.apply_op1_no_bwd(&BilinearOp { oh, ow })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, rand};

    #[test]
    fn bilinear_matches_candle() {
        let x = rand(&[2, 3, 7, 9], 13);
        let got = resize_bilinear_ac(&x, 15, 20).unwrap();
        let want = x.upsample_bilinear2d(15, 20, true).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);
    }
}
