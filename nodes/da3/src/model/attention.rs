//! Multi-head self-attention with optional QK-norm and 2-D rotary position embedding.
//!
//! 2-D RoPE as in the reference: the head dim is split in two halves, the first rotated by the
//! token's row index, the second by its column index, each half with the 1-D "rotate half"
//! convention and frequencies `base^(-2k/d)` (d = head_dim / 2).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{linear, LayerNorm, Linear};
use super::ops::{self, LinearExt, QkPrep};

/// Precomputed cos/sin tables for a token sequence, shape (N, head_dim) each.
#[derive(Debug, Clone)]
pub struct Rope2d {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rope2d {
    /// `positions`: (row, col) per token.
    pub fn new(
        positions: &[(u32, u32)],
        head_dim: usize,
        base: f32,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2; // features per spatial axis
        let nfreq = half / 2;
        let inv_freq: Vec<f32> = (0..nfreq)
            .map(|k| 1.0 / base.powf((2 * k) as f32 / half as f32))
            .collect();
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * head_dim);
        let mut sin = Vec::with_capacity(n * head_dim);
        for &(py, px) in positions {
            for p in [py, px] {
                // angles duplicated: [a_0..a_{nf-1}, a_0..a_{nf-1}]
                for _rep in 0..2 {
                    for f in &inv_freq {
                        let a = p as f32 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let cos = Tensor::from_vec(cos, (n, head_dim), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, head_dim), dev)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// Apply to (B, heads, N, head_dim) by candle's ops ([`ops::rope_candle`]; the
    /// attention op fuses it with the QK-norm on the CPU path).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        ops::rope_candle(x, &self.cos, &self.sin)
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    q_norm: Option<LayerNorm>,
    k_norm: Option<LayerNorm>,
    proj: Linear,
    num_heads: usize,
    use_rope: bool,
}

impl Attention {
    pub fn new(
        dim: usize,
        num_heads: usize,
        qk_norm: bool,
        use_rope: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let hd = dim / num_heads;
        let (q_norm, k_norm) = if qk_norm {
            (
                Some(LayerNorm::new(hd, 1e-5, vb.pp("q_norm"))?),
                Some(LayerNorm::new(hd, 1e-5, vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?,
            q_norm,
            k_norm,
            proj: linear(dim, dim, vb.pp("proj"))?,
            num_heads,
            use_rope,
        })
    }

    /// x: (B, N, C).
    pub fn forward(&self, x: &Tensor, rope: Option<&Rope2d>) -> Result<Tensor> {
        self.forward_impl(x, None, rope, None, true)
    }

    /// `x + gamma ⊙ attention(norm(x))`: a pre-norm block's attention branch with its
    /// residual, the norm and the residual fused into the projections on the CPU path.
    /// `half_attention`: with half-precision weights (mixed precision), q·kᵀ and p·v may
    /// take inputs in that type too ([`ops::attention`]); `false` keeps them f32.
    pub fn forward_block(
        &self,
        x: &Tensor,
        norm: &LayerNorm,
        rope: Option<&Rope2d>,
        gamma: &Tensor,
        half_attention: bool,
    ) -> Result<Tensor> {
        self.forward_impl(x, Some(norm), rope, Some((x, gamma)), half_attention)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        prenorm: Option<&LayerNorm>,
        rope: Option<&Rope2d>,
        residual: Option<(&Tensor, &Tensor)>,
        half_attention: bool,
    ) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let h = self.num_heads;
        let hd = c / h;
        let qkv = self
            .qkv
            .forward_ext(
                x,
                LinearExt {
                    prenorm: prenorm.map(LayerNorm::params),
                    ..Default::default()
                },
            )?
            .reshape((b, n, 3, h, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let prep = QkPrep {
            q_norm: self.q_norm.as_ref().map(LayerNorm::params),
            k_norm: self.k_norm.as_ref().map(LayerNorm::params),
            rope: match (self.use_rope, rope) {
                (true, Some(r)) => Some((&r.cos, &r.sin)),
                _ => None,
            },
        };
        let products = if half_attention {
            self.qkv.gemm_dtype()
        } else {
            DType::F32
        };
        let out = ops::attention(&qkv, prep, products)?;
        self.proj.forward_ext(
            &out,
            LinearExt {
                residual,
                ..Default::default()
            },
        )
    }
}
