//! Multi-head self-attention with optional QK-norm and 2-D rotary position embedding.
//!
//! 2-D RoPE as in the reference: the head dim is split in two halves, the first rotated by the
//! token's row index, the second by its column index, each half with the 1-D "rotate half"
//! convention and frequencies `base^(-2k/d)` (d = head_dim / 2).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::cpu;
use super::layers::{linear, softmax_last_dim, LayerNorm, Linear, LinearExt};

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

    /// Apply to (B, heads, N, head_dim).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let q = d / 4;
        let p0 = x.narrow(D::Minus1, 0, q)?;
        let p1 = x.narrow(D::Minus1, q, q)?;
        let p2 = x.narrow(D::Minus1, 2 * q, q)?;
        let p3 = x.narrow(D::Minus1, 3 * q, q)?;
        let rot = Tensor::cat(&[&p1.neg()?, &p0, &p3.neg()?, &p2], D::Minus1)?;
        x.broadcast_mul(&self.cos)? + rot.broadcast_mul(&self.sin)?
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

/// Bound on the elements of one attention-score buffer (queries are processed in chunks).
const MAX_SCORE_ELEMS: usize = 1 << 26;

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
        self.forward_impl(x, None, rope, None)
    }

    /// `x + gamma ⊙ attention(norm(x))`: a pre-norm block's attention branch with its
    /// residual, the norm and the residual fused into the projections on the CPU path.
    pub fn forward_block(
        &self,
        x: &Tensor,
        norm: &LayerNorm,
        rope: Option<&Rope2d>,
        gamma: &Tensor,
    ) -> Result<Tensor> {
        self.forward_impl(x, Some(norm), rope, Some((x, gamma)))
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        prenorm: Option<&LayerNorm>,
        rope: Option<&Rope2d>,
        residual: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let h = self.num_heads;
        let hd = c / h;
        let qkv = self
            .qkv
            .forward_ext(
                x,
                LinearExt {
                    prenorm,
                    ..Default::default()
                },
            )?
            .reshape((b, n, 3, h, hd))?
            .permute((2, 0, 3, 1, 4))?;
        if cpu::use_kernels(x) {
            // q, k, v stay strided views of the qkv output; norm and RoPE in one pass.
            let rope_t = match (self.use_rope, rope) {
                (true, Some(r)) => Some((&r.cos, &r.sin)),
                _ => None,
            };
            let prep = |t: Tensor, norm: &Option<LayerNorm>| -> Result<Tensor> {
                let nm = norm.as_ref().map(|n| n.params());
                if nm.is_none() && rope_t.is_none() {
                    Ok(t)
                } else {
                    cpu::norm_rope(&t, nm, rope_t)
                }
            };
            // `narrow + squeeze` keeps the strides (`get` would copy: it reshapes).
            let part = |i: usize| qkv.narrow(0, i, 1)?.squeeze(0);
            let q = prep(part(0)?, &self.q_norm)?;
            let k = prep(part(1)?, &self.k_norm)?;
            let out = cpu::attention(&q, &k, &part(2)?, 1.0 / (hd as f32).sqrt())?;
            return self.proj.forward_ext(
                &out,
                LinearExt {
                    residual,
                    ..Default::default()
                },
            );
        }
        let mut q = qkv.get(0)?.contiguous()?;
        let mut k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        if let Some(nq) = &self.q_norm {
            q = nq.forward(&q)?;
        }
        if let Some(nk) = &self.k_norm {
            k = nk.forward(&k)?;
        }
        if self.use_rope {
            if let Some(r) = rope {
                q = r.apply(&q)?;
                k = r.apply(&k)?;
            }
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
        let out = out.transpose(1, 2)?.reshape((b, n, c))?;
        self.proj.forward_ext(
            &out,
            LinearExt {
                residual,
                ..Default::default()
            },
        )
    }
}
