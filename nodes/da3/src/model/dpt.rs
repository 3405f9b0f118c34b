//! DPT dense head (depth + sky) and the pieces shared with the dual head: per-stage
//! projection/resizing, RefineNet-style fusion blocks and the UV sin-cos position embedding.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::HeadConfig;
use super::layers::{
    conv2d, conv2d_no_bias, conv_transpose2d, projection1x1, Conv2d, ConvTranspose2d, LayerNorm,
};
use super::ops::{self, resize_bilinear_ac, ConvExt, FusionLayers, HalfLayer};

/// Sin-cos embedding of a normalised UV grid, scaled by 0.1, added to an NCHW map.
/// `(img_w, img_h)` give the aspect ratio of the network input.
pub fn add_uv_pos_embed(x: &Tensor, img_w: usize, img_h: usize) -> Result<Tensor> {
    let (_, c, ph, pw) = x.dims4()?;
    let (ex, ey) = uv_tables(c, ph, pw, img_w, img_h);
    ops::add_uv_embed(x, &ex, &ey)
}

/// `heads` on `x` resized (bilinear, align corners) to `(oh, ow)` [then
/// [`add_uv_pos_embed`] for an `(img_w, img_h)` input]: one output per head.
pub fn upsampled_heads(
    x: &Tensor,
    (oh, ow): (usize, usize),
    uv_img: Option<(usize, usize)>,
    heads: &[&OutConv2],
) -> Result<Vec<Tensor>> {
    let c = x.dim(1)?;
    let tables = uv_img.map(|(img_w, img_h)| uv_tables(c, oh, ow, img_w, img_h));
    let heads = heads.iter().map(|h| h.head()).collect::<Result<Vec<_>>>()?;
    let uv = tables.as_ref().map(|(ex, ey)| (&ex[..], &ey[..]));
    ops::upsampled_heads(x, (oh, ow), uv, &heads)
}

/// The depth branch's decoder: `heads` ([`upsampled_heads`]) on
/// `conv1(chain(neck.adapt(resized)))`, `resized` from [`DptNeck::forward_resized`]. One op
/// where a kernel runs it whole (mixed precision on the CPU, [`ops::fusion_heads`]), else
/// layer by layer; the adapted maps come back when that path made them (the other branch
/// of a dual head reads them too).
pub fn decoder_heads(
    (neck, chain, conv1): (&DptNeck, &FusionChain, &Conv2d),
    resized: &[Tensor],
    (oh, ow): (usize, usize),
    uv_img: Option<(usize, usize)>,
    heads: &[&OutConv2],
) -> Result<(Vec<Tensor>, Option<Vec<Tensor>>)> {
    let c = conv1.weight().dim(0)?;
    let tables = uv_img.map(|(img_w, img_h)| uv_tables(c, oh, ow, img_w, img_h));
    let uv = tables.as_ref().map(|(ex, ey)| (&ex[..], &ey[..]));
    let hs = heads.iter().map(|h| h.head()).collect::<Result<Vec<_>>>()?;
    let adapters: Vec<HalfLayer<'_>> = neck.layer_rn.iter().map(|c| c.half_layer()).collect();
    let blocks = chain.layers();
    let conv1_half = conv1.half_layer();
    let whole = ops::fusion_heads(resized, &adapters, &blocks, conv1_half, (oh, ow), uv, &hs)?;
    if let Some(outs) = whole {
        return Ok((outs, None));
    }
    let l = neck.adapt(resized)?;
    let x = conv1.forward(&chain.forward(&l)?)?;
    Ok((ops::upsampled_heads(&x, (oh, ow), uv, &hs)?, Some(l)))
}

/// The tables of [`add_uv_pos_embed`] for `c` channels on a `ph × pw` map: the first C/2
/// channels' values along x (C/2 × pw), the others' along y (C/2 × ph).
fn uv_tables(c: usize, ph: usize, pw: usize, img_w: usize, img_h: usize) -> (Vec<f32>, Vec<f32>) {
    let ar = img_w as f64 / img_h as f64;
    let diag = (ar * ar + 1.0).sqrt();
    let (span_x, span_y) = (ar / diag, 1.0 / diag);
    let lin = |n: usize, span: f64| -> Vec<f64> {
        let a = -span * (n as f64 - 1.0) / n as f64;
        let b = -a;
        if n == 1 {
            return vec![a];
        }
        (0..n)
            .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
            .collect()
    };
    let xs = lin(pw, span_x);
    let ys = lin(ph, span_y);
    let half = c / 2; // channels per axis
    let nf = half / 2;
    let omega: Vec<f64> = (0..nf)
        .map(|k| 1.0 / 100f64.powf(k as f64 / nf as f64))
        .collect();
    // (half, 1, pw) for x and (half, ph, 1) for y: [sin(p*w_k)..., cos(p*w_k)...]
    let embed = |pos: &[f64]| -> Vec<f32> {
        let mut v = vec![0f32; half * pos.len()];
        for (k, w) in omega.iter().enumerate() {
            for (i, p) in pos.iter().enumerate() {
                let a = (*p as f32) * (*w as f32);
                v[k * pos.len() + i] = a.sin() * 0.1;
                v[(k + nf) * pos.len() + i] = a.cos() * 0.1;
            }
        }
        v
    };
    (embed(&xs), embed(&ys))
}

#[derive(Debug, Clone)]
pub struct ResidualConvUnit {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl ResidualConvUnit {
    pub fn new(f: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(f, f, 3, 1, 1, vb.pp("conv1"))?,
            conv2: conv2d(f, f, 3, 1, 1, vb.pp("conv2"))?,
        })
    }
}

impl ResidualConvUnit {
    /// Both convolutions in the mixed precision's half type where a kernel takes them.
    fn mixed(self, vb: &VarBuilder) -> Self {
        Self {
            conv1: self.conv1.mixed(vb),
            conv2: self.conv2.mixed(vb),
        }
    }

    fn layers(&self) -> [HalfLayer<'_>; 2] {
        [self.conv1.half_layer(), self.conv2.half_layer()]
    }

    /// `conv2(relu(conv1(relu(x)))) + x [+ extra]`, ReLUs and adds fused into the convs on
    /// the CPU path.
    pub fn forward_plus(&self, x: &Tensor, extra: Option<&Tensor>) -> Result<Tensor> {
        let relu_in = ConvExt {
            relu_in: true,
            ..Default::default()
        };
        let y = self.conv1.forward_ext(x, relu_in)?;
        let res = match extra {
            Some(e) => (x + e)?,
            None => x.clone(),
        };
        self.conv2.forward_ext(
            &y,
            ConvExt {
                relu_in: true,
                residual: Some(&res),
                ..Default::default()
            },
        )
    }
}

impl Module for ResidualConvUnit {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_plus(x, None)
    }
}

#[derive(Debug, Clone)]
pub struct FusionBlock {
    res1: Option<ResidualConvUnit>,
    res2: ResidualConvUnit,
    out_conv: Conv2d,
}

impl FusionBlock {
    pub fn new(f: usize, has_residual: bool, vb: VarBuilder) -> Result<Self> {
        let res1 = if has_residual {
            Some(ResidualConvUnit::new(f, vb.pp("resConfUnit1"))?)
        } else {
            None
        };
        Ok(Self {
            res1,
            res2: ResidualConvUnit::new(f, vb.pp("resConfUnit2"))?,
            out_conv: conv2d(f, f, 1, 1, 0, vb.pp("out_conv"))?,
        })
    }

    fn mixed(self, vb: &VarBuilder) -> Self {
        Self {
            res1: self.res1.map(|r| r.mixed(vb)),
            res2: self.res2.mixed(vb),
            out_conv: self.out_conv,
        }
    }

    fn layers(&self) -> FusionLayers<'_> {
        FusionLayers {
            res1: self.res1.as_ref().map(|r| r.layers()),
            res2: self.res2.layers(),
            out_conv: (self.out_conv.weight(), self.out_conv.bias()),
        }
    }

    /// Merge `lateral` (if any), refine, 1x1 conv, upsample to `size` (default 2x).
    pub fn forward(
        &self,
        x: &Tensor,
        lateral: Option<&Tensor>,
        size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut y = x.clone();
        if let (Some(r), Some(l)) = (&self.res1, lateral) {
            y = r.forward_plus(l, Some(&y))?;
        }
        let y = self.res2.forward(&y)?;
        let (_, _, h, w) = y.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        // The reference upsamples, then applies the 1x1 `out_conv`. Both are linear per
        // channel and the bilinear weights of each output pixel sum to 1 (bias unchanged),
        // so the 1x1 runs first, on ~4x fewer pixels; equal up to rounding.
        let y = self.out_conv.forward(&y)?;
        resize_bilinear_ac(&y, th, tw)
    }
}

#[derive(Debug, Clone)]
enum Resize {
    Up(ConvTranspose2d),
    Identity,
    Down(Conv2d),
}

/// Token pre-norm, per-stage 1x1 projection, (optional) pos-embed and rescaling to x4, x2,
/// x1, x1/2 of the patch grid, plus the `layer*_rn` adapters.
#[derive(Debug, Clone)]
pub struct DptNeck {
    norm: Option<LayerNorm>,
    projects: Vec<Conv2d>,
    resize: Vec<Resize>,
    layer_rn: Vec<Conv2d>,
    pos_embed: bool,
}

impl DptNeck {
    /// `half_projects`: with mixed precision, the 1x1 projections of the backbone's tokens
    /// take half-precision weights ([`projection1x1`]), else f32 as the other convolutions.
    pub fn new(
        cfg: &HeadConfig,
        with_norm: bool,
        pos_embed: bool,
        half_projects: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let oc = cfg.out_channels;
        let norm = if with_norm {
            Some(LayerNorm::new(cfg.dim_in, 1e-5, vb.pp("norm"))?)
        } else {
            None
        };
        let projects = (0..4)
            .map(|i| {
                let vb = vb.pp("projects").pp(i);
                if half_projects {
                    projection1x1(cfg.dim_in, oc[i], vb)
                } else {
                    conv2d(cfg.dim_in, oc[i], 1, 1, 0, vb)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let rl = vb.pp("resize_layers");
        let resize = vec![
            Resize::Up(conv_transpose2d(oc[0], 4, rl.pp(0))?),
            Resize::Up(conv_transpose2d(oc[1], 2, rl.pp(1))?),
            Resize::Identity,
            Resize::Down(conv2d(oc[3], oc[3], 3, 2, 1, rl.pp(3))?),
        ];
        let sc = vb.pp("scratch");
        let layer_rn = (0..4)
            .map(|i| {
                conv2d_no_bias(
                    oc[i],
                    cfg.features,
                    3,
                    1,
                    sc.pp(format!("layer{}_rn", i + 1)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm,
            projects,
            resize,
            layer_rn,
            pos_embed,
        })
    }

    /// The `layer*_rn` adapters in the mixed precision's half type where a kernel takes
    /// them ([`decoder_heads`]); builder `vb` as [`Conv2d::mixed`]'s.
    pub fn mixed_adapters(self, vb: &VarBuilder) -> Self {
        Self {
            layer_rn: self.layer_rn.into_iter().map(|c| c.mixed(vb)).collect(),
            ..self
        }
    }

    /// `feats`: 4 tensors (BS, N, C). Returns the 4 adapted maps (after `layer*_rn`).
    pub fn forward(
        &self,
        feats: &[Tensor],
        ph: usize,
        pw: usize,
        img_h: usize,
        img_w: usize,
    ) -> Result<Vec<Tensor>> {
        self.adapt(&self.forward_resized(feats, ph, pw, img_h, img_w)?)
    }

    /// The `layer*_rn` adapters on the maps of [`DptNeck::forward_resized`].
    pub fn adapt(&self, resized: &[Tensor]) -> Result<Vec<Tensor>> {
        resized
            .iter()
            .zip(&self.layer_rn)
            .map(|(x, c)| c.forward(x))
            .collect()
    }

    /// [`DptNeck::forward`] up to the adapters: the 4 projected, resized maps.
    pub fn forward_resized(
        &self,
        feats: &[Tensor],
        ph: usize,
        pw: usize,
        img_h: usize,
        img_w: usize,
    ) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(4);
        for (i, f) in feats.iter().enumerate() {
            let mut x = f.clone();
            if let Some(n) = &self.norm {
                x = n.forward(&x)?;
            }
            // 1x1 projection straight from the token-major features (no transpose).
            let mut x = self.projects[i].forward_tokens(&x, (ph, pw))?;
            if self.pos_embed {
                x = add_uv_pos_embed(&x, img_w, img_h)?;
            }
            let x = match &self.resize[i] {
                Resize::Up(c) => c.forward(&x)?,
                Resize::Identity => x,
                Resize::Down(c) => c.forward(&x)?,
            };
            out.push(x);
        }
        Ok(out)
    }
}

/// The 4 fusion blocks of one chain (`refinenet1..4` + `suffix`).
#[derive(Debug, Clone)]
pub struct FusionChain {
    blocks: Vec<FusionBlock>, // refinenet1..refinenet4
}

impl FusionChain {
    pub fn new(features: usize, suffix: &str, scratch: &VarBuilder) -> Result<Self> {
        let blocks = (1..=4)
            .map(|i| {
                FusionBlock::new(
                    features,
                    i != 4,
                    scratch.pp(format!("refinenet{i}{suffix}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { blocks })
    }

    /// The chain with its 3x3 convolutions in the mixed precision's half type where a
    /// kernel takes them ([`decoder_heads`]); builder `vb` as [`Conv2d::mixed`]'s.
    pub fn mixed(self, vb: &VarBuilder) -> Self {
        Self {
            blocks: self.blocks.into_iter().map(|b| b.mixed(vb)).collect(),
        }
    }

    /// The blocks' layers, refinenet1 first.
    fn layers(&self) -> Vec<FusionLayers<'_>> {
        self.blocks.iter().map(|b| b.layers()).collect()
    }

    /// Top-down fusion of the adapted maps [l1, l2, l3, l4]; returns the finest-level output.
    pub fn forward(&self, l: &[Tensor]) -> Result<Tensor> {
        let size = |t: &Tensor| -> Result<(usize, usize)> {
            let (_, _, h, w) = t.dims4()?;
            Ok((h, w))
        };
        let out = self.blocks[3].forward(&l[3], None, Some(size(&l[2])?))?;
        let out = self.blocks[2].forward(&out, Some(&l[2]), Some(size(&l[1])?))?;
        let out = self.blocks[1].forward(&out, Some(&l[1]), Some(size(&l[0])?))?;
        self.blocks[0].forward(&out, Some(&l[0]), None)
    }
}

/// conv3x3 -> [LayerNorm over channels] -> ReLU -> conv1x1 (`output_conv2`-style heads).
#[derive(Debug, Clone)]
pub struct OutConv2 {
    conv0: Conv2d,
    ln: Option<LayerNorm>,
    conv_last: Conv2d,
}

impl OutConv2 {
    pub fn new(cin: usize, mid: usize, cout: usize, with_ln: bool, vb: VarBuilder) -> Result<Self> {
        Self::build(cin, mid, cout, with_ln, false, vb)
    }

    /// Without LayerNorm, the 3x3 in the mixed precision's half type where a kernel takes it
    /// ([`Conv2d::mixed`]): the any-view models' depth head (full DA3-SMALL in bf16, with the
    /// decoder before it in bf16 too: depth within 1.02e-2 of the reference, 5e-3 with
    /// every convolution in f32; bound 2e-2, tested).
    pub fn mixed(cin: usize, mid: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Self::build(cin, mid, cout, false, true, vb)
    }

    fn build(
        cin: usize,
        mid: usize,
        cout: usize,
        with_ln: bool,
        mixed: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv0 = conv2d(cin, mid, 3, 1, 1, vb.pp(0))?;
        let conv0 = if mixed { conv0.mixed(&vb) } else { conv0 };
        let (ln, last_idx) = if with_ln {
            (Some(LayerNorm::new(mid, 1e-5, vb.pp(2))?), 5)
        } else {
            (None, 2)
        };
        Ok(Self {
            conv0,
            ln,
            conv_last: conv2d(mid, cout, 1, 1, 0, vb.pp(last_idx))?,
        })
    }
}

impl OutConv2 {
    /// The head as [`ops::upsampled_heads`] takes it (not for the LayerNorm form).
    fn head(&self) -> Result<ops::ConvHead<'_>> {
        let Some(bias) = self.conv0.bias() else {
            candle_core::bail!("output head: its 3x3 has no bias");
        };
        if self.ln.is_some() {
            candle_core::bail!("output head: the LayerNorm form is not an upsampled head");
        }
        Ok(ops::ConvHead {
            conv: self.conv0.weight(),
            bias,
            last: self.conv_last.weight(),
            last_bias: self.conv_last.bias(),
            half: self.conv0.half(),
        })
    }
}

impl Module for OutConv2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.ln.is_none() {
            // conv_last(relu(conv0(x))): the 1x1 runs per band inside conv0 on the CPU path,
            // so the full-resolution hidden map is never written out.
            return self.conv0.forward_ext(
                x,
                ConvExt {
                    then_1x1: Some((self.conv_last.weight(), self.conv_last.bias())),
                    ..Default::default()
                },
            );
        }
        let mut y = self.conv0.forward(x)?;
        if let Some(ln) = &self.ln {
            y = ln
                .forward(&y.permute((0, 2, 3, 1))?)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
        }
        self.conv_last.forward(&y.relu()?)
    }
}

/// Output of the DPT head, batch of views flattened: maps are (BS, H, W).
#[derive(Debug, Clone)]
pub struct DptOutput {
    pub depth: Tensor,
    pub depth_conf: Option<Tensor>,
    pub sky: Option<Tensor>,
}

/// DPT head: depth (exp) [+ confidence (exp + 1)] and a ReLU sky map.
#[derive(Debug, Clone)]
pub struct Dpt {
    neck: DptNeck,
    chain: FusionChain,
    output_conv1: Conv2d,
    output_conv2: OutConv2,
    sky_output_conv2: Option<OutConv2>,
    output_dim: usize,
    pos_embed: bool,
    patch_size: usize,
}

impl Dpt {
    /// Mono / metric DPT head (no token norm, no pos-embed, sky head on).
    pub fn new(cfg: &HeadConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_options(cfg, false, true, vb)
    }

    pub fn with_options(
        cfg: &HeadConfig,
        pos_embed: bool,
        sky: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let f = cfg.features;
        let neck = DptNeck::new(cfg, false, pos_embed, true, vb.clone())?;
        let sc = vb.pp("scratch");
        let chain = FusionChain::new(f, "", &sc)?;
        let output_conv1 = conv2d(f, f / 2, 3, 1, 1, sc.pp("output_conv1"))?;
        // f32 heads: in bf16 their 3x3 took the tiny mono fixture's depth to 1.9e-2 of the
        // reference (bound 2e-2; 2.9e-3 in f32), the any-view models' to 6e-3 (DualDpt).
        let output_conv2 = OutConv2::new(f / 2, 32, cfg.output_dim, false, sc.pp("output_conv2"))?;
        let sky_output_conv2 = if sky {
            Some(OutConv2::new(
                f / 2,
                32,
                1,
                false,
                sc.pp("sky_output_conv2"),
            )?)
        } else {
            None
        };
        Ok(Self {
            neck,
            chain,
            output_conv1,
            output_conv2,
            sky_output_conv2,
            output_dim: cfg.output_dim,
            pos_embed,
            patch_size: 14,
        })
    }

    /// `feats`: 4 tensors (BS, N, C) for an (H, W) input.
    pub fn forward(&self, feats: &[Tensor], h: usize, w: usize) -> Result<DptOutput> {
        let (ph, pw) = (h / self.patch_size, w / self.patch_size);
        let l = self.neck.forward(feats, ph, pw, h, w)?;
        let fused = self.chain.forward(&l)?;
        let fused = self.output_conv1.forward(&fused)?;
        let size = (ph * self.patch_size, pw * self.patch_size);
        let mut heads = vec![&self.output_conv2];
        heads.extend(&self.sky_output_conv2);
        let uv = self.pos_embed.then_some((w, h));
        let mut outs = upsampled_heads(&fused, size, uv, &heads)?.into_iter();
        let (Some(logits), sky_logits) = (outs.next(), outs.next()) else {
            candle_core::bail!("DPT head: no depth output");
        };
        let (depth, depth_conf) = if self.output_dim > 1 {
            let d = logits.narrow(1, 0, self.output_dim - 1)?.exp()?;
            let d = if self.output_dim == 2 {
                d.squeeze(1)?
            } else {
                d
            };
            let c = (logits
                .narrow(1, self.output_dim - 1, 1)?
                .squeeze(1)?
                .exp()?
                + 1.0)?;
            (d, Some(c))
        } else {
            (logits.squeeze(1)?.exp()?, None)
        };
        let sky = match sky_logits {
            Some(s) => Some(s.squeeze(1)?.relu()?),
            None => None,
        };
        Ok(DptOutput {
            depth,
            depth_conf,
            sky,
        })
    }
}

#[cfg(test)]
mod uv_tests {
    use super::*;
    use crate::testing::max_abs_diff;
    use candle_core::{DType, Device};

    /// The f32 CPU kernel against candle's ops (taken for f64 inputs).
    #[test]
    fn uv_embed_kernel_matches_candle_ops() {
        let x = Tensor::randn(0f32, 1.0, (2, 8, 5, 7), &Device::Cpu).unwrap();
        let fast = add_uv_pos_embed(&x, 70, 50).unwrap();
        let slow = add_uv_pos_embed(&x.to_dtype(DType::F64).unwrap(), 70, 50).unwrap();
        let d = max_abs_diff(&fast, &slow.to_dtype(DType::F32).unwrap());
        assert!(d < 1e-6, "{d}");
    }
}
