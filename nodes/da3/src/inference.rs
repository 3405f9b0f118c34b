//! The reference API's `inference()` around the network, as its steps: [`prepare`]
//! (preprocessing, input-camera normalisation), [`forward`], [`package`] (the exported
//! [`Prediction`]) and [`align()`] (outputs to the input cameras, Umeyama scale); [`infer`] runs
//! them in turn. The CLI and the DA3 node both go through these steps.

use candle_core::{DType, Device, Tensor};
use eyre::{ensure, Result};

use da3_io::align;
use da3_io::geometry::{affine_inverse, matmul, to_mat4, Mat4};

use crate::export::Prediction;
use crate::preprocess::{preprocess, Mat3, PreprocessConfig, PreprocessedBatch, RgbImage};
use crate::{Da3Model, Da3Output, DepthUnits, ForwardOptions, RefViewStrategy};

/// Input intrinsics in the caller's precision (the reference rescales them in their own dtype).
#[derive(Clone, Debug, PartialEq)]
pub enum InputIntrinsics {
    /// `float32` matrices.
    F32(Vec<Mat3<f32>>),
    /// `float64` matrices.
    F64(Vec<Mat3<f64>>),
}

impl InputIntrinsics {
    /// Number of matrices.
    pub fn len(&self) -> usize {
        match self {
            InputIntrinsics::F32(v) => v.len(),
            InputIntrinsics::F64(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Options of [`infer`] (the reference `inference()` arguments that matter here).
#[derive(Clone, Debug, Default)]
pub struct InferenceOptions {
    /// Resolution and resize method.
    pub preprocess: PreprocessConfig,
    /// Cameras from the ray head instead of the camera decoder.
    pub use_ray_pose: bool,
    /// Reference-view selection strategy.
    pub ref_view_strategy: RefViewStrategy,
    /// Backbone blocks to return as auxiliary features (`Da3Output::aux`; the reference's
    /// `export_feat_layers`).
    pub export_feat_layers: Vec<usize>,
    /// Run the Gaussian head (`infer_gs`): [`Prediction::gaussians`], for `gs_ply`.
    pub infer_gs: bool,
}

/// Everything [`infer`] produces.
#[derive(Debug)]
pub struct InferenceResult {
    /// The preprocessed batch (processed images, transforms back to the inputs).
    pub batch: PreprocessedBatch,
    /// The raw network output.
    pub output: Da3Output,
    /// The exported view of the result (reference `Prediction`).
    pub prediction: Prediction,
    /// Umeyama scale used to bring depth to the input cameras' units, when cameras were given.
    pub alignment_scale: Option<f64>,
}

/// The reference's `_normalize_extrinsics`: express all cameras relative to the first one and
/// divide translations by the median camera distance (lower median, clamped at 0.1).
pub fn normalize_extrinsics(ext: &[Mat4<f32>]) -> Vec<Mat4<f32>> {
    if ext.is_empty() {
        return Vec::new();
    }
    let first_inv = affine_inverse(&ext[0]);
    let mut out: Vec<Mat4<f32>> = ext.iter().map(|e| matmul(e, &first_inv)).collect();
    let mut dists: Vec<f32> = out
        .iter()
        .map(|e| {
            let c2w = affine_inverse(e);
            (0..3).map(|i| c2w[i][3] * c2w[i][3]).sum::<f32>().sqrt()
        })
        .collect();
    dists.sort_by(|a, b| a.total_cmp(b));
    let median = dists[(dists.len() - 1) / 2].max(0.1);
    for e in out.iter_mut() {
        for row in e.iter_mut().take(3) {
            row[3] /= median;
        }
    }
    out
}

/// Camera centres (`-R^T t`) of world-to-camera matrices, computed in `f32`.
fn camera_centres(ext: &[Mat4<f32>]) -> Vec<[f64; 3]> {
    ext.iter()
        .map(|e| {
            let c = affine_inverse(e);
            [c[0][3] as f64, c[1][3] as f64, c[2][3] as f64]
        })
        .collect()
}

/// The reference aligns this many views or more with RANSAC (`ransac_view_thresh`).
pub const RANSAC_VIEWS: usize = 10;

/// The reference's `_convert_to_prediction`: a network output (batch element 0) as the
/// exported prediction, with the processed images of `batch` when given.
pub fn package(out: &Da3Output, batch: Option<&PreprocessedBatch>) -> Result<Prediction> {
    let depth = out.depth.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (b, s, h, w) = depth.dims4()?;
    ensure!(b == 1, "expected a batch of one, got {b}");
    let flat =
        |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
    let mut pred = Prediction {
        num_views: s,
        height: h,
        width: w,
        depth: flat(&depth)?,
        conf: out.depth_conf.as_ref().map(flat).transpose()?,
        extrinsics: None,
        intrinsics: None,
        processed_images: batch.map(|b| b.export_images()),
        is_metric: out.is_metric,
        aux: Vec::new(),
        gaussians: None,
    };
    if let Some(g) = &out.gaussians {
        ensure!(
            g.len() == 1,
            "expected the Gaussians of a batch of one, got {}",
            g.len()
        );
        pred.gaussians = g.first().cloned();
    }
    for (i, a) in &out.aux {
        let (ab, n, fh, fw, c) = a.dims5()?;
        ensure!(ab == 1, "expected a batch of one, got {ab}");
        pred.aux.push((*i, [n, fh, fw, c], flat(a)?));
    }
    if let Some(e) = &out.extrinsics {
        let v = flat(e)?;
        ensure!(v.len() == s * 12, "extrinsics of shape {:?}", e.dims());
        pred.extrinsics = Some(
            v.chunks_exact(12)
                .map(|c| std::array::from_fn(|i| std::array::from_fn(|j| c[i * 4 + j])))
                .collect(),
        );
    }
    if let Some(k) = &out.intrinsics {
        let v = flat(k)?;
        ensure!(v.len() == s * 9, "intrinsics of shape {:?}", k.dims());
        pred.intrinsics = Some(
            v.chunks_exact(9)
                .map(|c| std::array::from_fn(|i| std::array::from_fn(|j| c[i * 3 + j])))
                .collect(),
        );
    }
    Ok(pred)
}

fn mats_tensor<const R: usize, const C: usize>(
    m: &[[[f32; C]; R]],
    device: &Device,
) -> Result<Tensor> {
    let flat: Vec<f32> = m.iter().flat_map(|x| x.iter().flatten().copied()).collect();
    Ok(Tensor::from_vec(flat, (1, m.len(), R, C), device)?)
}

/// What [`prepare`] hands to [`forward`] and [`align()`].
#[derive(Debug)]
pub struct Prepared {
    /// The preprocessed views (input intrinsics, when given, rescaled to them).
    pub batch: PreprocessedBatch,
    /// The forward options, with the normalised input cameras of a pose-conditioned run.
    pub forward: ForwardOptions,
    /// The input world-to-camera matrices, when given (the cameras [`align()`] brings the
    /// outputs to).
    pub cameras: Option<Vec<Mat4<f32>>>,
}

impl Prepared {
    /// Whether the forward pass is conditioned on the input cameras (given, and the model
    /// accepts them).
    pub fn is_conditioned(&self) -> bool {
        self.forward.extrinsics.is_some()
    }
}

/// The reference `inference()` up to the forward pass: preprocess `images` (input
/// `intrinsics` in the input images' pixels are rescaled with them) and, when `extrinsics`
/// (world-to-camera) are given and the model accepts cameras, condition the forward pass on
/// the input cameras normalised as the reference does ([`normalize_extrinsics`]).
/// Extrinsics need intrinsics.
pub fn prepare(
    model: &Da3Model,
    images: &[RgbImage],
    extrinsics: Option<&[Mat4<f32>]>,
    intrinsics: Option<&InputIntrinsics>,
    opts: &InferenceOptions,
) -> Result<Prepared> {
    let n = images.len();
    if let Some(e) = extrinsics {
        ensure!(e.len() == n, "{} extrinsics for {n} images", e.len());
        ensure!(intrinsics.is_some(), "extrinsics need intrinsics too");
    }
    if let Some(k) = intrinsics {
        ensure!(k.len() == n, "{} intrinsics for {n} images", k.len());
    }
    let blocks = model.config().anyview().vit.depth;
    if let Some(l) = opts.export_feat_layers.iter().find(|&&l| l >= blocks) {
        eyre::bail!(
            "export_feat_layers: block {l} does not exist (the backbone has blocks 0..{blocks})"
        );
    }
    ensure!(
        !opts.infer_gs || model.has_gaussian_head(),
        "infer_gs: this model has no Gaussian head (DA3-GIANT and DA3NESTED-GIANT-LARGE have one)"
    );
    let device = Device::Cpu;
    let batch = match intrinsics {
        None => preprocess::<f32>(images, None, &opts.preprocess, &device)?,
        Some(InputIntrinsics::F32(k)) => preprocess(images, Some(k), &opts.preprocess, &device)?,
        Some(InputIntrinsics::F64(k)) => preprocess(images, Some(k), &opts.preprocess, &device)?,
    };
    let mut forward = ForwardOptions {
        use_ray_pose: opts.use_ray_pose,
        ref_view_strategy: opts.ref_view_strategy,
        export_feat_layers: opts.export_feat_layers.clone(),
        infer_gs: opts.infer_gs,
        ..Default::default()
    };
    if let (Some(e), Some(k)) = (extrinsics, batch.intrinsics.as_ref()) {
        if model.accepts_cameras() {
            forward.extrinsics = Some(mats_tensor(&normalize_extrinsics(e), model.device())?);
            forward.intrinsics = Some(mats_tensor(k, model.device())?);
        } else {
            tracing::warn!("this model has no camera encoder: input cameras ignored");
        }
    }
    Ok(Prepared {
        batch,
        forward,
        cameras: extrinsics.map(<[Mat4<f32>]>::to_vec),
    })
}

/// The forward pass of a prepared run.
pub fn forward(model: &Da3Model, prepared: &Prepared) -> Result<Da3Output> {
    model.forward(&prepared.batch.tensor, &prepared.forward)
}

/// The reference's `_align_to_input_extrinsics_intrinsics` (with its default
/// `align_to_input_ext_scale=True`): for a pose-conditioned run, the input cameras are
/// reported (extrinsics, and intrinsics at the processed size) and depth is divided by the
/// Umeyama scale of the input camera centres onto the predicted ones (for 10+ views the
/// reference's RANSAC fit with its seed, [`align::ransac_umeyama`]), which is returned.
/// `None` (prediction untouched) when no cameras were given or none were predicted.
pub fn align(prepared: &Prepared, prediction: &mut Prediction) -> Option<f64> {
    let (Some(e), Some(pred_ext)) = (&prepared.cameras, &prediction.extrinsics) else {
        return None;
    };
    let pred44: Vec<Mat4<f32>> = pred_ext.iter().map(to_mat4).collect();
    // Input camera centres (est) aligned onto the predicted ones (ref).
    let (x, y) = (camera_centres(e), camera_centres(&pred44));
    let ransac = (e.len() >= RANSAC_VIEWS).then(|| align::ransac_umeyama(&x, &y).ok());
    let scale = match ransac.flatten() {
        Some(m) => m.s,
        None => align::umeyama_scale(&x, &y),
    };
    prediction.intrinsics = prepared.batch.intrinsics.clone();
    prediction.extrinsics = Some(e.iter().map(|m| [m[0], m[1], m[2]]).collect());
    let sf = scale as f32;
    prediction.depth.iter_mut().for_each(|d| *d /= sf);
    Some(scale)
}

/// Sky: pixels whose sky probability is at least this. The network replaces their depth with
/// a fill value (mono and metric models: the 99th percentile of the rest; nested: a far depth),
/// so their depth is no measurement. (The reference API's `Prediction.sky` of mono and metric
/// models uses 0.5 instead; its nested model keeps no mask.)
pub const SKY_THRESHOLD: f32 = crate::model::net::SKY_THRESHOLD;

/// The sky probability maps of a network output (batch element 0), views in order, each
/// `H * W`; `None` for models without a sky head (any-view models).
pub fn sky_maps(out: &Da3Output) -> Result<Option<Vec<f32>>> {
    let Some(sky) = &out.sky else {
        return Ok(None);
    };
    let (b, ..) = sky.dims4()?;
    ensure!(b == 1, "expected a batch of one, got {b}");
    Ok(Some(
        sky.to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?,
    ))
}

/// Metres per unit of DA3METRIC-LARGE's raw depth for a view whose intrinsics at the processed
/// size are `k`: focal / 300 with focal = (fx + fy) / 2 (the reference's FAQ; the nested model
/// scales its metric branch the same way).
pub fn metres_from_focal(k: &Mat3<f32>) -> f32 {
    (k[0][0] + k[1][1]) / 2.0 / 300.0
}

/// Depth in metres where the model and the run allow it: nested models predict metres;
/// DA3METRIC-LARGE's raw depth is scaled by [`metres_from_focal`] of each view's known
/// intrinsics (given ones, rescaled to the processed size). `true` when `prediction.depth` is
/// in metres after the call; `false` for relative models and for a metric model run without
/// known intrinsics (depth left raw: the caller should say so).
pub fn to_metres(model: &Da3Model, prepared: &Prepared, prediction: &mut Prediction) -> bool {
    match model.units() {
        DepthUnits::Metres => true,
        DepthUnits::Relative => false,
        DepthUnits::FocalOver300 => {
            let Some(ks) = &prepared.batch.intrinsics else {
                return false;
            };
            let plane = prediction.width * prediction.height;
            for (d, k) in prediction.depth.chunks_mut(plane).zip(ks) {
                let f = metres_from_focal(k);
                d.iter_mut().for_each(|x| *x *= f);
            }
            true
        }
    }
}

/// The reference `inference()` for the npz exports: [`prepare`], [`forward`], [`package`],
/// [`align()`]. Input `extrinsics` are world-to-camera (4x4, or 3x4 padded), input
/// `intrinsics` in the input images' pixels.
pub fn infer(
    model: &Da3Model,
    images: &[RgbImage],
    extrinsics: Option<&[Mat4<f32>]>,
    intrinsics: Option<&InputIntrinsics>,
    opts: &InferenceOptions,
) -> Result<InferenceResult> {
    let prepared = prepare(model, images, extrinsics, intrinsics, opts)?;
    let output = forward(model, &prepared)?;
    let mut prediction = package(&output, Some(&prepared.batch))?;
    let alignment_scale = align(&prepared, &mut prediction);
    Ok(InferenceResult {
        batch: prepared.batch,
        output,
        prediction,
        alignment_scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use da3_io::geometry::testing::{assert_identity, ext, rot_z};

    #[test]
    fn normalisation_makes_first_identity_and_median_unit() {
        let es = [
            ext(rot_z(0.1), [0.0, 0.0, 1.0]),
            ext(rot_z(0.4), [3.0, 0.0, 1.0]),
            ext(rot_z(-0.2), [0.0, 5.0, 2.0]),
        ];
        let n = normalize_extrinsics(&es);
        assert_identity(&n[0]);
        let mut d: Vec<f32> = camera_centres(&n)
            .iter()
            .map(|c| (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt() as f32)
            .collect();
        d.sort_by(f32::total_cmp);
        assert!((d[1] - 1.0).abs() < 1e-5, "{d:?}");
    }
}
