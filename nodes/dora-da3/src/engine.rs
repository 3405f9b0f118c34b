//! One unit of work (one or several views) through the model, and the
//! per-view results the node sends.

use candle_core::{DType, Device, Tensor};
use da3::preprocess::{preprocess, restore_intrinsics, restore_map, Mat3, RgbImage, ViewTransform};
use da3::{Da3Model, ForwardOptions};
use da3_msg::{FrameInfo, Intrinsics};
use eyre::{bail, Context, Result};

use crate::config::{Config, OutputSize};

/// One input view of a work unit.
#[derive(Debug, Clone)]
pub struct ViewIn {
    /// The dora input it came on.
    pub input: String,
    pub info: FrameInfo,
    pub image: RgbImage,
    /// Known intrinsics at the input image size.
    pub intrinsics: Option<Intrinsics>,
    /// Known world-to-camera extrinsics `[R|t]` row-major.
    pub extrinsics: Option<[f64; 12]>,
    /// When the frame reached the node (for latency).
    pub received: std::time::Instant,
}

/// A multi-view inference request.
#[derive(Debug, Clone)]
pub struct WorkUnit {
    /// Dispatch order; results are sent in this order.
    pub seq: u64,
    pub views: Vec<ViewIn>,
    /// Which views to send out (window mode sends only the new ones).
    pub emit: Vec<bool>,
    /// Window mode: the camera whose trajectory this unit extends.
    pub chain_key: Option<String>,
}

/// What the node sends for one view.
#[derive(Debug, Clone)]
pub struct ViewOut {
    pub input: String,
    pub info: FrameInfo,
    pub width: u32,
    pub height: u32,
    pub depth: Vec<f32>,
    pub conf: Option<Vec<f32>>,
    /// Intrinsics at `width x height`, row-major 3x3.
    pub intrinsics: Option<[f64; 9]>,
    /// World-to-camera `[R|t]`, row-major 3x4.
    pub extrinsics: Option<[f64; 12]>,
    pub is_metric: bool,
    /// RGB at `width x height` (for colouring points and the overlay).
    pub rgb: Vec<u8>,
    pub received: std::time::Instant,
}

/// Results of a unit, views in unit order (all of them, `emit` says which to send).
#[derive(Debug, Clone)]
pub struct UnitOut {
    pub seq: u64,
    pub views: Vec<ViewOut>,
    pub emit: Vec<bool>,
    pub chain_key: Option<String>,
    pub replica: usize,
    pub infer_ms: f64,
}

fn tensor_rows<const N: usize>(t: &Tensor) -> Result<Vec<[f64; N]>> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if !v.len().is_multiple_of(N) {
        bail!("tensor of {} values is not a list of {N}-vectors", v.len());
    }
    Ok(v.chunks_exact(N)
        .map(|c| {
            let mut a = [0.0; N];
            for (o, x) in a.iter_mut().zip(c) {
                *o = *x as f64;
            }
            a
        })
        .collect())
}

fn k_to_mat(k: &Intrinsics) -> Mat3<f64> {
    [[k.fx, 0.0, k.cx], [0.0, k.fy, k.cy], [0.0, 0.0, 1.0]]
}

/// Intrinsics of the processed view expressed in the input image's pixels
/// (row-major 3x3), through the preprocessing's own inverse.
pub fn intrinsics_to_input(k: &[f64; 9], t: &ViewTransform) -> [f64; 9] {
    let m: Mat3<f32> = [
        [k[0] as f32, k[1] as f32, k[2] as f32],
        [k[3] as f32, k[4] as f32, k[5] as f32],
        [k[6] as f32, k[7] as f32, k[8] as f32],
    ];
    let r = restore_intrinsics(&m, t);
    let mut o = [0.0; 9];
    for (o, v) in o.iter_mut().zip(r.iter().flatten()) {
        *o = *v as f64;
    }
    o
}

/// Runs one image alone (a one-view unit), as batch and live modes do.
pub fn infer_image(model: &Da3Model, cfg: &Config, image: RgbImage) -> Result<ViewOut> {
    let unit = WorkUnit {
        seq: 0,
        views: vec![ViewIn {
            input: "image".into(),
            info: FrameInfo::default(),
            image,
            intrinsics: None,
            extrinsics: None,
            received: std::time::Instant::now(),
        }],
        emit: vec![true],
        chain_key: None,
    };
    infer(model, cfg, &unit)?
        .pop()
        .ok_or_else(|| eyre::eyre!("no output for the image"))
}

/// Runs a unit on a model.
pub fn infer(model: &Da3Model, cfg: &Config, unit: &WorkUnit) -> Result<Vec<ViewOut>> {
    let images: Vec<RgbImage> = unit.views.iter().map(|v| v.image.clone()).collect();
    // Pose-conditioned only when every view has both intrinsics and extrinsics.
    let all_known = unit
        .views
        .iter()
        .all(|v| v.intrinsics.is_some() && v.extrinsics.is_some());
    let ks: Option<Vec<Mat3<f64>>> = if unit.views.iter().all(|v| v.intrinsics.is_some()) {
        Some(
            unit.views
                .iter()
                .filter_map(|v| v.intrinsics.as_ref().map(k_to_mat))
                .collect(),
        )
    } else {
        None
    };
    let batch = preprocess(&images, ks.as_deref(), &cfg.preprocess, &Device::Cpu)
        .wrap_err("preprocessing")?;
    let mut opts = ForwardOptions {
        use_ray_pose: cfg.use_ray_pose,
        ref_view_strategy: cfg.ref_view_strategy,
        ..Default::default()
    };
    let conditioned = all_known && model_has_cameras(model);
    if conditioned {
        let s = unit.views.len();
        let mut e = Vec::with_capacity(s * 16);
        for v in &unit.views {
            let x = v.extrinsics.unwrap_or_default();
            e.extend(x.iter().map(|&a| a as f32));
            e.extend([0.0, 0.0, 0.0, 1.0]);
        }
        let mut k = Vec::with_capacity(s * 9);
        for m in batch.intrinsics.iter().flatten() {
            k.extend(m.iter().flatten().copied());
        }
        opts.extrinsics = Some(Tensor::from_vec(e, (1, s, 4, 4), &Device::Cpu)?);
        opts.intrinsics = Some(Tensor::from_vec(k, (1, s, 3, 3), &Device::Cpu)?);
    }
    let out = model
        .forward(&batch.tensor, &opts)
        .wrap_err("model forward")?;
    let (w, h) = (batch.width, batch.height);
    let s = unit.views.len();
    let depth: Vec<f32> = out
        .depth
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
        .wrap_err("reading depth")?;
    let conf: Option<Vec<f32>> = match &out.depth_conf {
        Some(c) => Some(c.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        None => None,
    };
    let ext = match &out.extrinsics {
        Some(e) => Some(tensor_rows::<12>(&e.narrow(
            candle_core::D::Minus2,
            0,
            3,
        )?)?),
        None => None,
    };
    let intr = match &out.intrinsics {
        Some(k) => Some(tensor_rows::<9>(k)?),
        None => None,
    };
    let plane = w * h;
    if depth.len() != s * plane {
        bail!(
            "model returned {} depth values for {s} views of {w}x{h}",
            depth.len()
        );
    }
    let mut views = Vec::with_capacity(s);
    for (i, v) in unit.views.iter().enumerate() {
        let t = &batch.transforms[i];
        let d = depth[i * plane..(i + 1) * plane].to_vec();
        let c = conf
            .as_ref()
            .map(|c| c[i * plane..(i + 1) * plane].to_vec());
        // Intrinsics: the given ones when the unit was pose-conditioned (as the
        // reference API reports the input cameras), else predicted, else given.
        let k_proc: Option<[f64; 9]> = match (&intr, conditioned) {
            (Some(k), false) => Some(k[i]),
            _ => batch.intrinsics.as_ref().map(|ks| {
                let m = ks[i];
                let mut a = [0.0; 9];
                for (o, x) in a.iter_mut().zip(m.iter().flatten()) {
                    *o = *x as f64;
                }
                a
            }),
        };
        let extrinsics = match (&ext, conditioned) {
            (Some(e), false) => Some(e[i]),
            _ => v.extrinsics,
        };
        let proc_rgb = batch.images[i].data.clone();
        let view = match cfg.output_size {
            OutputSize::Processed => ViewOut {
                input: v.input.clone(),
                info: v.info.clone(),
                width: w as u32,
                height: h as u32,
                depth: d,
                conf: c,
                intrinsics: k_proc,
                extrinsics,
                is_metric: out.is_metric,
                rgb: proc_rgb,
                received: v.received,
            },
            OutputSize::Input => ViewOut {
                input: v.input.clone(),
                info: v.info.clone(),
                width: t.input_width as u32,
                height: t.input_height as u32,
                depth: restore_map(&d, t, 0.0),
                conf: c.map(|c| restore_map(&c, t, 0.0)),
                intrinsics: k_proc.map(|k| intrinsics_to_input(&k, t)),
                extrinsics,
                is_metric: out.is_metric,
                rgb: v.image.data.clone(),
                received: v.received,
            },
        };
        views.push(view);
    }
    Ok(views)
}

fn model_has_cameras(model: &Da3Model) -> bool {
    match model.config() {
        da3::Da3Config::Single(c) => c.cam_enc_dim.is_some(),
        da3::Da3Config::Nested { anyview, .. } => anyview.cam_enc_dim.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intrinsics_back_to_input_undo_resize_and_crop() {
        // 640x480 -> resized 504x378 -> cropped at (7, 0) to 490x378.
        let mut t = ViewTransform::new(640, 480, 504, 378);
        t.crop(7, 0, 490, 378);
        let k_in = [500.0, 0.0, 320.0, 0.0, 480.0, 240.0, 0.0, 0.0, 1.0];
        let (sx, sy) = (504.0 / 640.0, 378.0 / 480.0);
        let k_proc = [
            500.0 * sx,
            0.0,
            320.0 * sx - 7.0,
            0.0,
            480.0 * sy,
            240.0 * sy,
            0.0,
            0.0,
            1.0,
        ];
        let back = intrinsics_to_input(&k_proc, &t);
        for (a, b) in back.iter().zip(k_in) {
            assert!((a - b).abs() < 1e-3, "{back:?}");
        }
    }
}
