//! `DepthAnything3Net`: backbone -> dense head -> camera (decoder or ray pose) -> mono sky step.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::cam_dec::CameraDec;
use super::cam_enc::CameraEnc;
use super::config::{HeadKind, NetConfig};
use super::dpt::{Dpt, DptOutput};
use super::dual_dpt::{DualDpt, DualDptOutput};
use super::gs_adapter::AdapterInput;
use super::gs_dpt::{GsDpt, GsHeadOutput};
use super::ray_pose::{default_sample_indices, ransac_candidates, solve_view, RANSAC_SAMPLE};
use super::transform::{
    extrinsics_from_tensor, intrinsics_from_tensor, mats34_to_tensor, mats3_to_tensor,
    pose_encoding_to_extri_intri, Mat3, Mat34,
};
use super::vit::DinoVisionTransformer;
use crate::{Da3Output, ForwardOptions};

/// Sky threshold on the sky map: pixels below are "not sky".
pub const SKY_THRESHOLD: f32 = 0.3;

#[derive(Debug, Clone)]
enum Head {
    Dual(DualDpt),
    Dpt(Dpt),
}

#[derive(Debug, Clone)]
pub struct Da3Net {
    cfg: NetConfig,
    backbone: DinoVisionTransformer,
    head: Head,
    cam_enc: Option<CameraEnc>,
    cam_dec: Option<CameraDec>,
    gs_head: Option<GsDpt>,
}

/// Linear-interpolated quantile of unsorted data (torch.quantile's default).
pub fn quantile(values: &mut [f32], q: f64) -> f32 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = values.len();
    if n == 0 {
        return f32::NAN;
    }
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let w = pos - lo as f64;
    let (a, b) = (values[lo] as f64, values[hi] as f64);
    (if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }) as f32
}

impl Da3Net {
    /// `vb` points at the network root (`model` or `model.da3` / `model.da3_metric`).
    pub fn new(cfg: &NetConfig, vb: VarBuilder) -> Result<Self> {
        let backbone = DinoVisionTransformer::new(&cfg.vit, vb.pp("backbone").pp("pretrained"))?;
        let head = match cfg.head.kind {
            HeadKind::DualDpt => Head::Dual(DualDpt::new(&cfg.head, vb.pp("head"))?),
            HeadKind::Dpt => Head::Dpt(Dpt::new(&cfg.head, vb.pp("head"))?),
            HeadKind::GsDpt => candle_core::bail!("the GS head cannot be the main head"),
        };
        // The camera encoder and decoder are small and carry the poses: f32 at any precision.
        let cam_enc = cfg
            .cam_enc_dim
            .map(|d| CameraEnc::new(d, vb.pp("cam_enc").set_dtype(DType::F32)))
            .transpose()?;
        let cam_dec = cfg
            .cam_dec_dim
            .map(|d| CameraDec::new(d, vb.pp("cam_dec").set_dtype(DType::F32)))
            .transpose()?;
        let gs_head = cfg
            .gs_head
            .as_ref()
            .map(|gs| GsDpt::new(gs, vb.pp("gs_head")))
            .transpose()?;
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            head,
            cam_enc,
            cam_dec,
            gs_head,
        })
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// x: (B, S, 3, H, W), normalised; H and W multiples of 14.
    pub fn forward(&self, x: &Tensor, opts: &ForwardOptions) -> eyre::Result<Da3Output> {
        let (b, s, c, h, w) = x.dims5()?;
        let p = self.cfg.vit.patch_size;
        if c != 3 || h % p != 0 || w % p != 0 || h == 0 || w == 0 {
            eyre::bail!(
                "input must be (B, S, 3, H, W) with H, W multiples of {p}, got {:?}",
                x.dims()
            );
        }
        let dtype = x.dtype();
        let cam_token = match (&opts.extrinsics, &self.cam_enc) {
            (Some(e), Some(enc)) => {
                let k = opts
                    .intrinsics
                    .as_ref()
                    .ok_or_else(|| eyre::eyre!("extrinsics given without intrinsics"))?;
                if e.dims()[..2] != [b, s] || k.dims()[..2] != [b, s] {
                    eyre::bail!("camera conditioning must have (B, S) = ({b}, {s}) leading dims");
                }
                Some(enc.forward(e, k, (h, w), dtype)?)
            }
            (Some(_), None) => {
                tracing::warn!("this model has no camera encoder: input cameras ignored");
                None
            }
            _ => None,
        };
        // Mixed precision rounds the attention's products too, but not when Gaussians are
        // inferred: their rotations are normalised raw quaternions, whose error grows as the
        // raw norm shrinks (tiny-gs: 3.4e-2 with bf16 attention at a Gaussian whose raw norm
        // is 1/9 of the median, 1.7e-2 with f32 attention; every other output <= 7e-3).
        let (layers, aux) = self.backbone.forward(
            x,
            cam_token.as_ref(),
            opts.ref_view_strategy,
            &opts.export_feat_layers,
            !opts.infer_gs,
        )?;
        let feats = layers
            .iter()
            .map(|l| {
                let (_, _, n, cc) = l.feats.dims4()?;
                l.feats.reshape((b * s, n, cc))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Da3Output {
            depth: Tensor::zeros(1, DType::F32, x.device())?,
            depth_conf: None,
            extrinsics: None,
            intrinsics: None,
            sky: None,
            ray: None,
            ray_conf: None,
            is_metric: false,
            scale_factor: None,
            aux,
            gaussians: None,
        };
        match &self.head {
            Head::Dual(hd) => {
                // The reference drops the rays unless they give the pose (or there is no
                // camera decoder); skip the ray branch when they would be dropped.
                let with_ray = opts.use_ray_pose || self.cam_dec.is_none();
                let parts = per_view(&feats, |f| hd.forward(f, h, w, with_ray))?;
                let o = DualDptOutput {
                    depth: cat_views(parts.iter().map(|o| Some(&o.depth)))?.expect("depth"),
                    depth_conf: cat_views(parts.iter().map(|o| Some(&o.depth_conf)))?
                        .expect("confidence"),
                    ray: cat_views(parts.iter().map(|o| o.ray.as_ref()))?,
                    ray_conf: cat_views(parts.iter().map(|o| o.ray_conf.as_ref()))?,
                };
                drop(parts);
                out.depth = o.depth.reshape((b, s, h, w))?;
                out.depth_conf = Some(o.depth_conf.reshape((b, s, h, w))?);
                if let (Some(r), Some(rc)) = (&o.ray, &o.ray_conf) {
                    let (_, rh, rw, _) = r.dims4()?;
                    out.ray = Some(r.reshape((b, s, rh, rw, 6))?);
                    out.ray_conf = Some(rc.reshape((b, s, rh, rw))?);
                }
                if let (true, Some(ray), Some(ray_conf)) =
                    (opts.use_ray_pose, &out.ray, &out.ray_conf)
                {
                    let (e, k) = self.ray_pose(ray, ray_conf, (h, w), opts)?;
                    out.extrinsics = Some(mats34_to_tensor(&e, b, s, x.device())?);
                    out.intrinsics = Some(mats3_to_tensor(&k, b, s, x.device())?);
                } else if let Some(dec) = &self.cam_dec {
                    let last = layers.last().expect("4 out layers");
                    let pe = dec.forward(&last.cam_token.to_dtype(DType::F32)?)?;
                    let pe: Vec<f32> = pe.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    let (mut es, mut ks) = (Vec::new(), Vec::new());
                    for v in pe.chunks(9) {
                        let v: Vec<f64> = v.iter().map(|&a| a as f64).collect();
                        let (e, k) = pose_encoding_to_extri_intri(&v, (h, w));
                        es.push(e);
                        ks.push(k);
                    }
                    out.extrinsics = Some(mats34_to_tensor(&es, b, s, x.device())?);
                    out.intrinsics = Some(mats3_to_tensor(&ks, b, s, x.device())?);
                }
            }
            Head::Dpt(hd) => {
                let parts = per_view(&feats, |f| hd.forward(f, h, w))?;
                let o = DptOutput {
                    depth: cat_views(parts.iter().map(|o| Some(&o.depth)))?.expect("depth"),
                    depth_conf: cat_views(parts.iter().map(|o| o.depth_conf.as_ref()))?,
                    sky: cat_views(parts.iter().map(|o| o.sky.as_ref()))?,
                };
                drop(parts);
                out.depth = o.depth.reshape((b, s, h, w))?;
                out.depth_conf = o.depth_conf.map(|c| c.reshape((b, s, h, w))).transpose()?;
                out.sky = o.sky.map(|c| c.reshape((b, s, h, w))).transpose()?;
            }
        }
        if opts.infer_gs {
            out.gaussians = Some(self.gaussians(&feats, x, &out, opts)?);
        }
        if let Some(sky) = &out.sky {
            out.depth = mono_sky_step(&out.depth, sky)?;
        }
        Ok(out)
    }

    /// The Gaussian head (`infer_gs`): per batch element, one Gaussian per pixel, placed with
    /// the predicted cameras (scaled to the input cameras when given).
    fn gaussians(
        &self,
        feats: &[Tensor],
        x: &Tensor,
        out: &Da3Output,
        opts: &ForwardOptions,
    ) -> eyre::Result<Vec<da3_io::gaussians::Gaussians>> {
        let (Some(head), Some(adapter)) = (&self.gs_head, &self.cfg.gs_adapter) else {
            eyre::bail!(
                "infer_gs: this model has no Gaussian head (DA3-GIANT and DA3NESTED-GIANT-LARGE \
                 have one)"
            );
        };
        let (Some(ext), Some(ixt)) = (&out.extrinsics, &out.intrinsics) else {
            eyre::bail!("infer_gs: the Gaussian head needs the predicted cameras");
        };
        let (b, s, _, h, w) = x.dims5()?;
        // A view at a time, as the depth heads: the images ride along as a last input.
        let n = feats.len();
        let inputs: Vec<Tensor> = feats
            .iter()
            .cloned()
            .chain([x.reshape((b * s, 3, h, w))?])
            .collect();
        let parts = per_view(&inputs, |f| head.forward(&f[..n], h, w, &f[n]))?;
        let o = GsHeadOutput {
            raw: cat_views(parts.iter().map(|o| Some(&o.raw)))?.expect("raw"),
            density: cat_views(parts.iter().map(|o| Some(&o.density)))?.expect("density"),
        };
        drop(parts);
        let f32_vec = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
        };
        let (raw, density, depth) = (f32_vec(&o.raw)?, f32_vec(&o.density)?, f32_vec(&out.depth)?);
        let (es, ks) = (extrinsics_from_tensor(ext)?, intrinsics_from_tensor(ixt)?);
        let gt = opts
            .extrinsics
            .as_ref()
            .map(extrinsics_from_tensor)
            .transpose()?;
        let (hw, c) = (h * w, adapter.d_in());
        (0..b)
            .map(|bi| {
                let views = bi * s..(bi + 1) * s;
                adapter.gaussians(&AdapterInput {
                    views: s,
                    height: h,
                    width: w,
                    extrinsics: &es[views.clone()],
                    intrinsics: &ks[views.clone()],
                    gt_extrinsics: gt.as_ref().map(|g| &g[views.clone()]),
                    depth: &depth[bi * s * hw..(bi + 1) * s * hw],
                    density: &density[bi * s * hw..(bi + 1) * s * hw],
                    raw: &raw[bi * s * hw * c..(bi + 1) * s * hw * c],
                })
            })
            .collect()
    }

    fn ray_pose(
        &self,
        ray: &Tensor,
        ray_conf: &Tensor,
        img: (usize, usize),
        opts: &ForwardOptions,
    ) -> eyre::Result<(Vec<Mat34>, Vec<Mat3>)> {
        let (_, _, rh, rw, _) = ray.dims5()?;
        let n = rh * rw;
        let n_sample = ransac_candidates(n);
        let samples: Vec<[usize; RANSAC_SAMPLE]> = match &opts.ransac_indices {
            Some(t) => {
                let (it, k) = t.dims2()?;
                if k != RANSAC_SAMPLE {
                    eyre::bail!(
                        "ransac_indices must be (iters, {RANSAC_SAMPLE}), got {:?}",
                        t.dims()
                    );
                }
                let v: Vec<i64> = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
                (0..it)
                    .map(|i| {
                        let mut a = [0usize; RANSAC_SAMPLE];
                        for j in 0..RANSAC_SAMPLE {
                            let x = v[i * RANSAC_SAMPLE + j];
                            if x < 0 || x as usize >= n_sample {
                                eyre::bail!("ransac index {x} out of range 0..{n_sample}");
                            }
                            a[j] = x as usize;
                        }
                        Ok(a)
                    })
                    .collect::<eyre::Result<_>>()?
            }
            None => default_sample_indices(n_sample, 0),
        };
        let rays: Vec<f32> = ray.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let confs: Vec<f32> = ray_conf.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let views = confs.len() / n;
        let (mut es, mut ks) = (Vec::new(), Vec::new());
        for v in 0..views {
            let r = solve_view(
                &rays[v * n * 6..(v + 1) * n * 6],
                &confs[v * n..(v + 1) * n],
                (rh, rw),
                img,
                &samples,
            )?;
            es.push(r.extrinsics);
            ks.push(r.intrinsics);
        }
        Ok((es, ks))
    }
}

/// Views per run of a depth head (and of the Gaussian head): the heads work on each view
/// alone, so running them a view at a time gives the same outputs with one view's
/// activations alive instead of all views' (DA3-BASE, 4 views: most of the peak memory).
/// The reference runs them 8 views at a time (`chunk_size` of its DPT heads) for the same
/// reason.
const HEAD_VIEWS: usize = 1;

/// `f` over the views of `feats` ((BS, N, C) tensors), [`HEAD_VIEWS`] at a time.
fn per_view<T>(feats: &[Tensor], f: impl Fn(&[Tensor]) -> Result<T>) -> Result<Vec<T>> {
    let n = feats.first().map_or(Ok(0), |t| t.dim(0))?;
    (0..n)
        .step_by(HEAD_VIEWS)
        .map(|v0| {
            let len = HEAD_VIEWS.min(n - v0);
            let part = feats
                .iter()
                .map(|t| t.narrow(0, v0, len))
                .collect::<Result<Vec<_>>>()?;
            f(&part)
        })
        .collect()
}

/// The per-view parts of one head output joined along the views (dim 0); `None` when the
/// head did not produce it.
fn cat_views<'a>(parts: impl Iterator<Item = Option<&'a Tensor>>) -> Result<Option<Tensor>> {
    let parts: Option<Vec<&Tensor>> = parts.collect();
    match parts {
        Some(p) if p.len() == 1 => Ok(Some(p[0].clone())),
        Some(p) if !p.is_empty() => Tensor::cat(&p, 0).map(Some),
        _ => Ok(None),
    }
}

/// Mono models: set sky pixels (sky >= 0.3) to the 99th percentile of the non-sky depth,
/// when both regions have more than 10 pixels. Uses all non-sky pixels (the reference
/// subsamples 100k at random above that size).
pub fn mono_sky_step(depth: &Tensor, sky: &Tensor) -> Result<Tensor> {
    let shape = depth.dims().to_vec();
    let dtype = depth.dtype();
    let mut d: Vec<f32> = depth.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let sk: Vec<f32> = sky.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut non_sky: Vec<f32> = d
        .iter()
        .zip(&sk)
        .filter(|(_, &s)| s < SKY_THRESHOLD)
        .map(|(&v, _)| v)
        .collect();
    let n_sky = d.len() - non_sky.len();
    if non_sky.len() <= 10 || n_sky <= 10 {
        return Ok(depth.clone());
    }
    let q = quantile(&mut non_sky, 0.99);
    for (v, &s) in d.iter_mut().zip(&sk) {
        if s >= SKY_THRESHOLD {
            *v = q;
        }
    }
    Tensor::from_vec(d, shape, depth.device())?.to_dtype(dtype)
}
