//! One unit of work (one or several views) through the model, and the
//! per-view results the node sends.

use da3::inference::{self, InputIntrinsics};
use da3::preprocess::{restore_intrinsics, restore_map, Mat3, RgbImage, ViewTransform};
use da3::Da3Model;
use da3_io::geometry::Mat4;
use da3_msg::{FrameInfo, Intrinsics, Splats};
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
    /// Depth; sky pixels (where `sky` is set) are 0, the documented invalid value.
    pub depth: Vec<f32>,
    pub conf: Option<Vec<f32>>,
    /// Sky mask (models with a sky head): sky probability >= [`inference::SKY_THRESHOLD`].
    pub sky: Option<Vec<bool>>,
    /// Intrinsics at `width x height`, row-major 3x3.
    pub intrinsics: Option<[f64; 9]>,
    /// World-to-camera `[R|t]`, row-major 3x4.
    pub extrinsics: Option<[f64; 12]>,
    /// The extrinsics are the given ones (a pose-conditioned unit, outputs aligned to them).
    pub pose_given: bool,
    pub is_metric: bool,
    /// RGB at `width x height` (for colouring points and the overlay).
    pub rgb: Vec<u8>,
    pub received: std::time::Instant,
    /// 3D Gaussians of the view (`gaussians` wired): one per pixel of the processed view, in
    /// the unit's world (the predicted cameras', scaled to given ones; not chained).
    pub gaussians: Option<Splats>,
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

/// `f32` values as an `f64` array of `N` (the caller passes exactly `N`).
fn widen<'a, const N: usize>(v: impl IntoIterator<Item = &'a f32>) -> [f64; N] {
    let mut a = [0.0; N];
    for (o, x) in a.iter_mut().zip(v) {
        *o = *x as f64;
    }
    a
}

/// A world-to-camera `[R|t]` (row-major 3x4) as the library's 4x4.
fn ext_to_mat4(e: &[f64; 12]) -> Mat4<f32> {
    let mut m = [[0f32, 0.0, 0.0, 1.0]; 4];
    for (i, row) in m.iter_mut().take(3).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = e[i * 4 + j] as f32;
        }
    }
    m
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

/// Runs a unit on a model through the library's inference steps (prepare, forward,
/// package, align: the same as `da3::inference::infer`), then packs each view.
///
/// Known intrinsics are used when every view has them; the unit is pose-conditioned (input
/// cameras normalised, outputs aligned to them) when every view also has extrinsics and the
/// model accepts cameras.
pub fn infer(model: &Da3Model, cfg: &Config, unit: &WorkUnit) -> Result<Vec<ViewOut>> {
    let images: Vec<RgbImage> = unit.views.iter().map(|v| v.image.clone()).collect();
    let ks: Option<Vec<Mat3<f64>>> = unit
        .views
        .iter()
        .map(|v| v.intrinsics.as_ref().map(k_to_mat))
        .collect();
    let es: Option<Vec<Mat4<f32>>> = match ks {
        Some(_) if model.accepts_cameras() => unit
            .views
            .iter()
            .map(|v| v.extrinsics.as_ref().map(ext_to_mat4))
            .collect(),
        _ => None,
    };
    let ks = ks.map(InputIntrinsics::F64);
    let prepared = inference::prepare(model, &images, es.as_deref(), ks.as_ref(), &cfg.inference())
        .wrap_err("preprocessing")?;
    let out = inference::forward(model, &prepared).wrap_err("model forward")?;
    let mut pred = inference::package(&out, None).wrap_err("reading the outputs")?;
    // Aligned: the given cameras are the output ones (as the reference API reports them), and
    // depth is in their units (metric only if they are: never claimed).
    let aligned = inference::align(&prepared, &mut pred).is_some();
    let is_metric = !aligned && inference::to_metres(model, &prepared, &mut pred);
    let sky = inference::sky_maps(&out).wrap_err("reading the sky map")?;
    let batch = &prepared.batch;
    let (w, h) = (pred.width, pred.height);
    let s = unit.views.len();
    let plane = w * h;
    if pred.depth.len() != s * plane {
        bail!(
            "model returned {} depth values for {s} views of {w}x{h}",
            pred.depth.len()
        );
    }
    let mut views = Vec::with_capacity(s);
    for (i, v) in unit.views.iter().enumerate() {
        let t = &batch.transforms[i];
        let d = pred.depth[i * plane..(i + 1) * plane].to_vec();
        let c = pred
            .conf
            .as_ref()
            .map(|c| c[i * plane..(i + 1) * plane].to_vec());
        // Intrinsics at the processed size: predicted (the given ones once aligned), else
        // given.
        let k_proc: Option<[f64; 9]> = pred
            .intrinsics
            .as_ref()
            .or(batch.intrinsics.as_ref())
            .map(|ks| widen(ks[i].iter().flatten()));
        // Extrinsics: predicted, else (and once aligned, at full precision) given.
        let extrinsics = match &pred.extrinsics {
            Some(e) if !aligned => Some(widen(e[i].iter().flatten())),
            _ => v.extrinsics,
        };
        let sky_v = sky.as_ref().map(|m| &m[i * plane..(i + 1) * plane]);
        let mask = |m: Vec<f32>| -> Vec<bool> {
            m.iter().map(|&p| p >= inference::SKY_THRESHOLD).collect()
        };
        let mut view = match cfg.output_size {
            OutputSize::Processed => ViewOut {
                input: v.input.clone(),
                info: v.info.clone(),
                width: w as u32,
                height: h as u32,
                depth: d,
                conf: c,
                sky: sky_v.map(|m| mask(m.to_vec())),
                intrinsics: k_proc,
                extrinsics,
                pose_given: aligned,
                is_metric,
                rgb: batch.images[i].data.clone(),
                received: v.received,
                gaussians: None,
            },
            OutputSize::Input => ViewOut {
                input: v.input.clone(),
                info: v.info.clone(),
                width: t.input_width as u32,
                height: t.input_height as u32,
                depth: restore_map(&d, t, 0.0),
                conf: c.map(|c| restore_map(&c, t, 0.0)),
                // The probabilities are restored, then thresholded (as depth, before marking).
                sky: sky_v.map(|m| mask(restore_map(m, t, 0.0))),
                intrinsics: k_proc.map(|k| intrinsics_to_input(&k, t)),
                extrinsics,
                pose_given: aligned,
                is_metric,
                rgb: v.image.data.clone(),
                received: v.received,
                gaussians: None,
            },
        };
        if let Some(m) = &view.sky {
            for (d, _) in view.depth.iter_mut().zip(m).filter(|(_, &s)| s) {
                *d = 0.0;
            }
        }
        view.gaussians = pred.gaussians.as_ref().map(|g| Splats {
            gaussians: g.view(i),
            depth: pred.depth[i * plane..(i + 1) * plane].to_vec(),
            info: v.info.clone(),
            is_metric: false,
        });
        views.push(view);
    }
    Ok(views)
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
