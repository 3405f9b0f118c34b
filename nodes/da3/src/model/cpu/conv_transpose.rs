//! Transposed convolutions with kernel = stride and no padding (DPT's upsampling): one
//! GEMM per band of input rows, then a scatter into the output rows.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{
    chunk_len, contiguous_f32, output_buffer, sgemm, with_f32, with_scratch, Mat, SyncPtr,
};
use super::profile::timed;

struct ConvTransposeOp<'a> {
    weight: &'a Tensor, // (Ci, Co, k, k), contiguous; stride = k, no padding
    bias: Option<&'a Tensor>,
    /// Target floats per band of the GEMM's output ([`crate::tuning::Tuning::col_band`]).
    col_band: usize,
}

impl CustomOp1 for ConvTransposeOp<'_> {
    fn name(&self) -> &'static str {
        "da3-conv-transpose2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-conv-transpose2d", s, l)?;
        let (b, ci, ih, iw) = l.shape().dims4()?;
        let (wci, co, kh, kw) = self.weight.dims4()?;
        if wci != ci {
            bail!("da3-conv-transpose2d: input has {ci} channels, weight expects {wci}");
        }
        let (oh, ow) = (ih * kh, iw * kw);
        let rk = co * kh * kw;
        let npix = ih * iw;
        let bias: Vec<f32> = match self.bias {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; co],
        };
        let mut out = output_buffer(b * co * oh * ow);
        let optr = SyncPtr(out.as_mut_ptr());
        // Bands of whole input rows so each task scatters into its own output rows.
        let rows = chunk_len(ih, 1).min((self.col_band / (rk * iw).max(1)).max(1));
        let nband = ih.div_ceil(rows);
        let xp = x.as_ptr() as usize;
        with_f32(self.weight, |w, wl| {
            let w = &w[wl.start_offset()..];
            let wp = w.as_ptr() as usize;
            (0..b * nband).into_par_iter().for_each(|task| {
                let (bi, bj) = (task / nband, task % nband);
                let y0 = bj * rows;
                let ny = rows.min(ih - y0);
                let np = ny * iw;
                with_scratch(rk * np, |t| {
                    unsafe {
                        // t[(o,ky,kx), p] = Σ_c w[c, (o,ky,kx)] · x[c, p]
                        sgemm(
                            (rk, np, ci),
                            Mat::rows(t.as_mut_ptr(), np),
                            false,
                            Mat::cols(wp as *const f32, rk),
                            Mat::rows((xp as *const f32).add(bi * ci * npix + y0 * iw), npix),
                            1.0,
                        )
                    };
                    for o in 0..co {
                        for ky in 0..kh {
                            for y in 0..ny {
                                let orow = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        optr.get()
                                            .add(((bi * co + o) * oh + (y0 + y) * kh + ky) * ow),
                                        ow,
                                    )
                                };
                                for kx in 0..kw {
                                    let src = &t[((o * kh + ky) * kw + kx) * np + y * iw..][..iw];
                                    for (xi, v) in src.iter().enumerate() {
                                        orow[xi * kw + kx] = v + bias[o];
                                    }
                                }
                            }
                        }
                    }
                });
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, co, oh, ow))))
    }
}

/// Transposed convolution with kernel = stride and no padding (DPT's upsampling).
pub fn conv_transpose2d_k_eq_s(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let flops = 2.0 * x.elem_count() as f64 * (weight.elem_count() / weight.dim(0)?.max(1)) as f64;
    let op = ConvTransposeOp {
        weight,
        bias,
        col_band: crate::tuning::get().col_band,
    };
    timed("conv-transpose", flops, || {
        x.contiguous()?.apply_op1_no_bwd(&op)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, rand};

    #[test]
    fn conv_transpose_matches_candle() {
        for k in [2usize, 4] {
            let x = rand(&[2, 5, 7, 9], 10);
            let wt = rand(&[5, 6, k, k], 11);
            let b = rand(&[6], 12);
            let got = conv_transpose2d_k_eq_s(&x, &wt, Some(&b)).unwrap();
            let want = x
                .conv_transpose2d(&wt, 0, 0, k, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap())
                .unwrap();
            assert!(max_rel_err(&got, &want) < 1e-5);
        }
    }
}
