//! One op per concept for the model files. Each op picks the fused f32 CPU kernel
//! ([`super::cpu`]) itself when it applies (an f32 tensor on the CPU, [`Tuning::cpu_kernels`]
//! on, and the shapes the kernel handles) and otherwise runs candle's ops: the `*_candle`
//! function beside it, which is also the reference the tests compare the kernels against.
//!
//! | file | ops |
//! |---|---|
//! | `mod.rs` | [`layer_norm`], [`linear`], [`resize_bilinear_ac`], [`add_uv_embed`], [`resize_bilinear_ac_uv`] |
//! | `attention.rs` | [`attention`] (QK-norm and 2-D RoPE included), [`rope_candle`] |
//! | `conv.rs` | [`conv2d`], [`conv2d_tokens`], [`conv_transpose2d`], [`upsampled_heads`], [`fusion_heads`] |
//!
//! [`Tuning::cpu_kernels`]: crate::tuning::Tuning::cpu_kernels

mod attention;
mod conv;

use candle_core::{DType, Module, Result, Tensor, D};

use super::cpu;

pub use attention::{attention, attention_candle, rope_candle, QkPrep};
pub use conv::{
    conv2d, conv2d_candle, conv2d_tokens, conv2d_tokens_candle, conv_transpose2d,
    conv_transpose2d_candle, fusion_heads, half_conv, upsampled_heads,
};
pub use cpu::profile;
pub use cpu::{
    keep_freed_memory, mkl_linked, mkl_version, onednn_describe, onednn_runs_bf16, onednn_version,
    ConvExt, ConvHead, FusionLayers, HalfConv, HalfLayer, LinearExt, Norm, PackedWeight,
};

/// Whether `t` takes the f32 CPU kernels (f32, on the CPU, kernels not switched off).
fn use_kernels(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu() && crate::tuning::get().cpu_kernels
}

/// LayerNorm over the last dim.
pub fn layer_norm(x: &Tensor, norm: Norm<'_>) -> Result<Tensor> {
    if use_kernels(x) {
        return cpu::layer_norm(x, norm);
    }
    layer_norm_candle(x, norm)
}

/// [`layer_norm`] by candle's ops; the statistics are computed in f32 whatever the dtype
/// (candle's CPU reductions accumulate in the storage type for bf16/f16).
pub fn layer_norm_candle(x: &Tensor, norm: Norm<'_>) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + norm.eps)?.sqrt()?)?;
    y.broadcast_mul(norm.weight)?
        .broadcast_add(norm.bias)?
        .to_dtype(dtype)
}

/// A linear layer's weight `(out, in)` as the layer keeps it: f32 on the CPU in the layout
/// the CPU kernels read fastest (a strided view, [`cpu::linear_weight_layout`]), as loaded
/// otherwise.
pub fn linear_weight(weight: Tensor) -> Result<Tensor> {
    if weight.device().is_cpu() && weight.dtype() == DType::F32 {
        return cpu::linear_weight_layout(&weight);
    }
    Ok(weight)
}

/// A linear layer's half-precision weight (CPU mixed precision) in oneDNN's own layout, for
/// the layer to keep beside it and hand over in [`LinearExt::packed`]; `None` where oneDNN
/// does not run the weight's type here, and for every other weight.
pub fn pack_linear_weight(weight: &Tensor) -> Result<Option<PackedWeight>> {
    cpu::pack_linear_weight(weight)
}

/// `[res + gamma ⊙] [gelu](norm?(x) · Wᵀ + b)` over the last dim (`weight` (out, in)).
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    ext: LinearExt<'_>,
) -> Result<Tensor> {
    if use_kernels(x) && ext.residual.is_none_or(|(r, _)| r.dtype() == x.dtype()) {
        // Half-precision weights (CPU mixed precision): oneMKL's GEMM where it is linked,
        // else widened to f32 for this call.
        if cpu::Half::of(weight.dtype()).is_some() && !cpu::use_half_kernels(weight) {
            return cpu::linear(x, &weight.to_dtype(DType::F32)?, bias, ext);
        }
        return cpu::linear(x, weight, bias, ext);
    }
    linear_candle(x, weight, bias, ext)
}

/// [`linear`] by candle's ops (`candle_nn::Linear`, then GELU and the residual).
pub fn linear_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    ext: LinearExt<'_>,
) -> Result<Tensor> {
    // Weights stored in another dtype than the activations (bf16 weights of the CPU's mixed
    // precision) are widened to it first.
    let weight = weight.to_dtype(x.dtype())?;
    let bias = bias.map(|b| b.to_dtype(x.dtype())).transpose()?;
    let lin = candle_nn::Linear::new(weight, bias);
    let mut y = match ext.prenorm {
        Some(n) => lin.forward(&layer_norm_candle(x, n)?)?,
        None => lin.forward(x)?,
    };
    if ext.gelu {
        y = y.gelu_erf()?;
    }
    match ext.residual {
        Some((r, g)) => r + y.broadcast_mul(g)?,
        None => Ok(y),
    }
}

/// Bilinear resize of an NCHW map to `h × w` with `align_corners = true` (the same size
/// returns `x`).
pub fn resize_bilinear_ac(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if ih == h && iw == w {
        return Ok(x.clone());
    }
    if use_kernels(x) {
        return cpu::resize_bilinear_ac(x, h, w, None);
    }
    resize_bilinear_ac_candle(x, h, w)
}

/// [`resize_bilinear_ac`] then [`add_uv_embed`] (tables for the `h × w` result), in one pass
/// over the result on the CPU path.
pub fn resize_bilinear_ac_uv(
    x: &Tensor,
    h: usize,
    w: usize,
    ex: &[f32],
    ey: &[f32],
) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if (ih, iw) != (h, w) && use_kernels(x) {
        return cpu::resize_bilinear_ac(x, h, w, Some((ex, ey)));
    }
    add_uv_embed(&resize_bilinear_ac(x, h, w)?, ex, ey)
}

/// [`resize_bilinear_ac`] by candle's op (inputs made contiguous first: candle's kernel
/// misreads strided views).
pub fn resize_bilinear_ac_candle(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    x.contiguous()?.upsample_bilinear2d(h, w, true)
}

/// `x + pe` for an NCHW map and a separable position embedding: the first C/2 channels
/// add `ex[k][x]` (`ex`: C/2 × W), the others `ey[k][y]` (`ey`: C/2 × H).
pub fn add_uv_embed(x: &Tensor, ex: &[f32], ey: &[f32]) -> Result<Tensor> {
    if use_kernels(x) {
        return cpu::add_uv_embed(x, ex, ey);
    }
    add_uv_embed_candle(x, ex, ey)
}

/// [`add_uv_embed`] by candle's ops (the tables broadcast and concatenated, in x's dtype).
pub fn add_uv_embed_candle(x: &Tensor, ex: &[f32], ey: &[f32]) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let half = c / 2;
    let dev = x.device();
    let ex = Tensor::from_slice(ex, (half, 1, w), dev)?.broadcast_as((half, h, w))?;
    let ey = Tensor::from_slice(ey, (half, h, 1), dev)?.broadcast_as((half, h, w))?;
    let pe = Tensor::cat(&[&ex, &ey], 0)?
        .to_dtype(x.dtype())?
        .unsqueeze(0)?;
    x.broadcast_add(&pe)
}

#[cfg(test)]
mod tests {
    //! Each op on f32 CPU input (the kernel path) against its candle version.
    use super::*;
    use crate::testing::{max_rel_err, rand};

    #[test]
    fn layer_norm_and_linear_match_candle() {
        let x = rand(&[2, 33, 24], 1);
        let (nw, nb) = (rand(&[24], 2), rand(&[24], 3));
        let norm = Norm::new(&nw, &nb, 1e-6);
        let e = max_rel_err(
            &layer_norm(&x, norm).unwrap(),
            &layer_norm_candle(&x, norm).unwrap(),
        );
        assert!(e < 1e-5, "layer norm {e}");
        let (w, b, g) = (rand(&[24, 24], 4), rand(&[24], 5), rand(&[24], 6));
        for ext in [
            LinearExt::default(),
            LinearExt {
                prenorm: Some(norm),
                gelu: true,
                ..Default::default()
            },
            LinearExt {
                residual: Some((&x, &g)),
                ..Default::default()
            },
        ] {
            let got = linear(&x, &w, Some(&b), ext).unwrap();
            let want = linear_candle(&x, &w, Some(&b), ext).unwrap();
            let e = max_rel_err(&got, &want);
            assert!(e < 1e-5, "linear {e}");
        }
    }

    /// Mixed precision: bf16/f16 weights with f32 activations. The half kernel rounds the
    /// GEMM's input rows (after the fused norm) to the weights' type and accumulates in f32,
    /// so it equals candle's f32 ops on those rounded values up to summation order; against
    /// plain f32 activations it is within the half type's rounding.
    #[test]
    fn linear_with_half_weights() {
        let x = rand(&[2, 45, 96], 31);
        let (w, b, g) = (rand(&[80, 96], 32), rand(&[80], 33), rand(&[80], 34));
        let (nw, nb) = (rand(&[96], 35), rand(&[96], 36));
        let res = rand(&[2, 45, 80], 37);
        let norm = Norm::new(&nw, &nb, 1e-6);
        for dtype in [DType::BF16, DType::F16] {
            let wh = w.to_dtype(dtype).unwrap();
            let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            // The weight as stored, and also packed for oneDNN where it runs the type.
            let packed = pack_linear_weight(&wh).unwrap();
            for (gelu, prenorm, residual, packed) in [
                (false, false, false, None),
                (true, true, false, None),
                (false, true, true, None),
                (false, false, false, packed.as_ref()),
                (true, true, false, packed.as_ref()),
                (false, true, true, packed.as_ref()),
            ] {
                let ext = LinearExt {
                    prenorm: prenorm.then_some(norm),
                    gelu,
                    residual: residual.then_some((&res, &g)),
                    packed,
                };
                let got = linear(&x, &wh, Some(&b), ext).unwrap();
                assert_eq!(got.dtype(), DType::F32);
                // The same on the rounded GEMM input (normalised as the fused kernel does, so
                // that no value lands on the other side of a rounding boundary), by candle's
                // f32 ops.
                let xin = if prenorm {
                    layer_norm(&x, norm).unwrap()
                } else {
                    x.clone()
                };
                let plain = LinearExt {
                    prenorm: None,
                    ..ext
                };
                let want = linear_candle(&round(&xin), &round(&wh), Some(&b), plain).unwrap();
                let e = max_rel_err(&got, &want);
                let tol = if cpu::use_half_kernels(&wh) {
                    1e-5
                } else {
                    1e-2
                };
                let packed = packed.is_some();
                assert!(
                    e < tol,
                    "{dtype:?} gelu {gelu} norm {prenorm} res {residual} packed {packed}: {e}"
                );
                let f32_out = linear_candle(&x, &w, Some(&b), ext).unwrap();
                let e = max_rel_err(&got, &f32_out);
                assert!(e < 2e-2, "{dtype:?} vs f32: {e}");
            }
        }
    }

    #[test]
    fn resize_and_uv_embed_match_candle() {
        let x = rand(&[2, 4, 5, 7], 7);
        let e = max_rel_err(
            &resize_bilinear_ac(&x, 11, 9).unwrap(),
            &resize_bilinear_ac_candle(&x, 11, 9).unwrap(),
        );
        assert!(e < 1e-6, "resize {e}");
        let ex: Vec<f32> = (0..2 * 7).map(|i| i as f32 * 0.1).collect();
        let ey: Vec<f32> = (0..2 * 5).map(|i| -(i as f32) * 0.2).collect();
        let e = max_rel_err(
            &add_uv_embed(&x, &ex, &ey).unwrap(),
            &add_uv_embed_candle(&x, &ex, &ey).unwrap(),
        );
        assert!(e < 1e-6, "uv embed {e}");
        // both in one pass: the same values as the two ops one after the other
        let (ex, ey): (Vec<f32>, Vec<f32>) = (
            (0..2 * 9).map(|i| i as f32 * 0.1).collect(),
            (0..2 * 11).map(|i| -(i as f32) * 0.2).collect(),
        );
        let two = add_uv_embed_candle(&resize_bilinear_ac_candle(&x, 11, 9).unwrap(), &ex, &ey);
        let e = max_rel_err(
            &resize_bilinear_ac_uv(&x, 11, 9, &ex, &ey).unwrap(),
            &two.unwrap(),
        );
        assert!(e < 1e-6, "resize + uv embed {e}");
    }
}
