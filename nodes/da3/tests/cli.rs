//! End-to-end: the `da3` binary on the fixture views with the tiny-anyview fixture model,
//! compared with the reference API's npz exports (`fixtures/cli/`).
//!
//! * `cli/noipp/*.npz` (from `tests/gen_cli_noipp.py`): the reference run with OpenCV's IPP
//!   backend off, i.e. OpenCV's own resize, which the Rust preprocessing reproduces bit-exactly:
//!   images must be identical and float outputs within 1e-4 (max|a-b| / max|b|), plus one
//!   rounding step of the export (conf is stored at 2 decimals, depth at 6).
//! * `cli/*.npz`: the reference as shipped (opencv-python routes INTER_CUBIC through IPP, which
//!   differs by one level on ~1% of resized pixels): images within one level, floats close.
//!
//! `cli_writes_every_format`: every other format, read back by the Python tools others use
//! (`tests/export_check.py`: pycolmap, trimesh, plyfile from the .venv of scripts/setup.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use da3::export::{read_npz, NpyArray, NpyData};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("da3-cli-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run_cli(out: &Path, extra: &[&str]) {
    run_cli_formats(out, "npz,mini_npz", extra);
}

fn run_cli_formats(out: &Path, formats: &str, extra: &[&str]) {
    let cli = fixtures().join("cli");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_da3"));
    cmd.arg("infer")
        .arg("--model")
        .arg(fixtures().join("tiny-anyview"))
        .args(["view0.png", "view1.png", "view2.png"].map(|v| cli.join(v)))
        // f32: the reference's fixtures are f32 (`auto` is bf16 on some CPUs)
        .args([
            "--process-res",
            "70",
            "--precision",
            "f32",
            "--format",
            formats,
            "--quiet",
            "--out",
        ])
        .arg(out)
        .args(extra);
    let res = cmd.output().expect("running da3");
    assert!(
        res.status.success(),
        "da3 failed: {}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
}

fn load(p: &Path) -> BTreeMap<String, NpyArray> {
    read_npz(p)
        .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()))
        .into_iter()
        .collect()
}

struct Tolerance {
    /// Max number of differing image values and max difference.
    image_max_count: usize,
    image_max_diff: i32,
    /// max|a-b| / max|b| for float arrays.
    rel: f64,
}

fn compare(
    label: &str,
    ours: &BTreeMap<String, NpyArray>,
    reference: &BTreeMap<String, NpyArray>,
    tol: &Tolerance,
) {
    let keys_ours: Vec<&String> = ours.keys().collect();
    let keys_ref: Vec<&String> = reference.keys().collect();
    assert_eq!(keys_ours, keys_ref, "{label}: keys");
    let mut problems = Vec::new();
    for (k, b) in reference {
        let a = &ours[k];
        assert_eq!(a.shape, b.shape, "{label}: {k} shape");
        assert_eq!(a.data.descr(), b.data.descr(), "{label}: {k} dtype");
        match (&a.data, &b.data) {
            (NpyData::U8(x), NpyData::U8(y)) => {
                let n = x.iter().zip(y).filter(|(p, q)| p != q).count();
                let m = x
                    .iter()
                    .zip(y)
                    .map(|(&p, &q)| (p as i32 - q as i32).abs())
                    .max()
                    .unwrap_or(0);
                println!(
                    "{label}: {k:<10} {:?} u8: {n}/{} values differ, max |diff| {m}",
                    a.shape,
                    x.len()
                );
                if n > tol.image_max_count || m > tol.image_max_diff {
                    problems.push(format!("{k}: {n} values differ (max {m})"));
                }
            }
            _ => {
                let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
                let max_b = y.iter().fold(0f64, |m, v| m.max(v.abs()));
                let max_d = x
                    .iter()
                    .zip(&y)
                    .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
                let rel = max_d / max_b.max(f64::MIN_POSITIVE);
                let n_diff = x.iter().zip(&y).filter(|(p, q)| p != q).count();
                // The export rounds conf to 2 decimals (depth to 6): a 1e-6 difference in the
                // network output can flip one rounding step, so allow one step on top.
                let step = match k.as_str() {
                    "conf" => 0.01,
                    "depth" => 1e-6,
                    _ => 0.0,
                };
                println!(
                    "{label}: {k:<10} {:?} {}: max|a-b|/max|b| = {rel:.3e} (max|a-b| {max_d:.3e}, {n_diff}/{} differ)",
                    a.shape,
                    a.data.descr(),
                    x.len()
                );
                if max_d > step * 1.0001 + tol.rel * max_b {
                    problems.push(format!(
                        "{k}: rel {rel:.3e} > {:.1e} (+ one rounding step {step})",
                        tol.rel
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{label}: {problems:#?}");
}

const EXACT: Tolerance = Tolerance {
    image_max_count: 0,
    image_max_diff: 0,
    rel: 1e-4,
};
/// Against the IPP-resized reference: input pixels differ by one level in places, which moves
/// the (random-weight) tiny model's outputs by ~1e-3 relative. A one-level input difference can
/// show as two in the exported image (its float round trip truncates some values down by one).
const IPP: Tolerance = Tolerance {
    image_max_count: 35280 / 50,
    image_max_diff: 2,
    rel: 1e-2,
};

#[test]
fn cli_npz_matches_reference() {
    let out = out_dir("plain");
    run_cli(&out, &[]);
    let ours = load(&out.join("exports/npz/results.npz"));
    let noipp = fixtures().join("cli/noipp/results.npz");
    if noipp.exists() {
        compare("noipp", &ours, &load(&noipp), &EXACT);
    } else {
        eprintln!(
            "{} missing (tests/gen_cli_noipp.py); exact comparison skipped",
            noipp.display()
        );
    }
    compare(
        "ipp",
        &ours,
        &load(&fixtures().join("cli/results.npz")),
        &IPP,
    );

    // mini_npz: same arrays minus the images, depth at 8 decimals.
    let mini = load(&out.join("exports/mini_npz/results.npz"));
    assert_eq!(
        mini.keys().collect::<Vec<_>>(),
        ["conf", "depth", "extrinsics", "intrinsics"]
    );
    let d6 = ours["depth"].to_f64_vec();
    let d8 = mini["depth"].to_f64_vec();
    let max = d6
        .iter()
        .zip(&d8)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    // Half a 1e-6 step plus f32 spacing.
    assert!(max <= 1e-6, "mini depth vs npz depth {max}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn cli_npz_with_input_cameras_matches_reference() {
    let out = out_dir("cam");
    let cams = fixtures().join("cli/cameras_in.npz");
    let cams = cams.to_str().unwrap();
    run_cli(&out, &["--extrinsics", cams, "--intrinsics", cams]);
    let ours = load(&out.join("exports/npz/results.npz"));
    let noipp = fixtures().join("cli/noipp/results_cam.npz");
    if noipp.exists() {
        compare("noipp-cam", &ours, &load(&noipp), &EXACT);
    } else {
        eprintln!(
            "{} missing (tests/gen_cli_noipp.py); exact comparison skipped",
            noipp.display()
        );
    }
    compare(
        "ipp-cam",
        &ours,
        &load(&fixtures().join("cli/results_cam.npz")),
        &IPP,
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn cli_rejects_bad_arguments() {
    let out = out_dir("bad");
    let status = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_da3"))
            .args(args)
            .output()
            .expect("running da3")
            .status
            .success()
    };
    let model = fixtures().join("tiny-anyview");
    let model = model.to_str().unwrap();
    let img = fixtures().join("cli/view0.png");
    let img = img.to_str().unwrap();
    let o = out.to_str().unwrap();
    assert!(!status(&[
        "infer", "--model", model, img, "--out", o, "--format", "gs_video"
    ]));
    assert!(!status(&[
        "infer",
        "--model",
        model,
        img,
        "--out",
        o,
        "--conf-thresh-percentile",
        "101"
    ]));
    assert!(!status(&[
        "infer",
        "--model",
        model,
        img,
        "--out",
        o,
        "--process-res-method",
        "nope"
    ]));
    assert!(!status(&[
        "infer",
        "--model",
        model,
        "/nonexistent.png",
        "--out",
        o
    ]));
    assert!(status(&[
        "infer", "--model", model, img, "--out", o, "--quiet"
    ]));
    assert!(out.join("exports/mini_npz/results.npz").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// `da3 bench --lockstep`: two processes take strict turns over two named pipes. Neither
/// runs a forward before the first byte is written, and both then finish with their runs.
#[test]
fn bench_lockstep_takes_turns() {
    use std::time::{Duration, Instant};
    let dir = out_dir("lockstep");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    for p in [&a, &b] {
        let ok = Command::new("mkfifo").arg(p).status().expect("mkfifo");
        assert!(ok.success(), "mkfifo {}", p.display());
    }
    let side = |wait: &Path, signal: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_da3"));
        cmd.arg("bench")
            .arg("--model")
            .arg(fixtures().join("tiny-anyview"))
            .args(["--views", "2", "--height", "28", "--width", "42"])
            .args(["--iters", "3", "--warmup", "1", "--lockstep"])
            .arg(format!("{},{}", wait.display(), signal.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("running da3 bench")
    };
    let mut first = side(&a, &b);
    let mut second = side(&b, &a);
    // Without the first byte nobody may run: both still wait after the model has loaded.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(first.try_wait().unwrap().is_none(), "ran without its turn");
    assert!(second.try_wait().unwrap().is_none(), "ran without its turn");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .expect("starting the first turn");
    let t0 = Instant::now();
    for child in [&mut first, &mut second] {
        while child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "lockstep did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with('{'))
            .expect("a JSON line");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["times_ms"].as_array().map(|t| t.len()), Some(3), "{line}");
        assert_eq!(v["views"], 2);
    }
    // --lockstep needs both pipes.
    let res = Command::new(env!("CARGO_BIN_EXE_da3"))
        .arg("bench")
        .arg("--model")
        .arg(fixtures().join("tiny-anyview"))
        .args(["--views", "1", "--lockstep"])
        .arg(a.display().to_string())
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("WAIT,SIGNAL"),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tests/export_check.py` on the given files (JSON summary).
fn export_check(args: &[(&str, &Path)]) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("tests/export_check.py"));
    for (flag, p) in args {
        cmd.arg(flag).arg(p);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e} (bash scripts/setup.sh installs it with pycolmap, trimesh, plyfile)",
            python.display()
        )
    });
    assert!(
        out.status.success(),
        "export_check.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("export_check.py prints JSON")
}

/// `da3 infer --format glb,ply,colmap,...` (both separators): every file is written, and
/// pycolmap, trimesh and plyfile read them: the COLMAP model has an observation per point,
/// each 2D point within a pixel of its 3D point seen through the written camera, with the
/// cameras at the input images' size.
#[test]
fn cli_writes_every_format() {
    let out = out_dir("formats");
    run_cli_formats(
        &out,
        "glb,ply,colmap,png16,depth_vis,npz-mini_npz",
        &["--conf-thresh-percentile", "30"],
    );
    let mut files = Vec::new();
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p.strip_prefix(&out).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            "cameras.bin",
            "depth_vis/0000.png",
            "depth_vis/0001.png",
            "depth_vis/0002.png",
            "exports/mini_npz/results.npz",
            "exports/npz/results.npz",
            "images.bin",
            "png16/0000.json",
            "png16/0000.png",
            "png16/0001.json",
            "png16/0001.png",
            "png16/0002.json",
            "png16/0002.png",
            "points3D.bin",
            "scene.glb",
            "scene.ply",
        ]
    );
    let npz = load(&out.join("exports/npz/results.npz"));
    let (n, h, w) = (3, npz["depth"].shape[1], npz["depth"].shape[2]);
    let (xyz, _) = da3_io::ply::read_ply(&std::fs::read(out.join("scene.ply")).unwrap())
        .expect("our strict PLY reader");
    // conf at or above its 30th percentile over all views: about 70 % of the pixels.
    let kept = xyz.len() as f64 / (n * h * w) as f64;
    assert!((0.69..=0.71).contains(&kept), "kept {kept}");

    let s = export_check(&[
        ("--colmap", &out),
        ("--glb", &out.join("scene.glb")),
        ("--ply", &out.join("scene.ply")),
    ]);
    println!("{s}");
    let c = &s["colmap"];
    let count = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    assert_eq!(
        count(&c["num_points3D"]),
        xyz.len(),
        "one 3D point per PLY point"
    );
    assert_eq!(
        count(&c["num_observations"]),
        xyz.len(),
        "each observed once"
    );
    assert_eq!(count(&c["observations_counted"]), xyz.len());
    assert_eq!(c["mean_track_length"], 1.0);
    assert_eq!(c["tracks_consistent"], true);
    let err = c["max_reprojection_px"].as_f64().unwrap();
    assert!(
        err < 0.01,
        "2D points {err} px from their projected 3D points"
    );
    // Cameras at the input images' size (84x63), the intrinsics scaled from the processed.
    let k = npz["intrinsics"].to_f64_vec();
    for (i, (cam, im)) in c["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .zip(c["images"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(
            (cam["model"].as_str(), count(&cam["width"])),
            (Some("PINHOLE"), 84)
        );
        assert_eq!(count(&cam["height"]), 63);
        let fx = cam["params"][0].as_f64().unwrap();
        let want = k[i * 9] * 84.0 / w as f64;
        assert!((fx - want).abs() < 1e-4 * want, "fx {fx} vs {want}");
        assert_eq!(im["name"], format!("view{i}.png"));
        assert!(count(&im["observations"]) > 0, "{im}");
    }
    // trimesh: the points and one frustum per camera; glTF axes (x, -y, -z).
    let g = &s["glb"]["geometry"];
    assert_eq!(g["points"], serde_json::json!(["PointCloud", xyz.len()]));
    for i in 0..n {
        assert_eq!(g[format!("camera_{i}")][0], "Path3D", "{g}");
    }
    let first = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let p = xyz[0].map(|v| v as f64);
    assert_eq!(first(&s["glb"]["first_point"]), [p[0], -p[1], -p[2]]);
    // plyfile: the same points.
    assert_eq!(count(&s["ply"]["count"]), xyz.len());
    assert_eq!(
        s["ply"]["properties"],
        serde_json::json!(["x", "y", "z", "red", "green", "blue"])
    );
    assert_eq!(first(&s["ply"]["first_point"]), p);

    // depth_vis: processed image and colour-mapped depth side by side; png16 + sidecar.
    let vis = image::open(out.join("depth_vis/0002.png")).unwrap();
    assert_eq!((vis.width() as usize, vis.height() as usize), (2 * w, h));
    let png = image::open(out.join("png16/0001.png")).unwrap();
    assert_eq!(png.color(), image::ColorType::L16);
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("png16/0001.json")).unwrap()).unwrap();
    assert_eq!(
        (side["camera"].as_str(), side["has_pose"].as_bool()),
        (Some("view1.png"), Some(true))
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// COLMAP with a crop method (the reference's export refuses these): cameras still at the
/// input size, each observation within a pixel of its point. A model without cameras (the
/// mono fixture) cannot write the point formats and says why; mini_npz still works.
#[test]
fn cli_colmap_with_crop_and_without_cameras() {
    let out = out_dir("crop");
    run_cli_formats(
        &out,
        "colmap",
        &["--process-res-method", "upper_bound_crop"],
    );
    let c = &export_check(&[("--colmap", &out)])["colmap"];
    let obs = c["num_observations"].as_u64().unwrap();
    assert!(obs > 0 && Some(obs) == c["num_points3D"].as_u64(), "{c}");
    assert!(c["max_reprojection_px"].as_f64().unwrap() < 0.01, "{c}");
    for cam in c["cameras"].as_array().unwrap() {
        assert_eq!(
            (cam["width"].as_u64(), cam["height"].as_u64()),
            (Some(84), Some(63))
        );
    }

    let mono = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_da3"))
            .arg("infer")
            .arg("--model")
            .arg(fixtures().join("tiny-mono"))
            .arg(fixtures().join("cli/view0.png"))
            .args([
                "--process-res",
                "70",
                "--quiet",
                "--format",
                format,
                "--out",
            ])
            .arg(&out)
            .output()
            .expect("running da3")
    };
    let res = mono("glb");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("intrinsics"), "{err}");
    assert!(mono("mini_npz").status.success());
    let _ = std::fs::remove_dir_all(&out);
}

/// `--export-feat-layers`: the backbone blocks' features land in both npz exports under the
/// reference's key (`feat_layer_<i>`, (N, H/14, W/14, C)); a block the backbone does not have
/// is a clear error.
#[test]
fn cli_exports_auxiliary_features() {
    let out = out_dir("aux");
    run_cli(&out, &["--export-feat-layers", "1,6"]);
    for f in ["npz", "mini_npz"] {
        let m = load(&out.join(format!("exports/{f}/results.npz")));
        for l in [1, 6] {
            let a = m
                .get(&format!("feat_layer_{l}"))
                .unwrap_or_else(|| panic!("{f}: no feat_layer_{l} in {:?}", m.keys()));
            // 3 views at 56x70 -> 4x5 patches, embed_dim 32.
            assert_eq!(a.shape, vec![3, 4, 5, 32], "{f}: feat_layer_{l}");
            assert!(a.to_f64_vec().iter().all(|v| v.is_finite()));
        }
        assert!(!m.contains_key("feat_layer_0"));
    }
    let _ = std::fs::remove_dir_all(&out);
    let res = Command::new(env!("CARGO_BIN_EXE_da3"))
        .args(["infer", "--quiet", "--model"])
        .arg(fixtures().join("tiny-anyview"))
        .arg(fixtures().join("cli/view0.png"))
        .args(["--process-res", "70", "--export-feat-layers", "99", "--out"])
        .arg(out_dir("aux-bad"))
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("block 99 does not exist"), "{err}");
}

/// `--format gs_ply` on a model with a Gaussian head writes `gs_ply/0000.ply` that plyfile
/// reads with the reference's property names (the values are checked against the reference in
/// tests/parity.rs); on a model without one it fails, saying why.
#[test]
fn cli_writes_gs_ply_with_a_gaussian_head() {
    let out = out_dir("gs");
    let cli = fixtures().join("cli");
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_da3"))
            .arg("infer")
            .arg("--model")
            .arg(fixtures().join(model))
            .args(["view0.png", "view1.png"].map(|v| cli.join(v)))
            .args([
                "--process-res",
                "70",
                "--format",
                "gs_ply-mini_npz",
                "--quiet",
                "--out",
            ])
            .arg(&out)
            .output()
            .expect("running da3")
    };
    let res = run("tiny-gs");
    assert!(
        res.status.success(),
        "da3 failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let ply = out.join("gs_ply/0000.ply");
    let p = &export_check(&[("--ply", &ply)])["ply"];
    let names: Vec<&str> = p["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names, da3_io::gaussians::GS_PLY_PROPERTIES);
    // two 70x56 views: border and the farthest 10% of each view pruned
    let count = p["count"].as_u64().unwrap() as usize;
    assert!(
        count > 2 * 60 * 50 * 8 / 10 && count < 2 * 70 * 56,
        "{count}"
    );
    let res = run("tiny-anyview");
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("no Gaussian head"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
