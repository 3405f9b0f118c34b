//! DINOv2 backbone with the DA3 additions: camera token, alternating per-view / global
//! attention from `alt_start`, QK-norm and 2-D RoPE, reference-view reordering and the
//! `cat_token` outputs ([last local output | normed global output]).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::attention::Rope2d;
use super::block::{Block, BlockConfig};
use super::config::VitConfig;
use super::layers::{act_vb, conv2d, Conv2d, LayerNorm};
use super::ref_view::{
    gather_views, reorder_indices, restore_indices, select_reference_view, RefViewStrategy,
    MIN_VIEWS_FOR_SELECTION,
};

/// PyTorch's cubic convolution coefficients (A = -0.75) for a fractional offset `t`.
fn cubic_coeffs(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]
}

/// Source indices and weights of a 1-D bicubic resize (`align_corners = False`), with the
/// coordinate scale given explicitly as in PyTorch's `scale_factor` mode.
fn cubic_taps(in_size: usize, out_size: usize, scale_factor: f64) -> Vec<([usize; 4], [f32; 4])> {
    let scale = (1.0 / scale_factor) as f32;
    (0..out_size)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let idx = (real.floor() as i64).min(in_size as i64 - 1);
            let t = (real - idx as f32).clamp(0.0, 1.0);
            let w = cubic_coeffs(t);
            let mut ids = [0usize; 4];
            for (k, id) in ids.iter_mut().enumerate() {
                *id = (idx - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
            }
            (ids, w)
        })
        .collect()
}

/// Bicubic resize of a (H, W, C) grid stored row-major, scale factors per axis
/// (output size = floor(in * scale)). Matches `F.interpolate(mode="bicubic",
/// align_corners=False, scale_factor=...)`.
pub fn bicubic_resize_hwc(
    data: &[f32],
    (ih, iw, c): (usize, usize, usize),
    (sy, sx): (f64, f64),
) -> (Vec<f32>, usize, usize) {
    let oh = (ih as f64 * sy).floor() as usize;
    let ow = (iw as f64 * sx).floor() as usize;
    let ty = cubic_taps(ih, oh, sy);
    let tx = cubic_taps(iw, ow, sx);
    let mut out = vec![0f32; oh * ow * c];
    for (oy, (yi, yw)) in ty.iter().enumerate() {
        for (ox, (xi, xw)) in tx.iter().enumerate() {
            let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            for ch in 0..c {
                let mut acc = 0f64;
                for a in 0..4 {
                    let mut row = 0f64;
                    for b in 0..4 {
                        row += xw[b] as f64 * data[(yi[a] * iw + xi[b]) * c + ch] as f64;
                    }
                    acc += yw[a] as f64 * row;
                }
                o[ch] = acc as f32;
            }
        }
    }
    (out, oh, ow)
}

/// Auxiliary features: (block index, features (B, S, h, w, C)) per exported block.
pub type AuxFeatures = Vec<(usize, Tensor)>;

/// One out-layer output: normalised patch features (B, S, N, C') and the raw token 0 (B, S, C').
#[derive(Debug, Clone)]
pub struct LayerOutput {
    pub feats: Tensor,
    pub cam_token: Tensor,
}

/// Per-grid tables a stream of same-sized frames would otherwise rebuild every forward
/// (single-threaded: the bicubic pos-embed resize and the RoPE sin/cos, ~1% of a 4-view
/// DA3-SMALL forward on 2 cores). Keyed by what they depend on; the last one is kept.
#[derive(Debug, Default)]
struct GridCache {
    pos: Option<((usize, usize), Tensor)>,
    ropes: Option<(RopeKey, (Rope2d, Rope2d))>,
}

/// Views, grid height, grid width, dtype.
type RopeKey = (usize, usize, usize, DType);

/// The value kept in `slot` of the cache for `key`, or `make()`'s, then kept. The lock is
/// not held while `make` runs.
fn memo<K: PartialEq, V: Clone>(
    cache: &std::sync::Mutex<GridCache>,
    slot: fn(&mut GridCache) -> &mut Option<(K, V)>,
    key: K,
    make: impl FnOnce() -> Result<V>,
) -> Result<V> {
    if let Ok(mut c) = cache.lock() {
        if let Some((k, v)) = slot(&mut c) {
            if *k == key {
                return Ok(v.clone());
            }
        }
    }
    let v = make()?;
    if let Ok(mut c) = cache.lock() {
        *slot(&mut c) = Some((key, v.clone()));
    }
    Ok(v)
}

#[derive(Debug, Clone)]
pub struct DinoVisionTransformer {
    cfg: VitConfig,
    patch_embed: Conv2d,
    cls_token: Tensor,
    camera_token: Option<Tensor>,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    cache: std::sync::Arc<std::sync::Mutex<GridCache>>,
}

impl DinoVisionTransformer {
    /// `vb` points at `backbone.pretrained`.
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let e = cfg.embed_dim;
        let grid = cfg.img_size / cfg.patch_size;
        let patch_embed = conv2d(
            3,
            e,
            cfg.patch_size,
            cfg.patch_size,
            0,
            vb.pp("patch_embed").pp("proj"),
        )?;
        let pvb = act_vb(vb.clone());
        let cls_token = pvb.get((1, 1, e), "cls_token")?;
        let camera_token = match cfg.alt_start {
            Some(_) => Some(pvb.get((1, 2, e), "camera_token")?),
            None => None,
        };
        let pos_embed = pvb.get((1, grid * grid + 1, e), "pos_embed")?;
        let vbb = vb.pp("blocks");
        let blocks = (0..cfg.depth)
            .map(|i| {
                let bc = BlockConfig {
                    dim: e,
                    num_heads: cfg.num_heads,
                    mlp_ratio: cfg.mlp_ratio,
                    ffn: cfg.ffn,
                    qk_norm: cfg.qknorm_start.is_some_and(|s| i >= s),
                    rope: cfg.rope_start.is_some_and(|s| i >= s),
                    ln_eps: 1e-6,
                };
                Block::new(bc, vbb.pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(e, 1e-5, vb.pp("norm"))?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            cls_token,
            camera_token,
            pos_embed,
            blocks,
            norm,
            cache: Default::default(),
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Position embedding for an (h, w)-patch grid: (1, 1 + h*w, C), computed once per grid.
    pub fn interpolate_pos_encoding(&self, h: usize, w: usize) -> Result<Tensor> {
        memo(
            &self.cache,
            |c| &mut c.pos,
            (h, w),
            || self.interpolate_pos_encoding_uncached(h, w),
        )
    }

    fn interpolate_pos_encoding_uncached(&self, h: usize, w: usize) -> Result<Tensor> {
        let (_, n1, c) = self.pos_embed.dims3()?;
        let n = n1 - 1;
        let m = (n as f64).sqrt() as usize;
        if h * w == n && h == w {
            return Ok(self.pos_embed.clone());
        }
        let dtype = self.pos_embed.dtype();
        let pe = self.pos_embed.to_dtype(DType::F32)?;
        let cls = pe.narrow(1, 0, 1)?;
        let grid: Vec<f32> = pe.narrow(1, 1, n)?.flatten_all()?.to_vec1()?;
        let sy = (h as f64 + 0.1) / m as f64;
        let sx = (w as f64 + 0.1) / m as f64;
        let (out, oh, ow) = bicubic_resize_hwc(&grid, (m, m, c), (sy, sx));
        if (oh, ow) != (h, w) {
            candle_core::bail!("pos-embed interpolation gave {oh}x{ow}, expected {h}x{w}");
        }
        let patch = Tensor::from_vec(out, (1, h * w, c), pe.device())?;
        Tensor::cat(&[&cls, &patch], 1)?.to_dtype(dtype)
    }

    /// Tokens (B, S, 1 + h*w, C) for images (B, S, 3, H, W).
    pub fn prepare_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, c3, hh, ww) = x.dims5()?;
        let p = self.cfg.patch_size;
        let (h, w) = (hh / p, ww / p);
        let x = x.reshape((b * s, c3, hh, ww))?;
        let x = self.patch_embed.forward(&x)?; // (BS, C, h, w)
        let e = self.cfg.embed_dim;
        let x = x.flatten_from(2)?.transpose(1, 2)?; // (BS, hw, C)
        let cls = self.cls_token.broadcast_as((b * s, 1, e))?;
        let x = Tensor::cat(&[&cls, &x.contiguous()?], 1)?;
        let x = x.broadcast_add(&self.interpolate_pos_encoding(h, w)?)?;
        x.reshape((b, s, 1 + h * w, e))
    }

    fn ropes(
        &self,
        s: usize,
        h: usize,
        w: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Rope2d, Rope2d)> {
        memo(
            &self.cache,
            |c| &mut c.ropes,
            (s, h, w, dtype),
            || self.ropes_uncached(s, h, w, dtype, dev),
        )
    }

    fn ropes_uncached(
        &self,
        s: usize,
        h: usize,
        w: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Rope2d, Rope2d)> {
        let hd = self.cfg.embed_dim / self.cfg.num_heads;
        let mut local = vec![(0u32, 0u32)];
        for y in 0..h {
            for x in 0..w {
                local.push((y as u32 + 1, x as u32 + 1));
            }
        }
        let mut global = Vec::with_capacity(s * local.len());
        for _ in 0..s {
            global.push((0, 0));
            global.extend(std::iter::repeat_n((1u32, 1u32), h * w));
        }
        let f = self.cfg.rope_freq;
        Ok((
            Rope2d::new(&local, hd, f, dtype, dev)?,
            Rope2d::new(&global, hd, f, dtype, dev)?,
        ))
    }

    /// Run the backbone. `x`: (B, S, 3, H, W); `cam_token`: (B, S, C) from the camera encoder.
    /// Returns one [`LayerOutput`] per out layer, views in the input order, and the outputs of
    /// the `export` blocks (auxiliary features: normed, camera token dropped, (B, S, h, w, C),
    /// views in the backbone's order as the reference returns them). `half_attention`: with
    /// half-precision weights the attention's products may round their inputs too.
    pub fn forward(
        &self,
        x: &Tensor,
        cam_token: Option<&Tensor>,
        strategy: RefViewStrategy,
        export: &[usize],
        half_attention: bool,
    ) -> Result<(Vec<LayerOutput>, AuxFeatures)> {
        let (b, s, _, hh, ww) = x.dims5()?;
        let p = self.cfg.patch_size;
        let (h, w) = (hh / p, ww / p);
        let mut x = self.prepare_tokens(x)?;
        let (_, _, t, c) = x.dims4()?;
        let ropes = match self.cfg.rope_start {
            Some(_) => Some(self.ropes(s, h, w, x.dtype(), x.device())?),
            None => None,
        };
        let mut local_x: Option<Tensor> = None;
        let mut order: Option<Vec<usize>> = None;
        let mut outputs = Vec::new();
        let mut aux = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            if let Some(a) = self.cfg.alt_start {
                if i + 1 == a && s >= MIN_VIEWS_FOR_SELECTION && cam_token.is_none() {
                    let sel = select_reference_view(&x, strategy)?;
                    tracing::debug!(?sel, ?strategy, "reference view");
                    let fwd: Vec<Vec<u32>> = sel.iter().map(|&r| reorder_indices(s, r)).collect();
                    x = gather_views(&x, &fwd)?;
                    if let Some(l) = &local_x {
                        local_x = Some(gather_views(l, &fwd)?);
                    }
                    order = Some(sel);
                }
                if i == a {
                    let tok = match cam_token {
                        Some(ct) => ct.to_dtype(x.dtype())?,
                        None => {
                            let ct = self
                                .camera_token
                                .as_ref()
                                .expect("camera token present with alt_start");
                            let r = ct.narrow(1, 0, 1)?.broadcast_as((b, 1, c))?;
                            if s > 1 {
                                let o = ct.narrow(1, 1, 1)?.broadcast_as((b, s - 1, c))?;
                                Tensor::cat(&[&r, &o], 1)?
                            } else {
                                r.contiguous()?
                            }
                        }
                    };
                    x = Tensor::cat(&[&tok.unsqueeze(2)?, &x.narrow(2, 1, t - 1)?], 2)?;
                }
            }
            let rope_on = self.cfg.rope_start.is_some_and(|r| i >= r);
            let global = self.cfg.alt_start.is_some_and(|a| i >= a && i % 2 == 1);
            if global {
                let rope = if rope_on {
                    ropes.as_ref().map(|r| &r.1)
                } else {
                    None
                };
                x = blk
                    .forward(&x.reshape((b, s * t, c))?, rope, half_attention)?
                    .reshape((b, s, t, c))?;
            } else {
                let rope = if rope_on {
                    ropes.as_ref().map(|r| &r.0)
                } else {
                    None
                };
                x = blk
                    .forward(&x.reshape((b * s, t, c))?, rope, half_attention)?
                    .reshape((b, s, t, c))?;
                local_x = Some(x.clone());
            }
            if self.cfg.out_layers.contains(&i) {
                let mut out = if self.cfg.cat_token {
                    let l = local_x.as_ref().expect("a local block ran before");
                    Tensor::cat(&[l, &x], D::Minus1)?
                } else {
                    x.clone()
                };
                if let Some(sel) = &order {
                    let back: Vec<Vec<u32>> = sel.iter().map(|&r| restore_indices(s, r)).collect();
                    out = gather_views(&out, &back)?;
                }
                outputs.push(out);
            }
            if export.contains(&i) {
                aux.push((i, x.clone()));
            }
        }
        let aux = aux
            .into_iter()
            .map(|(i, a)| {
                let f = self.norm.forward(&a)?.narrow(2, 1, t - 1)?;
                Ok((i, f.reshape((b, s, h, w, c))?))
            })
            .collect::<Result<Vec<_>>>()?;
        // Outputs come in increasing block order, as in the reference.
        let e = self.cfg.embed_dim;
        outputs
            .into_iter()
            .map(|o| {
                let cam = o.narrow(2, 0, 1)?.squeeze(2)?;
                let normed = if self.cfg.cat_token {
                    let l = o.narrow(D::Minus1, 0, e)?;
                    let g = self.norm.forward(&o.narrow(D::Minus1, e, e)?)?;
                    Tensor::cat(&[&l, &g], D::Minus1)?
                } else {
                    self.norm.forward(&o)?
                };
                Ok(LayerOutput {
                    feats: normed.narrow(2, 1, t - 1)?,
                    cam_token: cam,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(|o| (o, aux))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_weights_sum_to_one() {
        for t in [0.0f32, 0.1, 0.5, 0.9, 1.0] {
            let w = cubic_coeffs(t);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(cubic_coeffs(0.0), [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn bicubic_separable_ramp() {
        // f(r, c) = 4r + c is separable and the weights sum to 1, so the 2-D result is
        // 4 * g(sy) + g(sx) with g the 1-D interpolation of the index ramp (taps clamped to
        // the border as in PyTorch). With A = -0.75, g(1 + 0.25) = 1 + 0.296875 (not 1.25).
        let data: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let (out, oh, ow) = bicubic_resize_hwc(&data, (4, 4, 1), (2.0, 2.0));
        assert_eq!((oh, ow), (8, 8));
        let g = |o: usize| -> f32 {
            let real = (o as f32 + 0.5) / 2.0 - 0.5;
            let idx = real.floor() as i64;
            let w = cubic_coeffs(real - idx as f32);
            (0..4)
                .map(|k| w[k] * (idx - 1 + k as i64).clamp(0, 3) as f32)
                .sum()
        };
        assert!((g(3) - 1.296875).abs() < 1e-6);
        for y in 0..8 {
            for x in 0..8 {
                let e = 4.0 * g(y) + g(x);
                assert!(
                    (out[y * 8 + x] - e).abs() < 1e-5,
                    "({y},{x}): {} vs {e}",
                    out[y * 8 + x]
                );
            }
        }
        // Output size uses floor(in * scale) (the DINOv2 +0.1 offset keeps it exact).
        let (_, oh, ow) =
            bicubic_resize_hwc(&data, (4, 4, 1), ((3.0 + 0.1) / 4.0, (5.0 + 0.1) / 4.0));
        assert_eq!((oh, ow), (3, 5));
        // Identity scale keeps values.
        let (same, _, _) = bicubic_resize_hwc(&data, (4, 4, 1), (1.0, 1.0));
        assert_eq!(same, data);
    }
}
