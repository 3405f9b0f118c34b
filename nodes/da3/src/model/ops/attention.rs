//! Multi-head attention with the QK-norm and 2-D RoPE of its inputs.

use candle_core::{DType, Result, Tensor, D};

use super::{cpu, layer_norm_candle, use_kernels, Norm};

/// What happens to q and k before the attention (all optional): LayerNorm per head
/// (QK-norm), then 2-D RoPE with cos/sin tables (N, d).
#[derive(Default, Clone, Copy)]
pub struct QkPrep<'a> {
    pub q_norm: Option<Norm<'a>>,
    pub k_norm: Option<Norm<'a>>,
    pub rope: Option<(&'a Tensor, &'a Tensor)>,
}

/// `softmax(q·kᵀ/√d)·v` for the permuted output of a qkv projection, (3, B, H, N, d), with
/// q and k prepared by `prep`; the result is (B, N, H·d), ready for the output projection.
/// `products`: the type the two products may take, the network's GEMM weight dtype (or f32
/// to keep them f32); with bf16/f16 (mixed precision) and [`Tuning::half_attention`] on
/// (the default), they take inputs in that type where the CPU has a kernel for it (softmax
/// in f32); otherwise they run in f32.
///
/// [`Tuning::half_attention`]: crate::tuning::Tuning::half_attention
pub fn attention(qkv: &Tensor, prep: QkPrep<'_>, products: DType) -> Result<Tensor> {
    if !use_kernels(qkv) {
        return attention_candle(qkv, prep);
    }
    let hd = qkv.dim(D::Minus1)?;
    // q, k, v stay strided views of the qkv output (`narrow + squeeze` keeps the strides,
    // `get` would copy: it reshapes); norm and RoPE in one pass.
    let part = |i: usize| qkv.narrow(0, i, 1)?.squeeze(0);
    let prepared = |t: Tensor, norm: Option<Norm<'_>>| -> Result<Tensor> {
        if norm.is_none() && prep.rope.is_none() {
            Ok(t)
        } else {
            cpu::norm_rope(&t, norm, prep.rope)
        }
    };
    let q = prepared(part(0)?, prep.q_norm)?;
    let k = prepared(part(1)?, prep.k_norm)?;
    let scale = 1.0 / (hd as f32).sqrt();
    let half = cpu::Half::of(products).filter(|_| crate::tuning::get().half_attention);
    cpu::attention(&q, &k, &part(2)?, scale, half)
}

/// Bound on the elements of one attention-score buffer of [`attention_candle`] (queries
/// are processed in chunks).
const MAX_SCORE_ELEMS: usize = 1 << 26;

/// [`attention`] by candle's ops: full score matrices (in query chunks of at most
/// `MAX_SCORE_ELEMS` scores), softmax reduced in f32.
pub fn attention_candle(qkv: &Tensor, prep: QkPrep<'_>) -> Result<Tensor> {
    let (_, b, h, n, hd) = qkv.dims5()?;
    let mut q = qkv.get(0)?.contiguous()?;
    let mut k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    if let Some(nq) = prep.q_norm {
        q = layer_norm_candle(&q, nq)?;
    }
    if let Some(nk) = prep.k_norm {
        k = layer_norm_candle(&k, nk)?;
    }
    if let Some((cos, sin)) = prep.rope {
        q = rope_candle(&q, cos, sin)?;
        k = rope_candle(&k, cos, sin)?;
    }
    let scale = 1.0 / (hd as f64).sqrt();
    let q = (q * scale)?;
    let kt = k.t()?.contiguous()?;
    let chunk = (MAX_SCORE_ELEMS / (b * h * n).max(1)).max(1).min(n);
    let out = if chunk >= n {
        let att = softmax_last_dim(&q.matmul(&kt)?)?;
        att.matmul(&v)?
    } else {
        let mut parts = Vec::new();
        let mut s = 0;
        while s < n {
            let l = chunk.min(n - s);
            let qs = q.narrow(2, s, l)?;
            let att = softmax_last_dim(&qs.matmul(&kt)?)?;
            parts.push(att.matmul(&v)?);
            s += l;
        }
        Tensor::cat(&parts, 2)?
    };
    out.transpose(1, 2)?.reshape((b, n, h * hd))
}

/// 2-D RoPE of (B, heads, N, d) with cos/sin tables (N, d), by candle's ops: each quarter
/// of the head dim rotated "rotate half" style against its neighbour (the first half of
/// the dim by the token's row, the second by its column; see `Rope2d`).
pub fn rope_candle(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let q = d / 4;
    let p0 = x.narrow(D::Minus1, 0, q)?;
    let p1 = x.narrow(D::Minus1, q, q)?;
    let p2 = x.narrow(D::Minus1, 2 * q, q)?;
    let p3 = x.narrow(D::Minus1, 3 * q, q)?;
    let rot = Tensor::cat(&[&p1.neg()?, &p0, &p3.neg()?, &p2], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// Softmax over the last dim, reduced in f32.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        candle_nn::ops::softmax_last_dim(x)
    } else {
        candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::Rope2d;
    use crate::testing::{max_rel_err, rand};
    use candle_core::Device;

    #[test]
    fn attention_matches_candle_with_and_without_prep() {
        let (b, n, h, d) = (2usize, 21usize, 3usize, 16usize);
        let qkv = rand(&[b, n, 3, h, d], 1).permute((2, 0, 3, 1, 4)).unwrap();
        let pos: Vec<(u32, u32)> = (0..n as u32).map(|i| (i / 7, i % 7)).collect();
        let rope = Rope2d::new(&pos, d, 100.0, DType::F32, &Device::Cpu).unwrap();
        let (qw, qb, kw, kb) = (rand(&[d], 2), rand(&[d], 3), rand(&[d], 4), rand(&[d], 5));
        for prep in [
            QkPrep::default(),
            QkPrep {
                q_norm: Some(Norm::new(&qw, &qb, 1e-5)),
                k_norm: Some(Norm::new(&kw, &kb, 1e-5)),
                rope: Some((&rope.cos, &rope.sin)),
            },
        ] {
            let got = attention(&qkv, prep, DType::F32).unwrap();
            assert_eq!(got.dims(), &[b, n, h * d]);
            let e = max_rel_err(&got, &attention_candle(&qkv, prep).unwrap());
            assert!(e < 2e-6, "{e}");
        }
    }
}
