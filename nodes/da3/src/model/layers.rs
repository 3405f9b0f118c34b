//! Small building blocks shared by the components: LayerNorm with an explicit eps that
//! reduces in f32 whatever the run dtype, linear / conv constructors with the checkpoint names.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, ConvTranspose2dConfig, VarBuilder};

use super::cpu;

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
        if cpu::use_kernels(x) {
            return cpu::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        self.forward_ref(x)
    }
}

impl LayerNorm {
    /// (weight, bias, eps) for the fused CPU kernels.
    pub fn params(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }

    fn forward_ref(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let xc = xf.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        y.broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(dtype)
    }
}

/// Softmax over the last dim, reduced in f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        candle_nn::ops::softmax_last_dim(x)
    } else {
        candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    }
}

/// `nn.Linear` with the checkpoint's `weight` (out, in) and `bias`; f32 on the CPU goes
/// through [`cpu::linear`] (bias and GELU fused).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

/// What a [`Linear`] does around its matmul (all optional); fused on the CPU path.
#[derive(Default, Clone, Copy)]
pub struct LinearExt<'a> {
    /// LayerNorm of the input first (pre-norm blocks).
    pub prenorm: Option<&'a LayerNorm>,
    /// Exact-erf GELU of the output.
    pub gelu: bool,
    /// `res + gamma ⊙ y` (residual with LayerScale).
    pub residual: Option<(&'a Tensor, &'a Tensor)>,
}

impl Linear {
    /// `[res + gamma ⊙] [gelu](norm?(x) · Wᵀ + b)`.
    pub fn forward_ext(&self, x: &Tensor, ext: LinearExt<'_>) -> Result<Tensor> {
        if cpu::use_kernels(x) && ext.residual.is_none_or(|(r, _)| r.dtype() == x.dtype()) {
            let cext = cpu::LinearExt {
                prenorm: ext.prenorm.map(|n| n.params()),
                gelu: ext.gelu,
                residual: ext.residual,
            };
            return cpu::linear(x, self.inner.weight(), self.inner.bias(), cext);
        }
        let mut y = match ext.prenorm {
            Some(n) => self.inner.forward(&n.forward(x)?)?,
            None => self.inner.forward(x)?,
        };
        if ext.gelu {
            y = y.gelu_erf()?;
        }
        match ext.residual {
            Some((r, g)) => r + y.broadcast_mul(g)?,
            None => Ok(y),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_ext(x, LinearExt::default())
    }
}

pub fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear(i, o, vb)?,
    })
}

/// Whether convolutions must run in f32: candle has no bf16 convolution on CPU.
fn conv_needs_f32(vb: &VarBuilder) -> bool {
    vb.dtype() == DType::BF16 && vb.device().is_cpu()
}

/// A 2-D convolution layer; on CPU with bf16 weights it computes in f32.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    f32_compute: bool,
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
        let f32_compute = conv_needs_f32(&vb);
        let vb = if f32_compute {
            vb.set_dtype(DType::F32)
        } else {
            vb
        };
        let inner = if bias {
            candle_nn::conv2d(i, o, k, cfg, vb)?
        } else {
            candle_nn::conv2d_no_bias(i, o, k, cfg, vb)?
        };
        Ok(Self { inner, f32_compute })
    }
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// `conv(relu?(x)) + residual?`, fused on the CPU path.
    pub fn forward_ext(&self, x: &Tensor, ext: cpu::ConvExt<'_>) -> Result<Tensor> {
        let cfg = self.inner.config();
        if cpu::use_kernels(x) && cfg.dilation == 1 && cfg.groups == 1 {
            return cpu::conv2d(
                x,
                self.inner.weight(),
                self.inner.bias(),
                cfg.stride,
                cfg.padding,
                ext,
            );
        }
        let x = if ext.relu_in { x.relu()? } else { x.clone() };
        let y = if self.f32_compute {
            self.inner
                .forward(&x.to_dtype(DType::F32)?)?
                .to_dtype(x.dtype())?
        } else {
            self.inner.forward(&x)?
        };
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
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_ext(x, cpu::ConvExt::default())
    }
}

/// Transposed convolution (kernel = stride, no padding); f32 compute for bf16 on CPU.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    inner: candle_nn::ConvTranspose2d,
    f32_compute: bool,
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if cpu::use_kernels(x) {
            // Built with kernel = stride and no padding (see `conv_transpose2d`).
            return cpu::conv_transpose2d_k_eq_s(x, self.inner.weight(), self.inner.bias());
        }
        if self.f32_compute {
            self.inner
                .forward(&x.to_dtype(DType::F32)?)?
                .to_dtype(x.dtype())
        } else {
            self.inner.forward(x)
        }
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
    let f32_compute = conv_needs_f32(&vb);
    let vb = if f32_compute {
        vb.set_dtype(DType::F32)
    } else {
        vb
    };
    let cfg = ConvTranspose2dConfig {
        padding: 0,
        output_padding: 0,
        stride: k,
        dilation: 1,
    };
    Ok(ConvTranspose2d {
        inner: candle_nn::conv_transpose2d(c, c, k, cfg, vb)?,
        f32_compute,
    })
}

/// Bilinear resize of an NCHW map with `align_corners = true` (inputs are made contiguous
/// first: candle's kernel misreads strided views).
pub fn resize_bilinear_ac(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = x.dims4()?;
    if ih == h && iw == w {
        return Ok(x.clone());
    }
    if cpu::use_kernels(x) {
        return cpu::resize_bilinear_ac(x, h, w);
    }
    x.contiguous()?.upsample_bilinear2d(h, w, true)
}
