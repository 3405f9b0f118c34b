//! Parity with the PyTorch reference (f32, CPU) on the generated fixtures
//! (tests/fixtures/<name>/: hub-layout checkpoint + cases.safetensors + meta.json, written by
//! scripts/make_fixtures.py). Every output the reference returns is compared with
//! max|ours - ref| / max|ref| <= 1e-4; the CPU's mixed precision (bf16 / f16 GEMM weights,
//! f32 activations) within 2e-2 of them on every output of every fixture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use da3::testing::max_rel_err;
use da3::{Da3Model, ForwardOptions, RefViewStrategy};

const TOL: f64 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs every case of one committed fixture; returns the failures ("case.output: figure").
fn run_fixture(name: &str) -> Vec<String> {
    run_fixture_dir(&fixture_dir(name))
}

/// Runs every case of the fixture in `dir` in f32.
fn run_fixture_dir(dir: &Path) -> Vec<String> {
    run_fixture_dir_in(dir, DType::F32, TOL)
}

/// Runs every case of the fixture in `dir` with the model loaded in `dtype`, against `tol`.
fn run_fixture_dir_in(dir: &Path, dtype: DType, tol: f64) -> Vec<String> {
    let dir = dir.to_path_buf();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !dir.join("model.safetensors").is_file() {
        panic!(
            "fixture {} missing: run scripts/make_fixtures.py",
            dir.display()
        );
    }
    let dev = Device::Cpu;
    let model = Da3Model::load(dir.to_str().unwrap(), &dev, dtype).expect("load fixture model");
    let t: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("cases.safetensors"), &dev)
            .expect("cases.safetensors");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_object().expect("meta.cases");
    let mut failures = Vec::new();
    for (case, cm) in cases {
        let input = cm["input"].as_str().unwrap_or("").to_string();
        let x = &t[&input];
        let kw = &cm["kwargs"];
        let opts = ForwardOptions {
            extrinsics: t.get(&format!("{case}.input_extrinsics")).cloned(),
            intrinsics: t.get(&format!("{case}.input_intrinsics")).cloned(),
            use_ray_pose: kw["use_ray_pose"].as_bool().unwrap_or(false),
            ref_view_strategy: kw["ref_view_strategy"]
                .as_str()
                .map(|s| s.parse::<RefViewStrategy>().unwrap())
                .unwrap_or_default(),
            ransac_indices: t
                .get(&format!("{case}.ransac.rand_sample_iters_idx"))
                .cloned(),
            export_feat_layers: kw["export_feat_layers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as usize)
                        .collect()
                })
                .unwrap_or_default(),
            infer_gs: kw["infer_gs"].as_bool().unwrap_or(false),
        };
        let t0 = std::time::Instant::now();
        let out = match model.forward(x, &opts) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}/{case}: forward failed: {e:#}"));
                continue;
            }
        };
        let mut line = format!(
            "{name}/{case} {dtype:?} ({:?}, {:.0} ms):",
            x.dims(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        // Half precision: pixels whose sky decision (sky >= 0.3) differs from the reference's
        // take another branch of a threshold (sky depth fill, the nested alignment's masks),
        // so per-pixel maps are compared where the decision agrees; the flips must be few and
        // sit at the threshold. The ray-pose solve (RANSAC over random-weight rays) is not
        // continuous in its input: its rays are compared instead (head.ray).
        let half = dtype != DType::F32;
        let host = |t: &Tensor| -> Vec<f64> {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let mut agree: Option<Vec<bool>> = None;
        let thr = da3::model::net::SKY_THRESHOLD as f64;
        // The reference's sky decisions: its sky map where stored; for the nested model
        // (which stores none) its depth_conf, which it sets to exactly 1 on sky pixels.
        let ref_sky: Option<Vec<bool>> = match (
            t.get(&format!("{case}.out.sky")),
            t.get(&format!("{case}.out.depth_conf")),
        ) {
            (Some(r), _) => Some(host(r).iter().map(|r| *r >= thr).collect()),
            (None, Some(c)) if cm.get("scale_factor").is_some() => {
                Some(host(c).iter().map(|c| *c == 1.0).collect())
            }
            _ => None,
        };
        if let (true, Some(o), Some(r)) = (half, out.sky.as_ref(), ref_sky) {
            let o = host(o);
            let a: Vec<bool> = o.iter().zip(&r).map(|(o, r)| (*o >= thr) == *r).collect();
            // Our sky probability at each flip: within the half type's rounding of the threshold.
            let flips: Vec<f64> = o
                .iter()
                .zip(&a)
                .filter(|(_, ok)| !**ok)
                .map(|(o, _)| *o)
                .collect();
            line.push_str(&format!(" sky_flips={}/{}", flips.len(), r.len()));
            if flips.len() * 100 > r.len() || flips.iter().any(|o| (o - thr).abs() > 2e-2) {
                failures.push(format!("{name}/{case} {dtype:?}: sky decisions differ beyond the threshold's rounding: {flips:?}"));
            }
            agree = Some(a);
        }
        let skip_pose = half && opts.use_ray_pose;
        let mut check = |label: &str, ours: Option<&Tensor>, key: &str| {
            let Some(want) = t.get(key) else { return };
            if skip_pose && (label == "extrinsics" || label == "intrinsics") {
                return;
            }
            match ours {
                None => failures.push(format!("{name}/{case}.{label}: missing in our output")),
                Some(o) => {
                    if o.dims() != want.dims() {
                        failures.push(format!(
                            "{name}/{case}.{label}: shape {:?} vs {:?}",
                            o.dims(),
                            want.dims()
                        ));
                        return;
                    }
                    let e = match &agree {
                        Some(a) if a.len() == want.elem_count() => {
                            let (o, w) = (host(o), host(want));
                            let scale = w.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-12);
                            o.iter()
                                .zip(&w)
                                .zip(a)
                                .filter(|(_, ok)| **ok)
                                .map(|((o, w), _)| (o - w).abs())
                                .fold(0.0, f64::max)
                                / scale
                        }
                        _ => max_rel_err(o, want),
                    };
                    line.push_str(&format!(" {label}={e:.2e}"));
                    if e.is_nan() || e > tol {
                        failures.push(format!("{name}/{case}.{label} {dtype:?}: {e:.3e}"));
                    }
                }
            }
        };
        check("depth", Some(&out.depth), &format!("{case}.out.depth"));
        check(
            "depth_conf",
            out.depth_conf.as_ref(),
            &format!("{case}.out.depth_conf"),
        );
        check(
            "extrinsics",
            out.extrinsics.as_ref(),
            &format!("{case}.out.extrinsics"),
        );
        check(
            "intrinsics",
            out.intrinsics.as_ref(),
            &format!("{case}.out.intrinsics"),
        );
        check("sky", out.sky.as_ref(), &format!("{case}.out.sky"));
        // Auxiliary features (export_feat_layers): every one asked for, the reference's key.
        for &l in &opts.export_feat_layers {
            let key = format!("{case}.out.aux.feat_layer_{l}");
            let ours = out.aux.iter().find(|(i, _)| *i == l).map(|(_, a)| a);
            // (A fixture without the key fails below: `check` skips missing references.)
            assert!(
                t.contains_key(&key),
                "{name}/{case}: the fixture has no {key}"
            );
            check(&format!("feat_layer_{l}"), ours, &key);
        }
        check("ray", out.ray.as_ref(), &format!("{case}.out.ray"));
        check(
            "ray_conf",
            out.ray_conf.as_ref(),
            &format!("{case}.out.ray_conf"),
        );
        check("head.ray", out.ray.as_ref(), &format!("{case}.head.ray"));
        check(
            "head.ray_conf",
            out.ray_conf.as_ref(),
            &format!("{case}.head.ray_conf"),
        );
        if let (Some(k), Some(_)) = (
            t.get(&format!("{case}.metric.intrinsics")),
            t.get(&format!("{case}.metric.depth_m")),
        ) {
            let m = da3::apply_metric_scaling(&out.depth, k).expect("metric scaling");
            check("depth_m", Some(&m), &format!("{case}.metric.depth_m"));
        }
        // Gaussians (infer_gs): every parameter of every pixel.
        if t.contains_key(&format!("{case}.out.gs.means")) {
            match out.gaussians.as_ref().and_then(|g| g.first()) {
                None => failures.push(format!("{name}/{case}: no Gaussians in our output")),
                Some(g) => {
                    let n = g.len();
                    let dev = &Device::Cpu;
                    let flat =
                        |v: Vec<f32>, shape: Vec<usize>| Tensor::from_vec(v, shape, dev).unwrap();
                    // A quaternion and its negation are one rotation: take the reference's sign.
                    let want_rot = host(&t[&format!("{case}.out.gs.rotations")]);
                    let rot: Vec<f32> = g
                        .rotations
                        .iter()
                        .enumerate()
                        .flat_map(|(i, q)| {
                            let dot: f64 = (0..4).map(|k| q[k] as f64 * want_rot[i * 4 + k]).sum();
                            let s = if dot < 0.0 { -1.0 } else { 1.0 };
                            q.map(|v| v * s)
                        })
                        .collect();
                    let fields = [
                        ("means", flat(g.means.concat(), vec![1, n, 3])),
                        ("scales", flat(g.scales.concat(), vec![1, n, 3])),
                        ("rotations", flat(rot, vec![1, n, 4])),
                        (
                            "harmonics",
                            flat(g.harmonics.clone(), vec![1, n, 3, g.d_sh]),
                        ),
                        ("opacities", flat(g.opacities.clone(), vec![1, n])),
                    ];
                    for (f, ours) in &fields {
                        check(
                            &format!("gs.{f}"),
                            Some(ours),
                            &format!("{case}.out.gs.{f}"),
                        );
                    }
                }
            }
        }
        if let Some(sf) = cm.get("scale_factor").and_then(|v| v.as_f64()) {
            let ours = out.scale_factor.map(|v| v as f64).unwrap_or(f64::NAN);
            let e = (ours - sf).abs() / sf.abs();
            line.push_str(&format!(" scale_factor={e:.2e}"));
            if e.is_nan() || e > tol {
                failures.push(format!(
                    "{name}/{case}.scale_factor {dtype:?}: {ours} vs {sf}"
                ));
            }
            if !out.is_metric {
                failures.push(format!("{name}/{case}: is_metric not set"));
            }
        }
        println!("{line}");
    }
    failures
}

fn assert_fixture(name: &str) {
    let f = run_fixture(name);
    assert!(f.is_empty(), "parity failures:\n{}", f.join("\n"));
}

/// Mixed precision on the CPU (oneMKL's bf16/f16 GEMMs where linked): every output of every
/// fixture within 2e-2 of the reference's f32.
#[test]
fn parity_half_precision_every_fixture() {
    let mut failures = Vec::new();
    for name in [
        "tiny-anyview",
        "tiny-mono",
        "tiny-metric",
        "tiny-nested",
        "tiny-gs",
    ] {
        for dtype in [DType::BF16, DType::F16] {
            failures.extend(run_fixture_dir_in(&fixture_dir(name), dtype, 2e-2));
        }
    }
    assert!(
        failures.is_empty(),
        "half-precision parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn parity_tiny_anyview() {
    assert_fixture("tiny-anyview");
}

#[test]
fn parity_tiny_mono() {
    assert_fixture("tiny-mono");
}

#[test]
fn parity_tiny_metric() {
    assert_fixture("tiny-metric");
}

#[test]
fn parity_tiny_nested() {
    assert_fixture("tiny-nested");
}

/// The Gaussian head: raw head + adapter (centres, scales, rotations, SH rotated to the world,
/// opacities), without and with input cameras.
#[test]
fn parity_tiny_gs() {
    assert_fixture("tiny-gs");
}

/// A binary little-endian PLY of float properties: (names, rows).
fn read_float_ply(bytes: &[u8]) -> (Vec<String>, Vec<Vec<f32>>) {
    let end = bytes
        .windows(11)
        .position(|w| w == b"end_header\n")
        .expect("PLY header")
        + 11;
    let header = std::str::from_utf8(&bytes[..end]).expect("ASCII header");
    assert!(
        header.contains("format binary_little_endian 1.0"),
        "{header}"
    );
    let mut count = 0;
    let mut names = Vec::new();
    for l in header.lines() {
        let parts: Vec<&str> = l.split_whitespace().collect();
        match parts.as_slice() {
            ["element", "vertex", n] => count = n.parse().unwrap(),
            ["property", "float", name] => names.push(name.to_string()),
            ["property", ..] => panic!("not a float property: {l}"),
            _ => {}
        }
    }
    let vals: Vec<f32> = bytes[end..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals.len(), count * names.len(), "PLY body size");
    let rows = vals.chunks(names.len()).map(|r| r.to_vec()).collect();
    (names, rows)
}

/// `gs_ply`: the file the reference's `export_to_gs_ply` wrote for the fixture's one-view case
/// and ours for the same Gaussians hold the same Gaussians (pruned alike), property by property.
#[test]
fn gs_ply_matches_the_reference_export() {
    let dir = fixture_dir("tiny-gs");
    let dev = Device::Cpu;
    let model = Da3Model::load(dir.to_str().unwrap(), &dev, DType::F32).unwrap();
    let t = candle_core::safetensors::load(dir.join("cases.safetensors"), &dev).unwrap();
    let opts = ForwardOptions {
        infer_gs: true,
        ..Default::default()
    };
    let out = model.forward(&t["gs_v1.input"], &opts).unwrap();
    let g = &out.gaussians.as_ref().unwrap()[0];
    let depth: Vec<f32> = out.depth.flatten_all().unwrap().to_vec1().unwrap();
    let tmp = std::env::temp_dir().join(format!("da3-gs-ply-{}.ply", std::process::id()));
    let n = da3_io::gaussians::write_gs_ply(&tmp, g, &depth, &Default::default()).unwrap();
    let ours = read_float_ply(&std::fs::read(&tmp).unwrap());
    let _ = std::fs::remove_file(&tmp);
    let want = read_float_ply(&std::fs::read(dir.join("gs_v1.ply")).unwrap());
    assert_eq!(ours.0, want.0, "property names");
    assert_eq!(ours.1.len(), want.1.len(), "Gaussians kept");
    assert_eq!(n, want.1.len());
    assert!(
        n > 1000,
        "{n} Gaussians: the fixture should keep most pixels"
    );
    for (p, name) in want.0.iter().enumerate() {
        let col = |rows: &[Vec<f32>]| -> Vec<f64> { rows.iter().map(|r| r[p] as f64).collect() };
        let (o, w) = (col(&ours.1), col(&want.1));
        let scale = w.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-6);
        let err = if name.starts_with("rot_") {
            // one rotation, two signs: compare up to each row's sign
            ours.1
                .iter()
                .zip(&want.1)
                .map(|(a, b)| {
                    let dot: f64 = (13..17).map(|k| a[k] as f64 * b[k] as f64).sum();
                    let s = if dot < 0.0 { -1.0 } else { 1.0 };
                    (s * a[p] as f64 - b[p] as f64).abs()
                })
                .fold(0.0, f64::max)
        } else {
            o.iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        } / scale;
        println!("gs_ply {name}: {err:.2e}");
        assert!(err <= TOL, "gs_ply {name}: {err:.3e}");
    }
}

/// Full-size DA3-SMALL (seeded random weights), generated on demand into the
/// cache by `scripts/make_fixtures.py --full da3-small` (see the README): f32 within 1e-4
/// of the reference, bf16 mixed precision within 2e-2.
#[test]
#[ignore = "needs the on-demand fixture: scripts/make_fixtures.py --full da3-small"]
fn full_da3_small() {
    let cache = std::env::var("DA3_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/dora-da3")
        });
    let dir = cache.join("fixtures/da3-small");
    let mut f = run_fixture_dir(&dir);
    // and the mixed precision as `auto` runs it on bf16 CPUs, within 2e-2 at full size
    f.extend(run_fixture_dir_in(&dir, DType::BF16, 2e-2));
    assert!(f.is_empty(), "parity failures:\n{}", f.join("\n"));
}
