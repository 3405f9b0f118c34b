//! Feed-forward layers of the ViT blocks.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::FfnKind;
use super::layers::{linear, LayerNorm, Linear};
use super::ops::LinearExt;

/// fc1 -> exact-erf GELU -> fc2.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(i: usize, hidden: usize, o: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(i, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, o, vb.pp("fc2"))?,
        })
    }
}

impl Mlp {
    /// `x + gamma ⊙ mlp(norm(x))`.
    pub fn forward_block(&self, x: &Tensor, norm: &LayerNorm, gamma: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward_ext(
            x,
            LinearExt {
                prenorm: Some(norm.params()),
                gelu: true,
                ..Default::default()
            },
        )?;
        self.fc2.forward_ext(
            &h,
            LinearExt {
                residual: Some((x, gamma)),
                ..Default::default()
            },
        )
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_ext(
            x,
            LinearExt {
                gelu: true,
                ..Default::default()
            },
        )?)
    }
}

/// DINOv2 fused SwiGLU: `w3(silu(a) * b)` with `[a, b] = w12(x)`.
#[derive(Debug, Clone)]
pub struct SwiGluFused {
    w12: Linear,
    w3: Linear,
    hidden: usize,
}

impl SwiGluFused {
    /// Hidden width rule of the reference: `(int(h * 2 / 3) + 7) // 8 * 8`.
    pub fn hidden_dim(hidden: usize) -> usize {
        (hidden * 2 / 3).div_ceil(8) * 8
    }
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = Self::hidden_dim(hidden);
        Ok(Self {
            w12: linear(dim, 2 * hidden, vb.pp("w12"))?,
            w3: linear(hidden, dim, vb.pp("w3"))?,
            hidden,
        })
    }
}

impl SwiGluFused {
    fn hidden_act(&self, x: &Tensor, prenorm: Option<&LayerNorm>) -> Result<Tensor> {
        let x12 = self.w12.forward_ext(
            x,
            LinearExt {
                prenorm: prenorm.map(LayerNorm::params),
                ..Default::default()
            },
        )?;
        let a = x12.narrow(D::Minus1, 0, self.hidden)?;
        let b = x12.narrow(D::Minus1, self.hidden, self.hidden)?;
        a.silu()? * b
    }

    /// `x + gamma ⊙ swiglu(norm(x))`.
    pub fn forward_block(&self, x: &Tensor, norm: &LayerNorm, gamma: &Tensor) -> Result<Tensor> {
        self.w3.forward_ext(
            &self.hidden_act(x, Some(norm))?,
            LinearExt {
                residual: Some((x, gamma)),
                ..Default::default()
            },
        )
    }
}

impl Module for SwiGluFused {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.w3.forward(&self.hidden_act(x, None)?)
    }
}

#[derive(Debug, Clone)]
pub enum Ffn {
    Mlp(Mlp),
    SwiGlu(SwiGluFused),
}

impl Ffn {
    pub fn new(kind: FfnKind, dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            FfnKind::Mlp => Self::Mlp(Mlp::new(dim, hidden, dim, vb)?),
            FfnKind::SwiGluFused => Self::SwiGlu(SwiGluFused::new(dim, hidden, vb)?),
        })
    }
}

impl Ffn {
    /// `x + gamma ⊙ ffn(norm(x))` (norm, LayerScale and residual fused on the CPU path).
    pub fn forward_block(&self, x: &Tensor, norm: &LayerNorm, gamma: &Tensor) -> Result<Tensor> {
        match self {
            Self::Mlp(m) => m.forward_block(x, norm, gamma),
            Self::SwiGlu(m) => m.forward_block(x, norm, gamma),
        }
    }
}

impl Module for Ffn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Mlp(m) => m.forward(x),
            Self::SwiGlu(m) => m.forward(x),
        }
    }
}
