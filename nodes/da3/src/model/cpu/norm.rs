//! LayerNorm, and the fused QK-norm + 2-D RoPE of the attention inputs.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{chunk_len, output_buffer};
use super::profile::timed;
use super::simd;

/// A LayerNorm's parameters: `(x - mean) / sqrt(var + eps) · weight + bias` over the last
/// dim (weight and bias f32).
#[derive(Debug, Clone, Copy)]
pub struct Norm<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub eps: f64,
}

impl<'a> Norm<'a> {
    pub fn new(weight: &'a Tensor, bias: &'a Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// (weight, bias, eps) as host values for the kernels.
    pub(super) fn host(&self) -> Result<(Vec<f32>, Vec<f32>, f32)> {
        Ok((
            self.weight.to_vec1()?,
            self.bias.to_vec1()?,
            self.eps as f32,
        ))
    }
}

/// Offsets of the rows (last dim, stride 1) of a layout, in row-major order.
fn row_offsets(l: &Layout) -> Result<Vec<usize>> {
    let dims = l.dims();
    let strides = l.stride();
    let r = dims.len();
    if r == 0 || strides[r - 1] != 1 {
        bail!("da3 cpu kernel: the last dim must be contiguous");
    }
    let nrows: usize = dims[..r - 1].iter().product();
    let mut out = Vec::with_capacity(nrows);
    let mut idx = vec![0usize; r - 1];
    let mut off = l.start_offset();
    for _ in 0..nrows {
        out.push(off);
        for j in (0..r - 1).rev() {
            idx[j] += 1;
            off += strides[j];
            if idx[j] < dims[j] {
                break;
            }
            off -= strides[j] * dims[j];
            idx[j] = 0;
        }
    }
    Ok(out)
}

/// Mean and 1/sqrt(var + eps) of a row, accumulated in 8 lanes (vectorises).
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let c = x.len();
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for i in 0..8 {
            acc[i] += ch[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    sum += chunks.remainder().iter().sum::<f32>();
    let mean = sum / c as f32;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for i in 0..8 {
            let d = ch[i] - mean;
            acc[i] += d * d;
        }
    }
    let mut var: f32 = acc.iter().sum();
    var += chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum::<f32>();
    let var = var / c as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `out = (x - mean) / sqrt(var + eps) · w + b` for one row (whole-slice loops, so that they
/// vectorise).
#[inline(always)]
fn norm_row(x: &[f32], (w, b, eps): (&[f32], &[f32], f32), out: &mut [f32]) {
    let c = x.len();
    let (mean, inv) = row_stats(x, eps);
    for (((o, &xv), &wv), &bv) in out[..c].iter_mut().zip(x).zip(&w[..c]).zip(&b[..c]) {
        *o = (xv - mean) * inv * wv + bv;
    }
}

#[inline(always)]
fn norm_rows_generic(x: &[f32], k: usize, norm: (&[f32], &[f32], f32), out: &mut [f32]) {
    for (orow, xrow) in out.chunks_exact_mut(k).zip(x.chunks_exact(k)) {
        norm_row(xrow, norm, orow);
    }
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn norm_rows_avx2(x: &[f32], k: usize, norm: (&[f32], &[f32], f32), out: &mut [f32]) {
    norm_rows_generic(x, k, norm, out)
}

/// LayerNorm of the rows of `k` values of `x` into `out` (both contiguous): weight, bias,
/// eps as `norm`. AVX2 code where the CPU has it.
pub(super) fn norm_rows(x: &[f32], k: usize, norm: (&[f32], &[f32], f32), out: &mut [f32]) {
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { norm_rows_avx2(x, k, norm, out) }
    } else {
        norm_rows_generic(x, k, norm, out)
    }
}

/// LayerNorm over the last dim (`norm`), then 2-D RoPE (`rope`: cos/sin tables (N, d) for
/// inputs (B, H, N, d)); either may be absent. Input rows may be strided; output contiguous.
struct NormRopeOp {
    norm: Option<(Vec<f32>, Vec<f32>, f32)>,
    rope: Option<(Vec<f32>, Vec<f32>)>,
}

impl NormRopeOp {
    /// Output rows `o` of `c` values (row `r0 + i` of the input starts at `offs[i]`), `ntok`
    /// tokens per rope table. Whole-slice loops of known length, so that they vectorise
    /// (indexed loops with bounds checks did not: DA3-SMALL's q of one view, 1x6x973x64, took
    /// 0.75 ms, now 0.25 with AVX2; `cargo bench -p da3 --bench kernels`, AMD EPYC Zen 4).
    #[inline(always)]
    fn rows(&self, x: &[f32], offs: &[usize], (r0, c, ntok): (usize, usize, usize), o: &mut [f32]) {
        let mut tmp = vec![0f32; c];
        for ((ri, orow), &off) in o.chunks_exact_mut(c).enumerate().zip(offs) {
            let xrow = &x[off..off + c];
            let src: &[f32] = match &self.norm {
                Some((w, b, eps)) => {
                    norm_row(xrow, (w, b, *eps), &mut tmp);
                    &tmp
                }
                None => xrow,
            };
            match &self.rope {
                Some((cos, sin)) => {
                    let t = (r0 + ri) % ntok;
                    let (cr, sr) = (&cos[t * c..(t + 1) * c], &sin[t * c..(t + 1) * c]);
                    let q = c / 4;
                    // Each quarter rotated against its neighbour: (-x1, x0, -x3, x2).
                    for (lo, sign, from) in [
                        (0, -1.0f32, q),
                        (q, 1.0, 0),
                        (2 * q, -1.0, 3 * q),
                        (3 * q, 1.0, 2 * q),
                    ] {
                        let dst = &mut orow[lo..lo + q];
                        let (a, b) = (&src[lo..lo + q], &src[from..from + q]);
                        let (cq, sq) = (&cr[lo..lo + q], &sr[lo..lo + q]);
                        for ((((d, &av), &bv), &cv), &sv) in
                            dst.iter_mut().zip(a).zip(b).zip(cq).zip(sq)
                        {
                            *d = av * cv + sign * bv * sv;
                        }
                    }
                }
                None => orow.copy_from_slice(src),
            }
        }
    }

    /// [`NormRopeOp::rows`] compiled for AVX2 + FMA.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn rows_avx2(
        &self,
        x: &[f32],
        offs: &[usize],
        at: (usize, usize, usize),
        o: &mut [f32],
    ) {
        self.rows(x, offs, at, o)
    }
}

impl CustomOp1 for NormRopeOp {
    fn name(&self) -> &'static str {
        "da3-norm-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = s.as_slice::<f32>()?;
        let dims = l.dims();
        let c = *dims.last().unwrap_or(&1);
        let offs = row_offsets(l)?;
        if let Some((w, b, _)) = &self.norm {
            if w.len() != c || b.len() != c {
                bail!("da3-layer-norm: {c} features, weight has {}", w.len());
            }
        }
        // Token index of each row for the rope tables: rows are (..., N) major to minor.
        let ntok = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        if let Some((cos, _)) = &self.rope {
            if !c.is_multiple_of(4) || cos.len() != ntok * c {
                bail!(
                    "da3-rope: tables of {} values for {ntok} tokens x {c}",
                    cos.len()
                );
            }
        }
        let n = offs.len() * c;
        let mut out = output_buffer(n);
        let rows = chunk_len(offs.len(), 16);
        let avx2 = simd::available();
        out.par_chunks_mut(rows * c)
            .enumerate()
            .for_each(|(ci, o)| {
                let offs = &offs[ci * rows..];
                if avx2 {
                    // SAFETY: the CPU has AVX2 and FMA.
                    unsafe { self.rows_avx2(x, offs, (ci * rows, c, ntok), o) }
                } else {
                    self.rows(x, offs, (ci * rows, c, ntok), o)
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(dims.to_vec())))
    }
}

/// LayerNorm over the last dim (rows may be strided views).
pub fn layer_norm(x: &Tensor, norm: Norm<'_>) -> Result<Tensor> {
    timed("layer-norm", 0.0, || {
        let op = NormRopeOp {
            norm: Some(norm.host()?),
            rope: None,
        };
        if x.stride().last() == Some(&1) {
            x.apply_op1_no_bwd(&op)
        } else {
            x.contiguous()?.apply_op1_no_bwd(&op)
        }
    })
}

/// Optional LayerNorm then optional 2-D RoPE (tables (N, d)) of q or k (B, H, N, d), in one
/// pass over a possibly strided view; the result is contiguous.
pub fn norm_rope(
    x: &Tensor,
    norm: Option<Norm<'_>>,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    timed("norm+rope", 0.0, || {
        let norm = norm.map(|n| n.host()).transpose()?;
        let rope = match rope {
            Some((c, s)) => Some((c.flatten_all()?.to_vec1()?, s.flatten_all()?.to_vec1()?)),
            None => None,
        };
        let op = NormRopeOp { norm, rope };
        if x.stride().last() == Some(&1) {
            x.apply_op1_no_bwd(&op)
        } else {
            x.contiguous()?.apply_op1_no_bwd(&op)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, rand};
    use candle_core::{DType, Device, D};

    #[test]
    fn norm_rope_matches_rope2d() {
        use crate::model::attention::Rope2d;
        let pos: Vec<(u32, u32)> = (0..10).map(|i| (i / 3, i % 3)).collect();
        let rope = Rope2d::new(&pos, 16, 100.0, DType::F32, &Device::Cpu).unwrap();
        // strided (B, H, N, d) view, as split from a qkv output
        let x = rand(&[2, 10, 3, 16], 26).transpose(1, 2).unwrap();
        let got = norm_rope(&x, None, Some((&rope.cos, &rope.sin))).unwrap();
        let want = rope.apply(&x.contiguous().unwrap()).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);
        let (nw, nb) = (rand(&[16], 27), rand(&[16], 28));
        let got = norm_rope(&x, Some(Norm::new(&nw, &nb, 1e-5)), None).unwrap();
        let want = layer_norm(&x.contiguous().unwrap(), Norm::new(&nw, &nb, 1e-5)).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);
    }

    #[test]
    fn layer_norm_matches_candle() {
        let x = rand(&[4, 9, 24], 14);
        let w = rand(&[24], 15);
        let b = rand(&[24], 16);
        let got = layer_norm(&x, Norm::new(&w, &b, 1e-6)).unwrap();
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let want = xc
            .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_rel_err(&got, &want) < 1e-5);
    }
}
