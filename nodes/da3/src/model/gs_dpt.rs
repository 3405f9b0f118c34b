//! `GSDPT`: the Gaussian-splat head of DA3-GIANT (and the nested model's any-view branch). A
//! DPT over the same four backbone levels (position embeddings on, no token norm, no sky
//! head) whose full-resolution map gets the input image added through a small conv stack
//! (`images_merger`) before the output convs; per pixel it gives the raw Gaussian parameters
//! (linear) and a density (sigmoid), which [`super::gs_adapter`] turns into world-space
//! Gaussians.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::HeadConfig;
use super::dpt::{add_uv_pos_embed, DptNeck, FusionChain, OutConv2};
use super::layers::{conv2d, Conv2d};
use super::ops::resize_bilinear_ac;

/// Per-pixel output of the head, views of the batch flattened.
#[derive(Debug, Clone)]
pub struct GsHeadOutput {
    /// Raw Gaussian parameters (BS, H, W, output_dim - 1), channels last.
    pub raw: Tensor,
    /// Density in (0, 1) (BS, H, W): the opacity.
    pub density: Tensor,
}

#[derive(Debug, Clone)]
pub struct GsDpt {
    neck: DptNeck,
    chain: FusionChain,
    output_conv1: Conv2d,
    output_conv2: OutConv2,
    images_merger: [Conv2d; 3],
    output_dim: usize,
    patch_size: usize,
}

impl GsDpt {
    pub fn new(cfg: &HeadConfig, vb: VarBuilder) -> Result<Self> {
        let f = cfg.features;
        if cfg.output_dim < 2 {
            candle_core::bail!("GS head: output_dim {} < 2", cfg.output_dim);
        }
        // f32 projections: the Gaussians' rotations are normalised raw quaternions, too
        // sensitive for bf16 inputs here (tiny-gs: 3.3e-2 from the reference, bound 2e-2).
        let neck = DptNeck::new(cfg, false, true, false, vb.clone())?;
        let sc = vb.pp("scratch");
        let chain = FusionChain::new(f, "", &sc)?;
        let output_conv1 = conv2d(f, f / 2, 3, 1, 1, sc.pp("output_conv1"))?;
        let output_conv2 = OutConv2::new(f / 2, 32, cfg.output_dim, false, sc.pp("output_conv2"))?;
        // features // 2 channels, reached in three steps from RGB
        let m = vb.pp("images_merger");
        let half = f / 2;
        let images_merger = [
            conv2d(3, half / 4, 3, 1, 1, m.pp(0))?,
            conv2d(half / 4, half / 2, 3, 1, 1, m.pp(2))?,
            conv2d(half / 2, half, 3, 1, 1, m.pp(4))?,
        ];
        Ok(Self {
            neck,
            chain,
            output_conv1,
            output_conv2,
            images_merger,
            output_dim: cfg.output_dim,
            patch_size: 14,
        })
    }

    /// `feats`: 4 tensors (BS, N, C) for an (H, W) input; `images`: the normalised input
    /// (BS, 3, H, W).
    pub fn forward(
        &self,
        feats: &[Tensor],
        h: usize,
        w: usize,
        images: &Tensor,
    ) -> Result<GsHeadOutput> {
        let (ph, pw) = (h / self.patch_size, w / self.patch_size);
        let l = self.neck.forward(feats, ph, pw, h, w)?;
        let fused = self.chain.forward(&l)?;
        let fused = self.output_conv1.forward(&fused)?;
        let fused = resize_bilinear_ac(&fused, ph * self.patch_size, pw * self.patch_size)?;
        let mut img = images.clone();
        for conv in &self.images_merger {
            img = conv.forward(&img)?.gelu_erf()?;
        }
        let fused = add_uv_pos_embed(&(fused + img)?, w, h)?;
        let logits = self
            .output_conv2
            .forward(&fused)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        let c = self.output_dim;
        Ok(GsHeadOutput {
            raw: logits.narrow(3, 0, c - 1)?.contiguous()?,
            density: candle_nn::ops::sigmoid(&logits.narrow(3, c - 1, 1)?.squeeze(3)?)?,
        })
    }
}
