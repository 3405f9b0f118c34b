//! Convolutions: 2-D (with the DPT's fusions), from token-major features, transposed.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, ConvTranspose2dConfig};

use super::{cpu, use_kernels, ConvExt, ConvHead, FusionLayers, HalfConv, HalfLayer};

/// `[1x1(relu(·))] (conv(relu?(x)) + residual?)` of an NCHW map (`weight` (Co, Ci, kh, kw)).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    ext: ConvExt<'_>,
) -> Result<Tensor> {
    if use_kernels(x) && cfg.dilation == 1 && cfg.groups == 1 {
        return cpu::conv2d(x, weight, bias, cfg.stride, cfg.padding, ext);
    }
    conv2d_candle(x, weight, bias, cfg, ext)
}

/// [`conv2d`] by candle's ops. The convolution runs in the weight's dtype (f32 weights for
/// bf16 runs on the CPU, where candle has no bf16 convolution), the result in x's.
pub fn conv2d_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    ext: ConvExt<'_>,
) -> Result<Tensor> {
    let x = if ext.relu_in { x.relu()? } else { x.clone() };
    let conv = candle_nn::Conv2d::new(weight.clone(), bias.cloned(), *cfg);
    let y = conv
        .forward(&x.to_dtype(weight.dtype())?)?
        .to_dtype(x.dtype())?;
    let y = match ext.residual {
        Some(r) => (y + r)?,
        None => y,
    };
    match ext.then_1x1 {
        Some((w2, b2)) => {
            // in the 1x1's own dtype (f32 where convs compute in f32), back to y's
            let z = y.relu()?.to_dtype(w2.dtype())?.conv2d(w2, 0, 1, 1, 1)?;
            let z = match b2 {
                Some(b2) => z.broadcast_add(&b2.reshape((1, (), 1, 1))?)?,
                None => z,
            };
            z.to_dtype(y.dtype())
        }
        None => Ok(y),
    }
}

/// The name of a convolution layer that runs in the mixed precision's half type where a
/// kernel takes it ([`upsampled_heads`]), for weights of `dtype` on `device`: on the CPU for
/// bf16; `None` otherwise (f32, f16, GPU), where the layer runs as any other.
pub fn half_conv(dtype: DType, device: &Device) -> Option<HalfConv> {
    let kind = cpu::Half::of(dtype)?;
    device.is_cpu().then(|| HalfConv::new(kind)).flatten()
}

/// The DPT's output heads on one map: `x` upsampled (bilinear, align corners) to `size`
/// [+ the UV embedding of tables `uv`, as [`super::add_uv_embed`]'s], then per head
/// `last(relu(conv(·) + bias)) + last_bias`, `conv` a same-padded stride-1 3x3. On the CPU,
/// heads whose convolution runs in bf16 ([`ConvHead::half`]) take oneDNN's channels-last
/// kernel band by band; the others upsample once and run [`conv2d`] with the 1x1 fused.
pub fn upsampled_heads(
    x: &Tensor,
    (h, w): (usize, usize),
    uv: Option<(&[f32], &[f32])>,
    heads: &[ConvHead<'_>],
) -> Result<Vec<Tensor>> {
    if use_kernels(x) {
        if let Some(outs) = cpu::upsampled_heads(x, (h, w), uv, heads)? {
            return Ok(outs);
        }
    }
    let up = match uv {
        Some((ex, ey)) => super::resize_bilinear_ac_uv(x, h, w, ex, ey)?,
        None => super::resize_bilinear_ac(x, h, w)?,
    };
    let same = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    heads
        .iter()
        .map(|hd| {
            let ext = ConvExt {
                then_1x1: Some((hd.last, hd.last_bias)),
                ..Default::default()
            };
            conv2d(&up, hd.conv, Some(hd.bias), &same, ext)
        })
        .collect()
}

/// The any-view DPT's depth decoder in one op, where a kernel runs it whole: `levels` (the
/// neck's four resized maps, finest first) through their `adapters` (the `layer*_rn`
/// 3x3s), fused top-down by `blocks` (refinenet1..4, each block's output resized to the
/// next finer level, refinenet1's to twice its size), then `conv1` and the output `heads`
/// as [`upsampled_heads`] runs them. On the CPU with mixed precision (every layer with its
/// bf16 form, [`half_conv`]) oneDNN's channels-last bf16 kernels run it; `Ok(None)`
/// otherwise, and the caller runs the layers one by one.
pub fn fusion_heads(
    levels: &[Tensor],
    adapters: &[HalfLayer<'_>],
    blocks: &[FusionLayers<'_>],
    conv1: HalfLayer<'_>,
    out: (usize, usize),
    uv: Option<(&[f32], &[f32])>,
    heads: &[ConvHead<'_>],
) -> Result<Option<Vec<Tensor>>> {
    match levels.first() {
        Some(l) if use_kernels(l) => {
            cpu::fusion_heads(levels, adapters, blocks, conv1, out, uv, heads)
        }
        _ => Ok(None),
    }
}

/// Convolution of (B, h·w, C) tokens seen as a (B, C, h, w) map. A 1x1 stride-1 kernel
/// reads the tokens in place on the CPU path (no transposed copy).
pub fn conv2d_tokens(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let pointwise = weight.dims().get(2..) == Some(&[1, 1][..])
        && (cfg.stride, cfg.padding, cfg.dilation, cfg.groups) == (1, 0, 1, 1);
    if use_kernels(x) && pointwise {
        return cpu::conv1x1_tokens(x, weight, bias, h, w);
    }
    let (map, weight) = as_map(x, weight, (h, w))?;
    conv2d(&map, &weight, bias, cfg, ConvExt::default())
}

/// The tokens as a (B, C, h, w) map, and the weight in their dtype (a projection's half
/// weights, `layers::projection1x1`, outside the CPU kernels).
fn as_map(x: &Tensor, weight: &Tensor, (h, w): (usize, usize)) -> Result<(Tensor, Tensor)> {
    Ok((tokens_map(x, h, w)?, weight.to_dtype(x.dtype())?))
}

/// [`conv2d_tokens`] by candle's ops (transposed to NCHW first).
pub fn conv2d_tokens_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let (map, weight) = as_map(x, weight, (h, w))?;
    conv2d_candle(&map, &weight, bias, cfg, ConvExt::default())
}

/// (B, h·w, C) tokens as a contiguous (B, C, h, w) map.
fn tokens_map(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

/// Transposed convolution of an NCHW map (`weight` (Ci, Co, kh, kw)); kernel = stride
/// without padding (the DPT's upsampling) is one GEMM + scatter on the CPU path.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &ConvTranspose2dConfig,
) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    let k_eq_s = kh == cfg.stride
        && kw == cfg.stride
        && (cfg.padding, cfg.output_padding, cfg.dilation) == (0, 0, 1);
    if use_kernels(x) && k_eq_s {
        return cpu::conv_transpose2d_k_eq_s(x, weight, bias);
    }
    conv_transpose2d_candle(x, weight, bias, cfg)
}

/// [`conv_transpose2d`] by candle's ops, in the weight's dtype (as [`conv2d_candle`]).
pub fn conv_transpose2d_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &ConvTranspose2dConfig,
) -> Result<Tensor> {
    candle_nn::ConvTranspose2d::new(weight.clone(), bias.cloned(), *cfg)
        .forward(&x.to_dtype(weight.dtype())?)?
        .to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, rand};

    fn cfg(stride: usize, padding: usize) -> Conv2dConfig {
        Conv2dConfig {
            stride,
            padding,
            ..Default::default()
        }
    }

    #[test]
    fn conv2d_with_fusions_matches_candle() {
        let x = rand(&[2, 6, 13, 11], 1);
        let (wt, b) = (rand(&[8, 6, 3, 3], 2), rand(&[8], 3));
        let r = rand(&[2, 8, 13, 11], 4);
        let (w2, b2) = (rand(&[2, 8, 1, 1], 5), rand(&[2], 6));
        for ext in [
            ConvExt::default(),
            ConvExt {
                relu_in: true,
                residual: Some(&r),
                ..Default::default()
            },
            ConvExt {
                then_1x1: Some((&w2, Some(&b2))),
                ..Default::default()
            },
        ] {
            let got = conv2d(&x, &wt, Some(&b), &cfg(1, 1), ext).unwrap();
            let want = conv2d_candle(&x, &wt, Some(&b), &cfg(1, 1), ext).unwrap();
            let e = max_rel_err(&got, &want);
            assert!(e < 1e-5, "{e}");
        }
        let got = conv2d(&x, &wt, None, &cfg(2, 1), ConvExt::default()).unwrap();
        let want = conv2d_candle(&x, &wt, None, &cfg(2, 1), ConvExt::default()).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-5);
    }

    #[test]
    fn token_and_transposed_convs_match_candle() {
        // tokens as a narrowed view (skip token 0), like the backbone outputs
        let t = rand(&[2, 1 + 12, 10], 7);
        let x = t.narrow(1, 1, 12).unwrap();
        for k in [1usize, 3] {
            let (wt, b) = (rand(&[7, 10, k, k], 8), rand(&[7], 9));
            let c = cfg(1, k / 2);
            let got = conv2d_tokens(&x, &wt, Some(&b), &c, (3, 4)).unwrap();
            let want = conv2d_tokens_candle(&x, &wt, Some(&b), &c, (3, 4)).unwrap();
            assert_eq!(got.dims(), &[2, 7, 3, 4]);
            assert!(max_rel_err(&got, &want) < 1e-5, "k {k}");
        }
        let x = rand(&[2, 5, 7, 9], 10);
        let (wt, b) = (rand(&[5, 6, 4, 4], 11), rand(&[6], 12));
        let c = ConvTranspose2dConfig {
            stride: 4,
            ..Default::default()
        };
        let got = conv_transpose2d(&x, &wt, Some(&b), &c).unwrap();
        let want = conv_transpose2d_candle(&x, &wt, Some(&b), &c).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-5);
    }
}
