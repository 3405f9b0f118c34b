//! DualDPT head of the any-view models: a depth branch (depth, confidence) and an auxiliary
//! ray branch (6-channel rays + confidence at 8/14 of the input resolution) with separate
//! fusion chains. Only the last auxiliary level is used at inference; the others are
//! skipped (their weights are still checked when loading).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::HeadConfig;
use super::dpt::{add_uv_pos_embed, decoder_heads, DptNeck, FusionChain, OutConv2};
use super::layers::{conv2d, Conv2d};

/// Number of auxiliary pyramid levels in the checkpoints.
const AUX_LEVELS: usize = 4;

#[derive(Debug, Clone)]
struct AuxOut1 {
    convs: Vec<Conv2d>,
}

impl AuxOut1 {
    fn new(f: usize, vb: VarBuilder) -> Result<Self> {
        let chans = [(f, f / 2), (f / 2, f), (f, f / 2), (f / 2, f), (f, f / 2)];
        let convs = chans
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| conv2d(a, b, 3, 1, 1, vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { convs })
    }
}

impl Module for AuxOut1 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y)?;
        }
        Ok(y)
    }
}

/// Output maps with views flattened: depth/conf (BS, H, W), ray (BS, h, w, 6), ray_conf (BS, h, w).
#[derive(Debug, Clone)]
pub struct DualDptOutput {
    pub depth: Tensor,
    pub depth_conf: Tensor,
    /// `None` when the ray branch was not requested.
    pub ray: Option<Tensor>,
    pub ray_conf: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct DualDpt {
    neck: DptNeck,
    main: FusionChain,
    aux: FusionChain,
    output_conv1: Conv2d,
    output_conv2: OutConv2,
    aux_out1: AuxOut1,
    aux_out2: OutConv2,
    patch_size: usize,
}

impl DualDpt {
    pub fn new(cfg: &HeadConfig, vb: VarBuilder) -> Result<Self> {
        let f = cfg.features;
        let sc = vb.pp("scratch");
        // The depth branch's decoder (the neck's adapters on) with mixed precision in bf16 on
        // the CPU (full DA3-SMALL depth within 1.02e-2 of the reference; bound 2e-2, tested);
        // the ray branch in f32.
        let neck = DptNeck::new(cfg, true, true, true, vb.clone())?.mixed_adapters(&sc);
        let main = FusionChain::new(f, "", &sc)?.mixed(&sc);
        let aux = FusionChain::new(f, "_aux", &sc)?;
        let output_conv1 = conv2d(f, f / 2, 3, 1, 1, sc.pp("output_conv1"))?.mixed(&sc);
        let output_conv2 = OutConv2::mixed(f / 2, 32, cfg.output_dim, sc.pp("output_conv2"))?;
        let o1 = sc.pp("output_conv1_aux");
        let o2 = sc.pp("output_conv2_aux");
        // Unused levels: load to validate names/shapes, then drop.
        for lvl in 0..AUX_LEVELS - 1 {
            let _ = AuxOut1::new(f, o1.pp(lvl))?;
            let _ = OutConv2::new(f / 2, 32, 7, true, o2.pp(lvl))?;
        }
        let aux_out1 = AuxOut1::new(f, o1.pp(AUX_LEVELS - 1))?;
        let aux_out2 = OutConv2::new(f / 2, 32, 7, true, o2.pp(AUX_LEVELS - 1))?;
        Ok(Self {
            neck,
            main,
            aux,
            output_conv1,
            output_conv2,
            aux_out1,
            aux_out2,
            patch_size: 14,
        })
    }

    /// `feats`: 4 tensors (BS, N, C) for an (H, W) input. The ray branch (about half of the
    /// head's work) runs only when `with_ray`.
    pub fn forward(
        &self,
        feats: &[Tensor],
        h: usize,
        w: usize,
        with_ray: bool,
    ) -> Result<DualDptOutput> {
        let (ph, pw) = (h / self.patch_size, w / self.patch_size);
        let resized = self.neck.forward_resized(feats, ph, pw, h, w)?;
        // Depth branch.
        let size = (ph * self.patch_size, pw * self.patch_size);
        let layers = (&self.neck, &self.main, &self.output_conv1);
        let heads = [&self.output_conv2];
        let (mut outs, adapted) = decoder_heads(layers, &resized, size, Some((w, h)), &heads)?;
        let Some(logits) = outs.pop() else {
            candle_core::bail!("DualDPT head: no depth output");
        };
        let depth = logits.narrow(1, 0, 1)?.squeeze(1)?.exp()?;
        let depth_conf = (logits.narrow(1, 1, 1)?.squeeze(1)?.exp()? + 1.0)?;
        if !with_ray {
            return Ok(DualDptOutput {
                depth,
                depth_conf,
                ray: None,
                ray_conf: None,
            });
        }
        // Ray branch (last level only), in f32: the adapted maps as the f32 path made them.
        let l = match adapted {
            Some(l) => l,
            None => self.neck.adapt(&resized)?,
        };
        let aux = self.aux_out1.forward(&self.aux.forward(&l)?)?;
        let aux = add_uv_pos_embed(&aux, w, h)?;
        let alog = self.aux_out2.forward(&aux)?.permute((0, 2, 3, 1))?; // (BS, h, w, 7)
        let ray = alog.narrow(3, 0, 6)?.contiguous()?;
        let ray_conf = (alog.narrow(3, 6, 1)?.squeeze(3)?.exp()? + 1.0)?.contiguous()?;
        Ok(DualDptOutput {
            depth,
            depth_conf,
            ray: Some(ray),
            ray_conf: Some(ray_conf),
        })
    }
}
