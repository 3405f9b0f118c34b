//! Pre-norm transformer block with LayerScale (DINOv2 style).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Attention, Rope2d};
use super::config::FfnKind;
use super::ffn::Ffn;
use super::layers::{act_vb, LayerNorm};

#[derive(Debug, Clone)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    ls1: Tensor,
    norm2: LayerNorm,
    mlp: Ffn,
    ls2: Tensor,
}

#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    pub dim: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub ffn: FfnKind,
    pub qk_norm: bool,
    pub rope: bool,
    /// LayerNorm eps of norm1/norm2 (1e-6 in the backbone, 1e-5 in the camera encoder).
    pub ln_eps: f64,
}

impl Block {
    pub fn new(cfg: BlockConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = (cfg.dim as f64 * cfg.mlp_ratio) as usize;
        Ok(Self {
            norm1: LayerNorm::new(cfg.dim, cfg.ln_eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.rope, vb.pp("attn"))?,
            ls1: act_vb(vb.pp("ls1")).get(cfg.dim, "gamma")?,
            norm2: LayerNorm::new(cfg.dim, cfg.ln_eps, vb.pp("norm2"))?,
            mlp: Ffn::new(cfg.ffn, cfg.dim, hidden, vb.pp("mlp"))?,
            ls2: act_vb(vb.pp("ls2")).get(cfg.dim, "gamma")?,
        })
    }

    /// x: (B, N, C). `half_attention`: the attention's two products may take the weights'
    /// half type (mixed precision, see [`Attention::forward_block`]).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&Rope2d>,
        half_attention: bool,
    ) -> Result<Tensor> {
        let x = self
            .attn
            .forward_block(x, &self.norm1, rope, &self.ls1, half_attention)?;
        self.mlp.forward_block(&x, &self.norm2, &self.ls2)
    }
}
