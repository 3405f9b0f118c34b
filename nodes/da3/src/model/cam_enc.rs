//! Camera encoder: known cameras -> one token per view (replaces the learned camera token).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::{Block, BlockConfig};
use super::config::FfnKind;
use super::ffn::Mlp;
use super::layers::LayerNorm;
use super::transform::{
    extri_intri_to_pose_encoding, extrinsics_from_tensor, intrinsics_from_tensor,
};

const TRUNK_DEPTH: usize = 4;
const NUM_HEADS: usize = 16;

#[derive(Debug, Clone)]
pub struct CameraEnc {
    pose_branch: Mlp,
    token_norm: LayerNorm,
    trunk: Vec<Block>,
    trunk_norm: LayerNorm,
}

impl CameraEnc {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let bc = BlockConfig {
            dim,
            num_heads: NUM_HEADS,
            mlp_ratio: 4.0,
            ffn: FfnKind::Mlp,
            qk_norm: false,
            rope: false,
            ln_eps: 1e-5,
        };
        let trunk = (0..TRUNK_DEPTH)
            .map(|i| Block::new(bc, vb.pp("trunk").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pose_branch: Mlp::new(9, dim / 2, dim, vb.pp("pose_branch"))?,
            token_norm: LayerNorm::new(dim, 1e-5, vb.pp("token_norm"))?,
            trunk,
            trunk_norm: LayerNorm::new(dim, 1e-5, vb.pp("trunk_norm"))?,
        })
    }

    /// extrinsics (B, S, 4|3, 4) world-to-camera, intrinsics (B, S, 3, 3) in pixels of the
    /// (H, W) network input -> tokens (B, S, dim) in `dtype` (computed in f32).
    pub fn forward(
        &self,
        extrinsics: &Tensor,
        intrinsics: &Tensor,
        hw: (usize, usize),
        dtype: DType,
    ) -> Result<Tensor> {
        let (b, s) = (extrinsics.dim(0)?, extrinsics.dim(1)?);
        let e = extrinsics_from_tensor(extrinsics)?;
        let k = intrinsics_from_tensor(intrinsics)?;
        if e.len() != k.len() {
            candle_core::bail!("extrinsics and intrinsics disagree on the number of views");
        }
        let pe: Vec<f32> = e
            .iter()
            .zip(&k)
            .flat_map(|(e, k)| extri_intri_to_pose_encoding(e, k, hw).map(|v| v as f32))
            .collect();
        let pe = Tensor::from_vec(pe, (b, s, 9), extrinsics.device())?;
        let mut x = self.token_norm.forward(&self.pose_branch.forward(&pe)?)?;
        for blk in &self.trunk {
            x = blk.forward(&x, None, false)?; // f32 weights: f32 throughout
        }
        self.trunk_norm.forward(&x)?.to_dtype(dtype)
    }
}
