//! The reference API's `inference()` around the network: preprocessing, input-camera
//! normalisation, the forward pass, alignment of the outputs to input cameras (Umeyama scale)
//! and conversion to the exported [`Prediction`].

use candle_core::{DType, Device, Tensor};
use eyre::{ensure, Result};

use da3_io::geometry::{affine_inverse, matmul, to_mat4, umeyama_scale, Mat4};

use crate::export::Prediction;
use crate::preprocess::{preprocess, Mat3, PreprocessConfig, PreprocessedBatch, RgbImage};
use crate::{Da3Model, Da3Output, ForwardOptions, RefViewStrategy};

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

/// Convert a network output (batch element 0) into the exported prediction.
pub fn output_to_prediction(
    out: &Da3Output,
    batch: Option<&PreprocessedBatch>,
) -> Result<Prediction> {
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
    };
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

/// The reference `inference()` for the npz exports: preprocess `images`, run `model`, and when
/// input `extrinsics` (world-to-camera, 4x4 or padded 3x4) are given, condition on them and
/// align the outputs like the reference (input cameras out, depth divided by the Umeyama scale
/// of the input camera centres onto the predicted ones). Input `intrinsics` are in the input
/// images' pixels.
pub fn infer(
    model: &Da3Model,
    images: &[RgbImage],
    extrinsics: Option<&[Mat4<f32>]>,
    intrinsics: Option<&InputIntrinsics>,
    opts: &InferenceOptions,
) -> Result<InferenceResult> {
    let n = images.len();
    if let Some(e) = extrinsics {
        ensure!(e.len() == n, "{} extrinsics for {n} images", e.len());
        ensure!(intrinsics.is_some(), "extrinsics need intrinsics too");
    }
    if let Some(k) = intrinsics {
        ensure!(k.len() == n, "{} intrinsics for {n} images", k.len());
    }
    let device = Device::Cpu;
    let batch = match intrinsics {
        None => preprocess::<f32>(images, None, &opts.preprocess, &device)?,
        Some(InputIntrinsics::F32(k)) => preprocess(images, Some(k), &opts.preprocess, &device)?,
        Some(InputIntrinsics::F64(k)) => preprocess(images, Some(k), &opts.preprocess, &device)?,
    };
    let mut fwd = ForwardOptions {
        use_ray_pose: opts.use_ray_pose,
        ref_view_strategy: opts.ref_view_strategy,
        ..Default::default()
    };
    if let (Some(e), Some(k)) = (extrinsics, batch.intrinsics.as_ref()) {
        fwd.extrinsics = Some(mats_tensor(&normalize_extrinsics(e), model.device())?);
        fwd.intrinsics = Some(mats_tensor(k, model.device())?);
    }
    let output = model.forward(&batch.tensor, &fwd)?;
    let mut prediction = output_to_prediction(&output, Some(&batch))?;

    let mut alignment_scale = None;
    if let (Some(e), Some(pred_ext)) = (extrinsics, prediction.extrinsics.clone()) {
        let pred44: Vec<Mat4<f32>> = pred_ext.iter().map(to_mat4).collect();
        // Input camera centres (est) aligned onto the predicted ones (ref).
        let scale = umeyama_scale(&camera_centres(e), &camera_centres(&pred44));
        if n >= 10 {
            tracing::warn!("the reference aligns 10+ views with RANSAC (random subsets); plain Umeyama used here");
        }
        alignment_scale = Some(scale);
        prediction.intrinsics = batch.intrinsics.clone();
        // The reference default (align_to_input_ext_scale=True): the input cameras are output
        // and depth is brought to their scale.
        prediction.extrinsics = Some(e.iter().map(|m| [m[0], m[1], m[2]]).collect());
        let sf = scale as f32;
        prediction.depth.iter_mut().for_each(|d| *d /= sf);
    }
    Ok(InferenceResult {
        batch,
        output,
        prediction,
        alignment_scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot_z(a: f32) -> [[f32; 3]; 3] {
        [
            [a.cos(), -a.sin(), 0.0],
            [a.sin(), a.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ]
    }

    fn ext(r: [[f32; 3]; 3], t: [f32; 3]) -> Mat4<f32> {
        [
            [r[0][0], r[0][1], r[0][2], t[0]],
            [r[1][0], r[1][1], r[1][2], t[1]],
            [r[2][0], r[2][1], r[2][2], t[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    fn assert_identity(m: &Mat4<f32>) {
        for (i, row) in m.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - (i == j) as u8 as f32).abs() < 1e-6, "{m:?}");
            }
        }
    }

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
