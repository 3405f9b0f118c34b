//! Depth Anything 3 in candle.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use da3::{Da3Model, ForwardOptions};
//! # fn main() -> eyre::Result<()> {
//! let model = Da3Model::load("depth-anything/DA3-SMALL", &Device::Cpu, DType::F32)?;
//! let x = Tensor::zeros((1, 2, 3, 280, 378), DType::F32, &Device::Cpu)?; // normalised views
//! let out = model.forward(&x, &ForwardOptions::default())?;
//! println!("{:?}", out.depth.dims()); // [1, 2, 280, 378]
//! # Ok(()) }
//! ```
//!
//! The network is exact to the reference `DepthAnything3Net.forward` in f32 (see the parity
//! tests); pre- and post-processing (resize, crop back, export) live elsewhere.

pub mod device;
pub mod export;
pub mod hub;
pub mod inference;
pub mod model;
pub mod preprocess;
#[doc(hidden)]
pub mod testing;
pub mod tuning;
pub mod weights;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use eyre::{Context, Result};

pub use model::config::{
    Da3Config, FfnKind, GsAdapterConfig, HeadConfig, HeadKind, NetConfig, VitConfig,
};
pub use model::nested::apply_metric_scaling;
pub use model::ref_view::RefViewStrategy;
pub use weights::expected_keys;

use model::nested::NestedDa3;
use model::net::Da3Net;

/// Options of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Known world-to-camera extrinsics (B, S, 4, 4) or (B, S, 3, 4) (pose-conditioned
    /// inference, any-view models). Requires `intrinsics`.
    pub extrinsics: Option<Tensor>,
    /// Known intrinsics (B, S, 3, 3) in pixels of the network input.
    pub intrinsics: Option<Tensor>,
    /// Estimate cameras from the ray head (RANSAC) instead of the camera decoder.
    pub use_ray_pose: bool,
    /// Reference-view selection (3+ views without input cameras).
    pub ref_view_strategy: RefViewStrategy,
    /// RANSAC sample indices (iters, 8) into the candidate set for the ray pose; `None` uses
    /// a fixed-seed draw.
    pub ransac_indices: Option<Tensor>,
    /// Backbone blocks whose output to return as auxiliary features ([`Da3Output::aux`]), the
    /// reference's `export_feat_layers`.
    pub export_feat_layers: Vec<usize>,
    /// Run the Gaussian head (`infer_gs`; models with one only): [`Da3Output::gaussians`].
    pub infer_gs: bool,
}

/// Network outputs, views in input order. Maps are (B, S, H, W) at the network input size.
#[derive(Debug, Clone)]
pub struct Da3Output {
    /// Depth (relative for any-view/mono models, raw for the metric model, metres for nested).
    pub depth: Tensor,
    /// Depth confidence (>= 1); `None` for mono/metric models, which have none.
    pub depth_conf: Option<Tensor>,
    /// World-to-camera (B, S, 3, 4), any-view models.
    pub extrinsics: Option<Tensor>,
    /// Pinhole intrinsics (B, S, 3, 3) in input pixels, any-view models.
    pub intrinsics: Option<Tensor>,
    /// Sky map (B, S, H, W) (mono/metric models; nested: the metric branch's), >= 0.3 = sky.
    pub sky: Option<Tensor>,
    /// Ray map (B, S, h, w, 6) at 8/14 of the input size: any-view models, only computed with
    /// `use_ray_pose` (the reference always drops it; skipping the ray branch otherwise saves
    /// about half of the head).
    pub ray: Option<Tensor>,
    /// Ray confidence (B, S, h, w).
    pub ray_conf: Option<Tensor>,
    /// Depth and translations in metres (nested models).
    pub is_metric: bool,
    /// Scale applied to align the any-view branch to metric depth (nested models).
    pub scale_factor: Option<f32>,
    /// Auxiliary features, one per [`ForwardOptions::export_feat_layers`] entry in its order:
    /// the block index and its output after the final LayerNorm without the camera token,
    /// (B, S, H/14, W/14, C) (the reference's `aux["feat_layer_<i>"]`). As in the reference,
    /// views come in the backbone's order: for 3+ views without input cameras that is the
    /// reference-view order (the reference view first), not the input order.
    pub aux: model::vit::AuxFeatures,
    /// 3D Gaussians, one per pixel, per batch element (`infer_gs`). Nested models: in the
    /// any-view branch's scale, as the reference (not rescaled to metres).
    pub gaussians: Option<Vec<da3_io::gaussians::Gaussians>>,
}

#[derive(Debug, Clone)]
enum Inner {
    Single(Box<Da3Net>),
    Nested(Box<NestedDa3>),
}

/// What the depth a model predicts is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthUnits {
    /// Up to an unknown scale (any-view and mono models).
    Relative,
    /// Metric up to the focal length (DA3METRIC-LARGE): metres = focal · depth / 300, the
    /// focal in pixels of the processed image ([`inference::metres_from_focal`]). The
    /// reference API returns it raw.
    FocalOver300,
    /// Metres (nested models).
    Metres,
}

/// A loaded DA3 model (any variant). `Send + Sync`; forward takes `&self`.
#[derive(Debug, Clone)]
pub struct Da3Model {
    cfg: Da3Config,
    units: DepthUnits,
    inner: Inner,
    device: Device,
    dtype: DType,
}

impl Da3Model {
    /// Load from a hub id (`owner/name[@revision]`, standard HF cache, works offline once
    /// cached), a checkpoint directory or a `.safetensors` file (with `config.json` beside it).
    /// Loading is strict: missing, extra or mis-shaped tensors are errors.
    pub fn load(source: &str, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_named(source, None, device, dtype)
    }

    /// [`Da3Model::load`] with the published variant named (`da3-small`, ...) for a bare
    /// `.safetensors` without `config.json`; without a name and a config the variant is
    /// detected from the tensors where that is unambiguous.
    pub fn load_named(
        source: &str,
        model_name: Option<&str>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let files =
            weights::resolve(source).wrap_err_with(|| format!("resolving model {source:?}"))?;
        let cfg = weights::resolve_config(&files, model_name)?;
        let units = weights::resolve_units(&files, model_name, &cfg)?;
        Ok(Self::load_with_config(&files.weights, cfg, device, dtype)?.with_units(units))
    }

    /// The same model with its depth declared in `units` ([`Da3Model::load_with_config`]
    /// assumes [`DepthUnits::Metres`] for nested models and [`DepthUnits::Relative`] for the
    /// others: a metric checkpoint loaded that way needs this).
    pub fn with_units(mut self, units: DepthUnits) -> Self {
        self.units = units;
        self
    }

    /// What the model's depth is measured in.
    pub fn units(&self) -> DepthUnits {
        self.units
    }

    /// Load a safetensors file with an explicit configuration.
    pub fn load_with_config(
        weights: &std::path::Path,
        cfg: Da3Config,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if device.is_cpu() {
            model::ops::keep_freed_memory();
        }
        let vb = weights::checked_var_builder(weights, &cfg, dtype, device)?;
        let inner = Self::build(&cfg, vb.pp("model"))
            .wrap_err_with(|| format!("loading weights from {}", weights.display()))?;
        let units = match cfg {
            Da3Config::Nested { .. } => DepthUnits::Metres,
            Da3Config::Single(_) => DepthUnits::Relative,
        };
        Ok(Self {
            cfg,
            units,
            inner,
            device: device.clone(),
            dtype,
        })
    }

    fn build(cfg: &Da3Config, vb: VarBuilder) -> candle_core::Result<Inner> {
        Ok(match cfg {
            Da3Config::Single(c) => Inner::Single(Box::new(Da3Net::new(c, vb)?)),
            Da3Config::Nested { anyview, metric } => {
                Inner::Nested(Box::new(NestedDa3::new(anyview, metric, vb)?))
            }
        })
    }

    pub fn config(&self) -> &Da3Config {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The precision the model was loaded with (on a GPU the dtype of every tensor; on the
    /// CPU, bf16/f16 is the GEMM weights' dtype: see [`Da3Model::activation_dtype`]).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype of the activations: the precision's on a GPU, f32 on the CPU (where mixed
    /// precision keeps only the linear layers' weights in bf16/f16, GEMMs accumulating in
    /// f32, and everything else in f32).
    pub fn activation_dtype(&self) -> DType {
        if self.device.is_cpu() {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// Whether the model takes input cameras (pose-conditioned inference): any-view models
    /// with a camera encoder. Others ignore [`ForwardOptions::extrinsics`].
    pub fn accepts_cameras(&self) -> bool {
        self.cfg.anyview().cam_enc_dim.is_some()
    }

    /// Whether the model has a Gaussian head ([`ForwardOptions::infer_gs`]): DA3-GIANT and
    /// the nested model.
    pub fn has_gaussian_head(&self) -> bool {
        self.cfg.anyview().gs_head.is_some()
    }

    /// Run the network on normalised views `x` (B, S, 3, H, W) (H, W multiples of 14).
    pub fn forward(&self, x: &Tensor, opts: &ForwardOptions) -> Result<Da3Output> {
        let x = x
            .to_device(&self.device)?
            .to_dtype(self.activation_dtype())?;
        match &self.inner {
            Inner::Single(n) => n.forward(&x, opts),
            Inner::Nested(n) => n.forward(&x, opts),
        }
    }
}

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn model_is_send_sync() {
        assert_send_sync::<super::Da3Model>();
    }
}
