//! Node configuration from env vars, validated before the model loads.

use std::str::FromStr;
use std::time::Duration;

use da3::device::cuda_device_count;
use da3::inference::InferenceOptions;
use da3::preprocess::{PreprocessConfig, ResizeMethod};
use da3::RefViewStrategy;
use da3_msg::node_util::{Env, CONF_PERCENTILE_DEFAULT};
use da3_msg::Intrinsics;
use eyre::{bail, eyre, Result};

use crate::track::TrackConfig;

/// Default model: the smallest published any-view model.
pub const DEFAULT_MODEL: &str = "depth-anything/DA3-SMALL";

/// How incoming frames become inference work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Freshest frame per camera; stale frames are dropped and counted.
    Live,
    /// Sliding window of frames per camera, poses chained across windows.
    Window,
    /// The latest frame of every camera input, synchronised, as one multi-view inference.
    Rig,
    /// Every frame, in order, none dropped.
    Batch,
    /// The freshest frame plus up to `TRACK_KEYFRAMES` keyframes as one inference, placed
    /// in one world frame and scale (`track.rs`).
    Track,
}

impl FromStr for Mode {
    type Err = eyre::Report;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "live" => Self::Live,
            "window" => Self::Window,
            "rig" => Self::Rig,
            "batch" => Self::Batch,
            "track" => Self::Track,
            _ => bail!("expected live, window, rig, batch or track"),
        })
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Window => "window",
            Self::Rig => "rig",
            Self::Batch => "batch",
            Self::Track => "track",
        }
    }
}

pub use da3::device::{DeviceSpec, Precision};

/// Parses `DEVICE`: `auto`, `cpu`, `cpu*N` (N CPU replicas), `cuda:0`,
/// `cuda:0,1`, `cuda:all`, or a comma list of those.
pub fn parse_devices(s: &str) -> Result<Vec<DeviceSpec>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let lower = part.to_ascii_lowercase();
        if lower == "auto" {
            out.extend(auto_devices());
        } else if let Some(n) = lower.strip_prefix("cpu*") {
            let n: usize = n
                .parse()
                .map_err(|_| eyre!("`{part}`: expected cpu*N with N a number"))?;
            if n == 0 || n > 64 {
                bail!("`{part}`: N must be 1..=64");
            }
            out.extend(std::iter::repeat_n(DeviceSpec::Cpu, n));
        } else if lower == "cuda:all" || lower == "cuda" {
            let n = cuda_device_count();
            if n == 0 {
                bail!("`{part}`: no CUDA device (this build has no `cuda` feature, or no GPU is visible)");
            }
            out.extend((0..n).map(DeviceSpec::Cuda));
        } else if let Ok(i) = lower.parse::<usize>() {
            // `cuda:0,1` splits into `cuda:0` and `1`.
            out.push(DeviceSpec::Cuda(i));
        } else if let Ok(d) = part.parse::<DeviceSpec>() {
            out.push(d);
        } else {
            bail!("`{part}`: expected auto, cpu, cpu*N, cuda:N or cuda:all");
        }
    }
    if out.is_empty() {
        bail!("no device given");
    }
    Ok(out)
}

fn auto_devices() -> Vec<DeviceSpec> {
    match cuda_device_count() {
        0 => vec![DeviceSpec::Cpu],
        n => (0..n).map(DeviceSpec::Cuda).collect(),
    }
}

/// Size of the maps sent on `depth` / `confidence` / `depth_vis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputSize {
    /// The network's processed size (multiples of 14).
    Processed,
    /// The input frame's size (maps resized back, intrinsics rescaled).
    Input,
}

impl FromStr for OutputSize {
    type Err = eyre::Report;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "processed" => Self::Processed,
            "input" => Self::Input,
            _ => bail!("expected processed or input"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub model: String,
    /// Published variant of a bare `.safetensors` without `config.json` (`MODEL_NAME`).
    pub model_name: Option<String>,
    pub precision: Precision,
    pub devices: Vec<DeviceSpec>,
    pub preprocess: PreprocessConfig,
    pub use_ray_pose: bool,
    pub ref_view_strategy: RefViewStrategy,
    pub mode: Mode,
    pub window: usize,
    pub stride: usize,
    pub sync: Duration,
    pub conf_percentile: f64,
    pub max_points: usize,
    pub output_size: OutputSize,
    pub max_pixels: u64,
    pub status_every: Duration,
    /// Rig mode: the image inputs that form one set (`RIG_INPUTS`, comma
    /// list); `None`: every image input of the node.
    pub rig_inputs: Option<Vec<String>>,
    /// Intrinsics of cameras that send neither `focal` metadata nor a `camera_info`
    /// (`INTRINSICS`), with the image size they are for (`None`: the frames' size).
    pub intrinsics: Option<(Intrinsics, Option<(u32, u32)>)>,
    /// Track mode's knobs (`TRACK_*`).
    pub track: TrackConfig,
    /// Run the Gaussian head (set by [`crate::run`] when the `gaussians` output is wired).
    pub gaussians: bool,
}

/// Parses `INTRINSICS`: `fx,fy,cx,cy` in the frames' pixels, or `fx,fy,cx,cy@WIDTHxHEIGHT`
/// for another image size (rescaled to each frame's size).
pub fn parse_intrinsics(s: &str) -> Result<(Intrinsics, Option<(u32, u32)>)> {
    let (k, size) = match s.split_once('@') {
        Some((k, size)) => {
            let (w, h) = size
                .trim()
                .split_once(['x', 'X'])
                .ok_or_else(|| eyre!("the size after `@` must be WIDTHxHEIGHT"))?;
            let dim = |d: &str| -> Result<u32> {
                match d.trim().parse::<u32>() {
                    Ok(v) if v > 0 => Ok(v),
                    _ => Err(eyre!(
                        "`{size}`: width and height must be positive integers"
                    )),
                }
            };
            (k, Some((dim(w)?, dim(h)?)))
        }
        None => (s, None),
    };
    let v: Vec<f64> = k
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<f64>()
                .map_err(|_| eyre!("`{}` is not a number", x.trim()))
        })
        .collect::<Result<_>>()?;
    let [fx, fy, cx, cy] = v[..] else {
        bail!("expected fx,fy,cx,cy (4 numbers), got {}", v.len());
    };
    if !(fx > 0.0 && fy > 0.0 && fx.is_finite() && fy.is_finite()) {
        bail!("focal lengths must be positive and finite, got {fx}, {fy}");
    }
    if !(cx.is_finite() && cy.is_finite()) {
        bail!("the principal point must be finite");
    }
    Ok((Intrinsics { fx, fy, cx, cy }, size))
}

/// The env vars the node reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[&[
    "MODEL",
    "MODEL_NAME",
    "PRECISION",
    "DEVICE",
    "PROCESS_RES",
    "PROCESS_RES_METHOD",
    "REF_VIEW_STRATEGY",
    "USE_RAY_POSE",
    "MODE",
    "WINDOW",
    "STRIDE",
    "SYNC_MS",
    "RIG_INPUTS",
    "CONF_PERCENTILE",
    "MAX_POINTS",
    "OUTPUT_SIZE",
    "MAX_PIXELS",
    "STATUS_MS",
    "INTRINSICS",
    "TRACK_KEYFRAMES",
    "TRACK_KF_BASELINE",
    "TRACK_KF_ROTATION_DEG",
    "TRACK_KF_INTERVAL_MS",
    "TRACK_MAX_RESIDUAL",
    "TRACK_MAX_ROTATION_DEG",
    "TRACK_MAX_SCALE_CHANGE",
    "TRACK_OVERLAP_BASELINE",
    "TRACK_OVERLAP_ROTATION_DEG",
]];

fn parse_env<T: FromStr<Err = eyre::Report>>(
    env: &Env,
    name: &'static str,
    default: &str,
) -> Result<T> {
    let raw: String = env.or(name, default.to_string())?;
    raw.parse::<T>()
        .map_err(|e| eyre!("invalid {name}={raw:?}: {e}"))
}

impl Config {
    /// Reads and validates every env var; the first bad one is the error.
    pub fn from_env() -> Result<Self> {
        let env = Env::new(ENV_VARS);
        let model: String = env.or("MODEL", DEFAULT_MODEL.to_string())?;
        let model_name: Option<String> = env.opt("MODEL_NAME")?;
        if let Some(n) = &model_name {
            da3::Da3Config::from_model_name(n)
                .map_err(|e| eyre!("invalid MODEL_NAME={n:?}: {e}"))?;
        }
        let precision: Precision = parse_env(&env, "PRECISION", "auto")?;
        let device_raw: String = env.or("DEVICE", "auto".to_string())?;
        let devices =
            parse_devices(&device_raw).map_err(|e| eyre!("invalid DEVICE={device_raw:?}: {e}"))?;
        let process_res: usize = env.or("PROCESS_RES", 504)?;
        if !(14..=4096).contains(&process_res) {
            bail!("invalid PROCESS_RES={process_res}: must be 14..=4096");
        }
        let method_raw: String = env.or("PROCESS_RES_METHOD", "upper_bound_resize".to_string())?;
        let method: ResizeMethod = method_raw
            .parse()
            .map_err(|e| eyre!("invalid PROCESS_RES_METHOD={method_raw:?}: {e}"))?;
        let strategy_raw: String = env.or("REF_VIEW_STRATEGY", "saddle_balanced".to_string())?;
        let ref_view_strategy: RefViewStrategy = strategy_raw
            .parse()
            .map_err(|e| eyre!("invalid REF_VIEW_STRATEGY={strategy_raw:?}: {e}"))?;
        let mode: Mode = parse_env(&env, "MODE", "live")?;
        let window: usize = env.or("WINDOW", 4)?;
        if !(1..=256).contains(&window) {
            bail!("invalid WINDOW={window}: must be 1..=256");
        }
        let stride: usize = env.opt("STRIDE")?.unwrap_or((window / 2).max(1));
        if stride == 0 || stride > window {
            bail!("invalid STRIDE={stride}: must be 1..=WINDOW ({window})");
        }
        let sync_ms: u64 = env.or("SYNC_MS", 50)?;
        let conf_percentile = env.percentile("CONF_PERCENTILE", CONF_PERCENTILE_DEFAULT)?;
        let max_points: usize = env.or("MAX_POINTS", 200_000)?;
        if max_points == 0 {
            bail!("invalid MAX_POINTS=0: must be at least 1");
        }
        let output_size: OutputSize = parse_env(&env, "OUTPUT_SIZE", "processed")?;
        let max_pixels: u64 = env.or("MAX_PIXELS", 40_000_000)?;
        if max_pixels == 0 {
            bail!("invalid MAX_PIXELS=0");
        }
        let status_ms: u64 = env.or("STATUS_MS", 1000)?;
        let rig_inputs: Option<Vec<String>> = env.opt::<String>("RIG_INPUTS")?.map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        });
        if rig_inputs.as_ref().is_some_and(|r| r.is_empty()) {
            bail!("invalid RIG_INPUTS: give a comma-separated list of image inputs");
        }
        let use_ray_pose = env.flag("USE_RAY_POSE", false)?;
        let intrinsics = match env.opt::<String>("INTRINSICS")? {
            Some(raw) => {
                Some(parse_intrinsics(&raw).map_err(|e| eyre!("invalid INTRINSICS={raw:?}: {e}"))?)
            }
            None => None,
        };
        let track = track_config(&env)?;
        env.finish();
        Ok(Self {
            model,
            model_name,
            precision,
            devices,
            preprocess: PreprocessConfig {
                process_res,
                method,
            },
            use_ray_pose,
            ref_view_strategy,
            mode,
            window,
            stride,
            sync: Duration::from_millis(sync_ms),
            conf_percentile,
            max_points,
            output_size,
            max_pixels,
            status_every: Duration::from_millis(status_ms.max(50)),
            rig_inputs,
            intrinsics,
            track,
            gaussians: false,
        })
    }
}

/// Track mode's knobs, checked.
fn track_config(env: &Env) -> Result<TrackConfig> {
    let d = TrackConfig::default();
    let keyframes: usize = env.or("TRACK_KEYFRAMES", d.keyframes)?;
    if !(1..=32).contains(&keyframes) {
        bail!("invalid TRACK_KEYFRAMES={keyframes}: must be 1..=32");
    }
    let kf_baseline: f64 = env.or("TRACK_KF_BASELINE", d.kf_baseline)?;
    if !(kf_baseline.is_finite() && kf_baseline > 0.0) {
        bail!("invalid TRACK_KF_BASELINE={kf_baseline}: must be a positive fraction of the scene depth");
    }
    let kf_rotation_deg: f64 = env.or("TRACK_KF_ROTATION_DEG", d.kf_rotation_deg)?;
    if !(kf_rotation_deg.is_finite() && kf_rotation_deg > 0.0 && kf_rotation_deg <= 180.0) {
        bail!("invalid TRACK_KF_ROTATION_DEG={kf_rotation_deg}: must be in (0, 180]");
    }
    let interval_ms: u64 = env.or("TRACK_KF_INTERVAL_MS", d.kf_interval_ns / 1_000_000)?;
    if interval_ms == 0 {
        bail!("invalid TRACK_KF_INTERVAL_MS=0: must be at least 1");
    }
    let max_residual: f64 = env.or("TRACK_MAX_RESIDUAL", d.max_residual)?;
    if !(max_residual.is_finite() && max_residual > 0.0) {
        bail!("invalid TRACK_MAX_RESIDUAL={max_residual}: must be a positive fraction of the scene depth");
    }
    let max_rotation_deg: f64 = env.or("TRACK_MAX_ROTATION_DEG", d.max_rotation_deg)?;
    if !(max_rotation_deg.is_finite() && max_rotation_deg > 0.0 && max_rotation_deg <= 180.0) {
        bail!("invalid TRACK_MAX_ROTATION_DEG={max_rotation_deg}: must be in (0, 180]");
    }
    let max_scale_change: f64 = env.or("TRACK_MAX_SCALE_CHANGE", d.max_scale_change)?;
    if !(max_scale_change.is_finite() && max_scale_change > 0.0) {
        bail!("invalid TRACK_MAX_SCALE_CHANGE={max_scale_change}: must be a positive |ln| of a depth ratio");
    }
    let overlap_baseline: f64 = env.or("TRACK_OVERLAP_BASELINE", d.overlap_baseline)?;
    if !(overlap_baseline.is_finite() && overlap_baseline > 0.0) {
        bail!("invalid TRACK_OVERLAP_BASELINE={overlap_baseline}: must be a positive number of scene depths");
    }
    let overlap_rotation_deg: f64 = env.or("TRACK_OVERLAP_ROTATION_DEG", d.overlap_rotation_deg)?;
    if !(overlap_rotation_deg.is_finite()
        && overlap_rotation_deg > 0.0
        && overlap_rotation_deg <= 180.0)
    {
        bail!("invalid TRACK_OVERLAP_ROTATION_DEG={overlap_rotation_deg}: must be in (0, 180]");
    }
    Ok(TrackConfig {
        keyframes,
        kf_baseline,
        kf_rotation_deg,
        kf_interval_ns: interval_ms.saturating_mul(1_000_000),
        max_residual,
        max_rotation_deg,
        max_scale_change,
        overlap_baseline,
        overlap_rotation_deg,
    })
}

impl Config {
    /// The library's inference options of this configuration.
    pub fn inference(&self) -> InferenceOptions {
        InferenceOptions {
            preprocess: self.preprocess,
            use_ray_pose: self.use_ray_pose,
            ref_view_strategy: self.ref_view_strategy,
            export_feat_layers: Vec::new(),
            infer_gs: self.gaussians,
        }
    }

    /// The node's defaults (what `from_env` gives with no variable set) for
    /// `model`, on the CPU in f32: for library use and tests.
    pub fn defaults(model: &str) -> Self {
        Self {
            model: model.to_string(),
            precision: Precision::F32,
            devices: vec![DeviceSpec::Cpu],
            preprocess: PreprocessConfig::default(),
            use_ray_pose: false,
            ref_view_strategy: RefViewStrategy::SaddleBalanced,
            mode: Mode::Live,
            window: 4,
            stride: 2,
            sync: Duration::from_millis(50),
            conf_percentile: CONF_PERCENTILE_DEFAULT,
            max_points: 200_000,
            output_size: OutputSize::Processed,
            max_pixels: 40_000_000,
            status_every: Duration::from_millis(1000),
            rig_inputs: None,
            model_name: None,
            intrinsics: None,
            track: TrackConfig::default(),
            gaussians: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        assert_eq!(parse_devices("cpu").unwrap(), vec![DeviceSpec::Cpu]);
        assert_eq!(parse_devices("cpu*3").unwrap().len(), 3);
        assert_eq!(
            parse_devices("cuda:0,1").unwrap(),
            vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]
        );
        assert_eq!(
            parse_devices("cuda:2, cpu").unwrap(),
            vec![DeviceSpec::Cuda(2), DeviceSpec::Cpu]
        );
        assert!(parse_devices("gpu").is_err());
        assert!(parse_devices("cpu*0").is_err());
        assert!(parse_devices("").is_err());
        assert_eq!(parse_devices("auto").unwrap(), vec![DeviceSpec::Cpu]);
    }

    #[test]
    fn intrinsics() {
        let (k, size) = parse_intrinsics("500, 480.5,320,240").unwrap();
        assert_eq!(
            (k.fx, k.fy, k.cx, k.cy, size),
            (500.0, 480.5, 320.0, 240.0, None)
        );
        let (_, size) = parse_intrinsics("500,500,320,240@640x480").unwrap();
        assert_eq!(size, Some((640, 480)));
        for bad in [
            "500,500,320",
            "500,500,320,240,1",
            "0,500,320,240",
            "-1,500,320,240",
            "nan,500,320,240",
            "500,500,inf,240",
            "500,500,320,240@640",
            "500,500,320,240@0x480",
            "a,b,c,d",
        ] {
            assert!(parse_intrinsics(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn enums() {
        assert_eq!("WINDOW".parse::<Mode>().unwrap(), Mode::Window);
        assert!("stream".parse::<Mode>().is_err());
        assert_eq!("track".parse::<Mode>().unwrap(), Mode::Track);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::F16);
        assert!("int8".parse::<Precision>().is_err());
        assert_eq!("input".parse::<OutputSize>().unwrap(), OutputSize::Input);
        // auto on the CPU: the library's rule (f32, or bf16 where measured faster)
        assert_eq!(
            Precision::Auto.dtype(&candle_core::Device::Cpu),
            da3::device::cpu_auto_dtype(da3::device::cpu_bf16(), da3::device::cpu_is_amd())
        );
    }
}
