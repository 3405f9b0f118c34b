//! Small building blocks shared by the components: LayerNorm with an explicit eps that
//! reduces in f32 whatever the run dtype, linear / conv layers with the checkpoint names.
//! Their forwards are [`super::ops`] calls (the fused CPU kernels where they apply).

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, ConvTranspose2dConfig, VarBuilder};

use super::ops::{self, ConvExt, HalfConv, HalfLayer, LinearExt, Norm, PackedWeight};

/// `nn.LayerNorm` over the last dim. Statistics are always computed in f32 (candle's CPU
/// reductions accumulate in the storage type for bf16/f16).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        let bias = vb.get(dim, "bias")?.to_dtype(DType::F32)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, self.params())
    }
}

impl LayerNorm {
    /// The parameters, for ops that fuse the norm ([`LinearExt::prenorm`], QK-norm).
    pub fn params(&self) -> Norm<'_> {
        Norm::new(&self.weight, &self.bias, self.eps)
    }
}

/// `nn.Linear` with the checkpoint's `weight` (out, in) and `bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// The half-precision weight also in oneDNN's layout ([`ops::pack_linear_weight`]).
    packed: Option<Arc<PackedWeight>>,
}

impl Linear {
    /// `[res + gamma ⊙] [gelu](norm?(x) · Wᵀ + b)` ([`ops::linear`]).
    pub fn forward_ext(&self, x: &Tensor, ext: LinearExt<'_>) -> Result<Tensor> {
        let ext = LinearExt {
            packed: self.packed.as_deref(),
            ..ext
        };
        ops::linear(x, self.inner.weight(), self.inner.bias(), ext)
    }

    /// The weight's dtype: on the CPU, bf16/f16 is the mixed precision's GEMM type.
    pub fn gemm_dtype(&self) -> DType {
        self.inner.weight().dtype()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_ext(x, LinearExt::default())
    }
}

/// A linear layer: the weight in the builder's dtype (on the CPU with bf16/f16 that is the
/// mixed precision's half-precision GEMM weight, kept also in oneDNN's layout where oneDNN
/// runs it, [`ops::pack_linear_weight`]; f32 there in the CPU kernels' layout,
/// [`ops::linear_weight`]), the bias in the activations' dtype.
pub fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = ops::linear_weight(vb.get((o, i), "weight")?)?;
    let bias = act_vb(vb).get(o, "bias")?;
    let packed = ops::pack_linear_weight(&weight)?.map(Arc::new);
    Ok(Linear {
        inner: candle_nn::Linear::new(weight, Some(bias)),
        packed,
    })
}

/// The builder for parameters the activations use directly (biases, tokens, position
/// embeddings, LayerScale): on the CPU activations are always f32 (mixed precision keeps
/// only the GEMM weights in bf16/f16), elsewhere the builder's dtype.
pub fn act_vb(vb: VarBuilder) -> VarBuilder {
    if vb.device().is_cpu() && vb.dtype() != DType::F32 {
        vb.set_dtype(DType::F32)
    } else {
        vb
    }
}

/// The builder for a convolution's weights: f32 on the CPU (the convolution kernels take
/// f32 weights; the mixed precision's half weights are the linear layers').
fn conv_vb(vb: VarBuilder) -> VarBuilder {
    act_vb(vb)
}

/// A 2-D convolution layer; on the CPU its weights are f32 whatever the precision (a
/// [`Conv2d::mixed`] layer's are also rounded to bf16 where its kernel runs that type).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    half: Option<Arc<HalfConv>>,
}

impl Conv2d {
    fn build(
        i: usize,
        o: usize,
        k: usize,
        cfg: Conv2dConfig,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = conv_vb(vb);
        let inner = if bias {
            candle_nn::conv2d(i, o, k, cfg, vb)?
        } else {
            candle_nn::conv2d_no_bias(i, o, k, cfg, vb)?
        };
        Ok(Self { inner, half: None })
    }
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
    /// Set for a [`Conv2d::mixed`] layer in a bf16 run on the CPU.
    pub fn half(&self) -> Option<&HalfConv> {
        self.half.as_deref()
    }

    /// The layer as the mixed-precision kernels take it ([`ops::fusion_heads`]).
    pub fn half_layer(&self) -> HalfLayer<'_> {
        HalfLayer {
            weight: self.inner.weight(),
            bias: self.inner.bias(),
            half: self.half(),
        }
    }

    /// This layer, run in the mixed precision's half type where a kernel takes it (on the
    /// CPU with a bf16 builder `vb`: oneDNN's bf16 convolution, [`ops::upsampled_heads`],
    /// [`ops::fusion_heads`]);
    /// the f32 weights stay for the other paths.
    pub fn mixed(self, vb: &VarBuilder) -> Self {
        let half = ops::half_conv(vb.dtype(), vb.device()).map(Arc::new);
        Self { half, ..self }
    }

    /// `[1x1(relu(·))] (conv(relu?(x)) + residual?)` ([`ops::conv2d`]).
    pub fn forward_ext(&self, x: &Tensor, ext: ConvExt<'_>) -> Result<Tensor> {
        let (w, b) = (self.inner.weight(), self.inner.bias());
        ops::conv2d(x, w, b, self.inner.config(), ext)
    }

    /// The conv of (B, h·w, C) tokens seen as a (B, C, h, w) map ([`ops::conv2d_tokens`]).
    pub fn forward_tokens(&self, x: &Tensor, hw: (usize, usize)) -> Result<Tensor> {
        let (w, b) = (self.inner.weight(), self.inner.bias());
        ops::conv2d_tokens(x, w, b, self.inner.config(), hw)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_ext(x, ConvExt::default())
    }
}

/// Transposed convolution (kernel = stride, no padding); f32 weights on the CPU.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    inner: candle_nn::ConvTranspose2d,
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.inner.weight(), self.inner.bias());
        ops::conv_transpose2d(x, w, b, self.inner.config())
    }
}

pub fn conv2d(
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Conv2d::build(
        i,
        o,
        k,
        Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        },
        true,
        vb,
    )
}

/// A 1x1 projection of token features (`(o, i, 1, 1)` weight and a bias): on the CPU with
/// mixed precision the weight stays in the half type, as a linear layer's (the bias f32;
/// [`ops::conv2d_tokens`] runs it by oneDNN where it has a kernel for the type), elsewhere
/// as [`conv2d`].
pub fn projection1x1(i: usize, o: usize, vb: VarBuilder) -> Result<Conv2d> {
    let weight = vb.get((o, i, 1, 1), "weight")?;
    let bias = act_vb(vb).get(o, "bias")?;
    Ok(Conv2d {
        inner: candle_nn::Conv2d::new(weight, Some(bias), Conv2dConfig::default()),
        half: None,
    })
}

pub fn conv2d_no_bias(
    i: usize,
    o: usize,
    k: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Conv2d::build(
        i,
        o,
        k,
        Conv2dConfig {
            padding,
            ..Default::default()
        },
        false,
        vb,
    )
}

pub fn conv_transpose2d(c: usize, k: usize, vb: VarBuilder) -> Result<ConvTranspose2d> {
    let vb = conv_vb(vb);
    let cfg = ConvTranspose2dConfig {
        padding: 0,
        output_padding: 0,
        stride: k,
        dilation: 1,
    };
    Ok(ConvTranspose2d {
        inner: candle_nn::conv_transpose2d(c, c, k, cfg, vb)?,
    })
}
