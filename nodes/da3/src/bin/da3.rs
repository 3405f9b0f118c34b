//! `da3`: run Depth Anything 3 on images and export the results like the reference API.
//!
//! ```text
//! da3 infer --model depth-anything/DA3-SMALL a.png b.png --out OUT [--format glb,ply,colmap,npz,...]
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use da3::device::{DeviceSpec, Precision};
use da3::export::{self, parse_export_formats, read_array, ExportOptions, NpyArray};
use da3::inference::{infer, InferenceOptions, InputIntrinsics};
use da3::preprocess::{Mat3, PreprocessConfig, ResizeMethod, RgbImage, DEFAULT_PROCESS_RES};
use da3::{Da3Model, RefViewStrategy};
use da3_io::geometry::Mat4;
use eyre::{ensure, Result, WrapErr};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "da3",
    version,
    about = "Depth Anything 3 (candle): depth, confidence and cameras from images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the model on a set of views and export the results (npz, mini_npz, glb, ply, png16,
    /// depth_vis, colmap).
    Infer(InferArgs),
    /// Time the network forward (f32 by default) on seeded random views; one JSON line per view count.
    Bench(BenchArgs),
    /// One network forward on given tensors (parity checks against the reference's network):
    /// reads `image` (1, S, 3, H, W; normalised) and optionally `extrinsics` (1, S, 4, 4) and
    /// `intrinsics` (1, S, 3, 3) from a .safetensors file, writes every output as f32.
    Forward(ForwardArgs),
}

#[derive(Args, Debug)]
struct ForwardArgs {
    /// Hugging Face hub id, checkpoint directory or .safetensors file.
    #[arg(long)]
    model: String,
    /// Published variant of a bare .safetensors without config.json.
    #[arg(long)]
    model_name: Option<String>,
    /// Cases in the parity-fixture layout (.safetensors): `CASE.input` (1, S, 3, H, W),
    /// optionally `CASE.input_extrinsics` / `CASE.input_intrinsics`, and the reference's
    /// outputs `CASE.out.depth`, `.depth_conf`, `.extrinsics`, `.intrinsics`, `.sky` to
    /// compare with (max |ours - ref| / max |ref| per output).
    #[arg(long)]
    cases: PathBuf,
    /// Cases to run, comma separated (default: every `CASE.input` in the file); `CASE:OTHER`
    /// takes the input views of case OTHER (`OTHER.input`), as fixtures that share inputs do.
    #[arg(long, value_delimiter = ',')]
    case: Vec<String>,
    /// Write our outputs (f32, keys `CASE.out.*`) to this .safetensors file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fail when an output's relative error is above this.
    #[arg(long)]
    tolerance: Option<f64>,
    /// Compute precision: auto, no, f32 (fp32), bf16, f16 (fp16).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Hugging Face hub id, checkpoint directory or .safetensors file.
    #[arg(long)]
    model: String,
    /// Published variant of a bare .safetensors without config.json (da3-small, da3-base,
    /// da3-large, da3-giant, da3metric-large, da3mono-large, da3nested-giant-large); detected
    /// from its tensors when not given, where that is unambiguous.
    #[arg(long)]
    model_name: Option<String>,
    /// View counts to time, comma separated.
    #[arg(long, default_value = "1,4", value_delimiter = ',')]
    views: Vec<usize>,
    /// Network input height (multiple of 14; 378 is a 640x480 frame at 504).
    #[arg(long, default_value_t = 378)]
    height: usize,
    /// Network input width (multiple of 14).
    #[arg(long, default_value_t = 504)]
    width: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Compute precision: auto, no, f32 (fp32), bf16, f16 (fp16).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// After the warm-up, run one more forward with per-kernel timing (f32 CPU kernels)
    /// and print where the time goes, with the GEMM rate against a measured matmul peak.
    #[arg(long)]
    profile: bool,
    /// `WAIT,SIGNAL`: two named pipes shared with another benchmark process (the reference's
    /// `bench_reference.py --lockstep SIGNAL,WAIT`). Every forward first reads one byte from
    /// WAIT and writes one to SIGNAL when done, so the two processes take strict turns and
    /// each timed run of ours sits next to one of theirs: a slow spell of a shared machine
    /// lands on both sides. The `--profile` forward takes one turn more (after the warm-up:
    /// give the other side one more warm-up run). With several view counts the other side
    /// follows the same sequence: warm-up and timed runs of the first count, then the next.
    #[arg(long, value_delimiter = ',')]
    lockstep: Option<Vec<PathBuf>>,
    /// Model replicas on the device (each opened on its own, as the node's `DEVICE=cuda:0,0`
    /// does), each forward-ing on its own thread at the same time; reports their combined
    /// throughput.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

/// Pause at the start of each lockstep turn, before the timer starts.
const LOCKSTEP_SETTLE: Duration = Duration::from_millis(50);

/// Turn-taking with another process over two named pipes (see `BenchArgs::lockstep`).
struct Lockstep {
    wait: std::fs::File,
    signal: std::fs::File,
}

impl Lockstep {
    fn open(paths: &[PathBuf]) -> Result<Self> {
        // Read + write opens of a FIFO do not block waiting for the other end (Linux).
        let open = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .wrap_err_with(|| format!("opening lockstep pipe {}", p.display()))
        };
        ensure!(paths.len() == 2, "--lockstep takes WAIT,SIGNAL");
        Ok(Self {
            wait: open(&paths[0])?,
            signal: open(&paths[1])?,
        })
    }

    /// Wait for our turn, run `f`, hand the turn over.
    fn turn<R>(&mut self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        use std::io::{Read, Write};
        let mut b = [0u8; 1];
        self.wait
            .read_exact(&mut b)
            .wrap_err("lockstep: waiting for our turn")?;
        // Let the other side's idle worker threads stop spinning first (libgomp spins
        // ~10 ms after a parallel region; under SCHED_FIFO they would hold a core).
        std::thread::sleep(LOCKSTEP_SETTLE);
        let r = f();
        self.signal
            .write_all(b"x")
            .wrap_err("lockstep: handing the turn over")?;
        r
    }
}

/// Run `f` as one turn of `lockstep`, or straight away without one.
fn take_turn<R>(lockstep: &mut Option<Lockstep>, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match lockstep {
        Some(l) => l.turn(f),
        None => f(),
    }
}

#[derive(Args, Debug)]
struct InferArgs {
    /// Hugging Face hub id (`owner/name[@revision]`), checkpoint directory or .safetensors file.
    #[arg(long)]
    model: String,
    /// Published variant of a bare .safetensors without config.json (da3-small, da3-base,
    /// da3-large, da3-giant, da3metric-large, da3mono-large, da3nested-giant-large); detected
    /// from its tensors when not given, where that is unambiguous.
    #[arg(long)]
    model_name: Option<String>,
    /// Input images (PNG, JPEG, WebP) or directories of images (sorted by name).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Processing resolution.
    #[arg(long, default_value_t = DEFAULT_PROCESS_RES)]
    process_res: usize,
    /// upper_bound_resize, upper_bound_crop, lower_bound_resize or lower_bound_crop.
    #[arg(long, default_value = "upper_bound_resize")]
    process_res_method: String,
    /// World-to-camera extrinsics, (N, 4, 4) or (N, 3, 4), .npy (or .npz with key `extrinsics`).
    #[arg(long, requires = "intrinsics")]
    extrinsics: Option<PathBuf>,
    /// Intrinsics in input-image pixels, (N, 3, 3), .npy (or .npz with key `intrinsics`).
    #[arg(long)]
    intrinsics: Option<PathBuf>,
    /// Estimate cameras with the ray head instead of the camera decoder.
    #[arg(long)]
    use_ray_pose: bool,
    /// Backbone blocks whose features to export (comma-separated, e.g. `5,11`): written to
    /// the npz exports as `feat_layer_<i>`, (N, H/14, W/14, C), the reference's
    /// `export_feat_layers` and key names.
    #[arg(long, value_delimiter = ',')]
    export_feat_layers: Vec<usize>,
    /// Run the Gaussian head (DA3-GIANT, DA3NESTED-GIANT-LARGE): 3D Gaussians per pixel, for
    /// the `gs_ply` export (which turns it on by itself).
    #[arg(long)]
    infer_gs: bool,
    /// Reference view: first, middle, saddle_balanced, saddle_sim_range.
    #[arg(long, default_value = "saddle_balanced")]
    ref_view_strategy: String,
    /// Compute precision: auto (GPU: bf16 where supported, else f16; CPU: bf16 with AMX-BF16, or AVX512-BF16 on AMD, else f32),
    /// no, f32 (fp32), bf16, f16 (fp16).
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Export directory: OUT/exports/{npz,mini_npz}/results.npz, OUT/scene.glb, OUT/scene.ply,
    /// OUT/png16/NNNN.{png,json}, OUT/depth_vis/NNNN.png, OUT/{cameras,images,points3D}.bin,
    /// OUT/gs_ply/0000.ply.
    #[arg(long, visible_alias = "export-dir")]
    out: PathBuf,
    /// Export formats, comma- (or dash-, as the reference's `--export-format`) separated:
    /// npz, mini_npz, glb, ply, png16, depth_vis, colmap, gs_ply (3D Gaussians, models with a
    /// Gaussian head).
    #[arg(long, visible_alias = "export-format", default_value = "mini_npz")]
    format: String,
    /// glb, ply, colmap: keep pixels whose confidence is at or above this percentile of all
    /// views' confidence (0 keeps every valid depth).
    #[arg(long, default_value_t = 40.0)]
    conf_thresh_percentile: f64,
    /// glb, ply, colmap: most points (evenly sub-sampled).
    #[arg(long, default_value_t = 1_000_000)]
    num_max_points: usize,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

const IMAGE_EXTS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "PNG", "JPG"];

fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .wrap_err_with(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            IMAGE_EXTS.contains(&e)
                                || IMAGE_EXTS.contains(&e.to_lowercase().as_str())
                        })
                })
                .collect();
            files.sort();
            ensure!(!files.is_empty(), "no images in {}", p.display());
            out.extend(files);
        } else {
            ensure!(p.is_file(), "no such image: {}", p.display());
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn load_matrices(path: &Path, key: &str, rows: &[usize], n: usize) -> Result<NpyArray> {
    let a = read_array(path, Some(key)).or_else(|_| read_array(path, None))?;
    ensure!(
        a.shape.len() == 3
            && a.shape[0] == n
            && rows.contains(&a.shape[1])
            && a.shape[2] == if key == "intrinsics" { 3 } else { 4 },
        "{}: {key} must be (N={n}, {}, {}), got {:?}",
        path.display(),
        rows.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("|"),
        if key == "intrinsics" { 3 } else { 4 },
        a.shape
    );
    Ok(a)
}

fn read_extrinsics(path: &Path, n: usize) -> Result<Vec<Mat4<f32>>> {
    let a = load_matrices(path, "extrinsics", &[3, 4], n)?;
    let rows = a.shape[1];
    let v = a.to_f32_vec();
    Ok(v.chunks_exact(rows * 4)
        .map(|m| {
            let mut e = [[0f32; 4]; 4];
            for (i, row) in e.iter_mut().enumerate().take(rows) {
                row.copy_from_slice(&m[i * 4..i * 4 + 4]);
            }
            if rows == 3 {
                e[3] = [0.0, 0.0, 0.0, 1.0];
            }
            e
        })
        .collect())
}

fn read_intrinsics(path: &Path, n: usize) -> Result<InputIntrinsics> {
    let a = load_matrices(path, "intrinsics", &[3], n)?;
    fn mats<T: Copy>(v: &[T]) -> Vec<Mat3<T>> {
        v.chunks_exact(9)
            .map(|m| [[m[0], m[1], m[2]], [m[3], m[4], m[5]], [m[6], m[7], m[8]]])
            .collect()
    }
    Ok(match &a.data {
        export::NpyData::F64(v) => InputIntrinsics::F64(mats(v)),
        _ => InputIntrinsics::F32(mats(&a.to_f32_vec())),
    })
}

fn spinner(quiet: bool, msg: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").unwrap());
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn run_infer(args: InferArgs) -> Result<()> {
    let method: ResizeMethod = args.process_res_method.parse()?;
    let strategy: RefViewStrategy = args.ref_view_strategy.parse()?;
    let formats = parse_export_formats(&args.format)?;
    ensure!(
        (0.0..=100.0).contains(&args.conf_thresh_percentile),
        "--conf-thresh-percentile must be within 0..=100"
    );
    ensure!(
        args.num_max_points > 0,
        "--num-max-points must be at least 1"
    );
    let device = args.device.open()?;
    let dtype = args.precision.dtype(&device);
    let paths = expand_inputs(&args.images)?;
    let n = paths.len();

    let extrinsics = args
        .extrinsics
        .as_deref()
        .map(|p| read_extrinsics(p, n))
        .transpose()?;
    let intrinsics = args
        .intrinsics
        .as_deref()
        .map(|p| read_intrinsics(p, n))
        .transpose()?;
    if intrinsics.is_some() && extrinsics.is_none() {
        eprintln!("note: --intrinsics without --extrinsics is ignored by the network (as in the reference)");
    }

    let t0 = Instant::now();
    let pb = spinner(
        args.quiet,
        &format!(
            "loading model {} ({dtype:?} on {})",
            args.model, args.device
        ),
    );
    let model = Da3Model::load_named(&args.model, args.model_name.as_deref(), &device, dtype)?;
    pb.finish_and_clear();

    let bar = if args.quiet || n < 2 {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(n as u64);
        b.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        b.set_message("decoding");
        b
    };
    let mut images = Vec::with_capacity(n);
    for p in &paths {
        images.push(RgbImage::open(p)?);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let opts = InferenceOptions {
        preprocess: PreprocessConfig {
            process_res: args.process_res,
            method,
        },
        use_ray_pose: args.use_ray_pose,
        ref_view_strategy: strategy,
        export_feat_layers: args.export_feat_layers.clone(),
        infer_gs: args.infer_gs || formats.contains(&export::ExportFormat::GsPly),
    };
    let pb = spinner(
        args.quiet,
        &format!("running on {n} view{}", if n == 1 { "" } else { "s" }),
    );
    let result = infer(
        &model,
        &images,
        extrinsics.as_deref(),
        intrinsics.as_ref(),
        &opts,
    )?;
    pb.finish_and_clear();

    let pred = &result.prediction;
    // Sky (models with a sky head): its depth is a fill value, left out of the points.
    let exclude = da3::inference::sky_maps(&result.output)?
        .map(|m| {
            m.iter()
                .map(|&p| p >= da3::inference::SKY_THRESHOLD)
                .collect()
        })
        .unwrap_or_default();
    let opts = ExportOptions {
        conf_percentile: args.conf_thresh_percentile,
        max_points: args.num_max_points,
        sources: export::view_sources(pred, &result.batch, &paths),
        exclude,
    };
    for path in export::export_all(pred, &formats, &args.out, &opts)? {
        if !args.quiet {
            println!("wrote {}", path.display());
        }
    }
    if !args.quiet {
        println!(
            "{n} view{} at {}x{} in {:.2?}{}",
            if n == 1 { "" } else { "s" },
            pred.width,
            pred.height,
            t0.elapsed(),
            result
                .alignment_scale
                .map(|s| format!(", Umeyama scale {s:.6}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn run_bench(a: BenchArgs) -> Result<()> {
    ensure!(
        a.height.is_multiple_of(14) && a.width.is_multiple_of(14),
        "--height and --width must be multiples of 14"
    );
    ensure!(a.iters > 0, "--iters must be at least 1");
    ensure!(a.replicas > 0, "--replicas must be at least 1");
    if a.replicas > 1 {
        ensure!(
            a.lockstep.is_none(),
            "--replicas and --lockstep do not go together"
        );
        return run_bench_replicas(a);
    }
    let mut lockstep = a.lockstep.as_deref().map(Lockstep::open).transpose()?;
    let device = a.device.open()?;
    let dtype = a.precision.dtype(&device);
    let t0 = Instant::now();
    let model = Da3Model::load_named(&a.model, a.model_name.as_deref(), &device, dtype)?;
    let load_s = t0.elapsed().as_secs_f64();
    for &s in &a.views {
        ensure!(s > 0, "view counts must be positive");
        // Seeded normalised input in [-2, 2) (values like ImageNet-normalised pixels).
        let x = (da3::testing::rand(&[1, s, 3, a.height, a.width], 0x2545_f491_4f6c_dd1d) * 2.0)?
            .to_device(&device)?;
        let opts = da3::ForwardOptions::default();
        let run = || -> Result<f64> {
            let t = Instant::now();
            let out = model.forward(&x, &opts)?;
            // Force the result (a no-op on CPU, a sync on CUDA).
            out.depth
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        for _ in 0..a.warmup {
            take_turn(&mut lockstep, run)?;
        }
        let profile = if a.profile {
            Some(take_turn(&mut lockstep, || {
                profile_forward(&model, &x, &opts)
            })?)
        } else {
            None
        };
        let mut times = Vec::with_capacity(a.iters);
        for _ in 0..a.iters {
            times.push(take_turn(&mut lockstep, run)?);
        }
        let in_order = times.clone();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let mut line = bench_line(&a, s, dtype);
        extend(
            &mut line,
            serde_json::json!({
                "median_ms": median,
                "min_ms": times[0],
                "views_per_s": s as f64 / (median / 1e3),
                "peak_rss_mib": peak_rss_mib(),
                "load_s": load_s,
                "iters": a.iters,
                "times_ms": in_order,
            }),
        );
        if let Some(p) = profile {
            line["profile"] = p;
        }
        println!("{line}");
    }
    Ok(())
}

/// The fields every `da3 bench` JSON line starts with: what ran, where, how.
fn bench_line(a: &BenchArgs, views: usize, dtype: candle_core::DType) -> serde_json::Value {
    serde_json::json!({
        "impl": "dora-da3 (candle)",
        "model": a.model,
        "views": views,
        "height": a.height,
        "width": a.width,
        "dtype": format!("{dtype:?}").to_lowercase(),
        "device": a.device.to_string(),
        "threads": candle_core::utils::get_num_threads(),
        "cpu_bf16": da3::device::cpu_bf16().to_string(),
        "half_gemm": da3::model::ops::mkl_version().unwrap_or_else(|| "none (f32 fallback)".into()),
        "onednn": da3::model::ops::onednn_describe(),
    })
}

/// Add the fields of `more` (an object) to `line`.
fn extend(line: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(l), serde_json::Value::Object(m)) = (line.as_object_mut(), more) {
        l.extend(m);
    }
}

fn run_forward(a: ForwardArgs) -> Result<()> {
    use candle_core::{Device, Tensor};
    let device = a.device.open()?;
    let dtype = a.precision.dtype(&device);
    let model = Da3Model::load_named(&a.model, a.model_name.as_deref(), &device, dtype)?;
    let t = candle_core::safetensors::load(&a.cases, &Device::Cpu)
        .wrap_err_with(|| format!("reading {}", a.cases.display()))?;
    let mut cases = a.case.clone();
    if cases.is_empty() {
        cases = t
            .keys()
            .filter_map(|k| k.strip_suffix(".input").map(str::to_string))
            .collect();
        cases.sort();
    }
    ensure!(
        !cases.is_empty(),
        "{}: no CASE.input tensors",
        a.cases.display()
    );
    let mut saved = std::collections::HashMap::new();
    let mut worst = 0f64;
    for spec in &cases {
        let (case, input_of) = spec.split_once(':').unwrap_or((spec, spec));
        let get = |k: &str| -> Result<Option<Tensor>> {
            t.get(&format!("{case}.{k}"))
                .map(|v| v.to_device(&device))
                .transpose()
                .map_err(Into::into)
        };
        let x = t
            .get(&format!("{input_of}.input"))
            .ok_or_else(|| eyre::eyre!("{}: no `{input_of}.input`", a.cases.display()))?
            .to_device(&device)?;
        let opts = da3::ForwardOptions {
            extrinsics: get("input_extrinsics")?,
            intrinsics: get("input_intrinsics")?,
            ..Default::default()
        };
        let start = Instant::now();
        let out = model.forward(&x, &opts)?;
        let depth = out.depth.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let mut errs = serde_json::Map::new();
        for (k, v) in [
            ("depth", Some(&depth)),
            ("depth_conf", out.depth_conf.as_ref()),
            ("extrinsics", out.extrinsics.as_ref()),
            ("intrinsics", out.intrinsics.as_ref()),
            ("sky", out.sky.as_ref()),
        ] {
            let Some(v) = v else { continue };
            let v = v.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            if let Some(want) = t.get(&format!("{case}.out.{k}")) {
                ensure!(
                    want.dims() == v.dims(),
                    "{case}.{k}: shape {:?}, the reference's {:?}",
                    v.dims(),
                    want.dims()
                );
                let e = da3::testing::max_rel_err(&v, want);
                worst = if e.is_nan() { f64::NAN } else { worst.max(e) };
                errs.insert(k.to_string(), e.into());
            }
            saved.insert(format!("{case}.out.{k}"), v);
        }
        println!(
            "{}",
            serde_json::json!({"case": case, "dtype": format!("{dtype:?}").to_lowercase(),
                "device": a.device.to_string(), "views": x.dim(1)?, "forward_ms": ms,
                "max_rel_err": errs})
        );
    }
    if let Some(path) = &a.out {
        candle_core::safetensors::save(&saved, path)
            .wrap_err_with(|| format!("writing {}", path.display()))?;
    }
    if let Some(tol) = a.tolerance {
        ensure!(
            worst <= tol,
            "largest relative error {worst:.3e} is above --tolerance {tol:e}"
        );
    }
    Ok(())
}

/// `da3 bench --replicas N`: N models on N separately opened devices, one thread each, all
/// running the same number of forwards at once.
fn run_bench_replicas(a: BenchArgs) -> Result<()> {
    let mut replicas = Vec::with_capacity(a.replicas);
    let t0 = Instant::now();
    for _ in 0..a.replicas {
        let device = a.device.open()?;
        let dtype = a.precision.dtype(&device);
        let model = Da3Model::load_named(&a.model, a.model_name.as_deref(), &device, dtype)?;
        replicas.push((device, model));
    }
    let load_s = t0.elapsed().as_secs_f64();
    let dtype = replicas[0].1.dtype();
    for &s in &a.views {
        ensure!(s > 0, "view counts must be positive");
        let x = da3::testing::rand(&[1, s, 3, a.height, a.width], 0x2545_f491_4f6c_dd1d) * 2.0;
        let x = x?;
        let opts = da3::ForwardOptions::default();
        let forward = |model: &Da3Model, x: &candle_core::Tensor| -> Result<()> {
            let out = model.forward(x, &opts)?;
            out.depth
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            Ok(())
        };
        let inputs = replicas
            .iter()
            .map(|(d, _)| x.to_device(d))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for ((_, m), x) in replicas.iter().zip(&inputs) {
            for _ in 0..a.warmup {
                forward(m, x)?;
            }
        }
        let start = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = replicas
                .iter()
                .zip(&inputs)
                .map(|((_, m), x)| {
                    scope.spawn(move || -> Result<()> {
                        for _ in 0..a.iters {
                            forward(m, x)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| eyre::eyre!("a replica thread panicked"))??;
            }
            Ok(())
        })?;
        let wall = start.elapsed().as_secs_f64();
        let forwards = a.replicas * a.iters;
        println!("{}", {
            let mut line = bench_line(&a, s, dtype);
            extend(
                &mut line,
                serde_json::json!({
                    "replicas": a.replicas,
                    "forwards": forwards,
                    "wall_s": wall,
                    "mean_ms_per_forward": wall * 1e3 / forwards as f64,
                    "views_per_s": (forwards * s) as f64 / wall,
                    "load_s": load_s,
                }),
            );
            line
        });
    }
    Ok(())
}

/// One forward with the CPU kernels timed; prints a table to stderr, returns it as JSON.
fn profile_forward(
    model: &Da3Model,
    x: &candle_core::Tensor,
    opts: &da3::ForwardOptions,
) -> Result<serde_json::Value> {
    use da3::model::profile as cpu;
    let peak = cpu::matmul_peak_gflops();
    let threads = candle_core::utils::get_num_threads().max(1) as f64;
    cpu::set_profiling(true);
    let (t, c) = (Instant::now(), cpu::process_cpu_secs());
    model.forward(x, opts)?;
    let total = t.elapsed().as_secs_f64();
    let total_cpu = cpu::process_cpu_secs() - c;
    // How busy the threads were: CPU time over wall time x threads.
    let busy = |cpu: f64, wall: f64| 100.0 * cpu / (wall * threads).max(1e-12);
    let stats = cpu::profile();
    cpu::set_profiling(false);
    let mut rows = Vec::new();
    let (mut ksecs, mut kcpu, mut kflops) = (0.0, 0.0, 0.0);
    eprintln!("kernel            calls   ms      share   GFLOP   GFLOP/s  busy");
    for (name, st) in &stats {
        ksecs += st.secs;
        kcpu += st.cpu_secs;
        kflops += st.flops;
        eprintln!(
            "{name:<16} {:>6} {:>8.1} {:>6.1}% {:>7.2} {:>8.1} {:>5.1}%",
            st.calls,
            st.secs * 1e3,
            100.0 * st.secs / total,
            st.flops / 1e9,
            st.flops / 1e9 / st.secs.max(1e-12),
            busy(st.cpu_secs, st.secs)
        );
        rows.push(
            serde_json::json!({"kernel": name, "calls": st.calls, "ms": st.secs * 1e3,
            "gflop": st.flops / 1e9, "busy_pct": busy(st.cpu_secs, st.secs)}),
        );
    }
    let other = (total - ksecs).max(0.0);
    eprintln!(
        "other (candle)          {:>8.1} {:>6.1}%                  {:>5.1}%",
        other * 1e3,
        100.0 * other / total,
        busy((total_cpu - kcpu).max(0.0), other)
    );
    eprintln!(
        "forward {:.1} ms ({:.1}% busy), {:.2} GFLOP in GEMM kernels: {:.1} GFLOP/s overall, \
         {:.1} GFLOP/s inside them; matmul peak {:.1} GFLOP/s",
        total * 1e3,
        busy(total_cpu, total),
        kflops / 1e9,
        kflops / 1e9 / total,
        kflops / 1e9 / ksecs.max(1e-12),
        peak
    );
    Ok(serde_json::json!({
        "forward_ms": total * 1e3,
        "gflop": kflops / 1e9,
        "gflops_overall": kflops / 1e9 / total,
        "gflops_in_kernels": kflops / 1e9 / ksecs.max(1e-12),
        "matmul_peak_gflops": peak,
        "other_ms": other * 1e3,
        "busy_pct": busy(total_cpu, total),
        "kernels": rows,
    }))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    da3::tuning::set(da3::tuning::Tuning::from_env()?);
    match cli.command {
        Command::Infer(a) => run_infer(a),
        Command::Bench(a) => run_bench(a),
        Command::Forward(a) => run_forward(a),
    }
}
