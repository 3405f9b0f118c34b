//! `da3`: run Depth Anything 3 on images and export the results like the reference API.
//!
//! ```text
//! da3 infer --model depth-anything/DA3-SMALL a.png b.png --out OUT [--format npz,mini_npz]
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use da3::device::{DeviceSpec, Precision};
use da3::export::{self, parse_formats, read_array, NpyArray};
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
    /// Run the model on a set of views and export npz results.
    Infer(InferArgs),
    /// Time the network forward (f32 by default) on seeded random views; one JSON line per view count.
    Bench(BenchArgs),
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
    /// give the other side one more warm-up run).
    #[arg(long, value_delimiter = ',')]
    lockstep: Option<Vec<PathBuf>>,
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
    /// Reference view: first, middle, saddle_balanced, saddle_sim_range.
    #[arg(long, default_value = "saddle_balanced")]
    ref_view_strategy: String,
    /// Compute precision: auto (bf16 where the GPU supports it, else f16; f32 on the CPU),
    /// no, f32 (fp32), bf16, f16 (fp16).
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Export directory (results go to OUT/exports/<format>/results.npz).
    #[arg(long)]
    out: PathBuf,
    /// Export formats, comma- (or dash-) separated: npz, mini_npz.
    #[arg(long, default_value = "mini_npz")]
    format: String,
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
    let formats = parse_formats(&args.format)?;
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
    for f in formats {
        let path = export::export(pred, f, &args.out)?;
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
        a.height % 14 == 0 && a.width % 14 == 0,
        "--height and --width must be multiples of 14"
    );
    ensure!(a.iters > 0, "--iters must be at least 1");
    ensure!(
        a.lockstep.is_none() || a.views.len() == 1,
        "--lockstep times one view count per process (the other side runs one)"
    );
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
        let mut line = serde_json::json!({
            "impl": "dora-da3 (candle)",
            "model": a.model,
            "views": s,
            "height": a.height,
            "width": a.width,
            "dtype": format!("{dtype:?}").to_lowercase(),
            "device": a.device.to_string(),
            "threads": candle_core::utils::get_num_threads(),
            "median_ms": median,
            "min_ms": times[0],
            "views_per_s": s as f64 / (median / 1e3),
            "peak_rss_mib": peak_rss_mib(),
            "load_s": load_s,
            "iters": a.iters,
            "times_ms": in_order,
        });
        if let Some(p) = profile {
            line["profile"] = p;
        }
        println!("{line}");
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
    }
}
