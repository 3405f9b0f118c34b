//! `depth-export` under the real `dora run`: the sample images through the DA3
//! node (tiny checkpoint) into npz, 16-bit PNG + JSON, colour PNG, PLY and a
//! COLMAP model; every file parses back and agrees with the others and with
//! the library's depth.

use std::path::{Path, PathBuf};
use std::time::Duration;

use da3_io::npz::{npz_get, read_npz};
use e2e::{files_ending, repo_root, sample_images, tiny_model, venv_python_json, Flow};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(240);

/// The PLY's vertex count and points, through depth-export's strict reader.
fn parse_ply(bytes: &[u8]) -> (usize, Vec<[f32; 3]>) {
    let (xyz, _) = da3_io::ply::read_ply(bytes).expect("a valid PLY");
    (xyz.len(), xyz)
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn library_depth(images: &[PathBuf]) -> Vec<Vec<f32>> {
    let model = da3::Da3Model::load(
        &tiny_model(),
        &candle_core::Device::Cpu,
        // what the node's default PRECISION=auto runs with on this CPU
        da3::device::Precision::Auto.dtype(&candle_core::Device::Cpu),
    )
    .unwrap();
    let mut cfg = dora_da3::config::Config::defaults(&tiny_model());
    cfg.preprocess.process_res = 112;
    images
        .iter()
        .map(|path| {
            let img = da3::preprocess::RgbImage::open(path).unwrap();
            dora_da3::engine::infer_image(&model, &cfg, img)
                .unwrap()
                .depth
        })
        .collect()
}

#[test]
fn images_to_npz_png16_ply_colmap() {
    let mut flow = Flow::sample_images_into_tiny_da3("images-da3-export.yml").unwrap();
    flow.env("da3", "DEVICE", "cpu").unwrap();
    let out = flow.path("export");
    flow.env("export", "EXPORT_DIR", out.display()).unwrap();
    flow.env("export", "FORMATS", "npz,png16,vis,ply,colmap,glb")
        .unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);

    let images = sample_images();
    let n = images.len();
    assert_eq!(n, 4);
    let mut files = Vec::new();
    all_files(&out, &mut files);
    let tmp: Vec<_> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    // 6 files per frame + the COLMAP folder's 3.
    assert_eq!(files.len(), n * 6 + 3, "{files:?}");

    let want_depth = library_depth(&images);
    let mut extrinsics = Vec::new();
    let mut depth_sums = Vec::new();
    let mut ply_points = 0;
    for (i, want) in want_depth.iter().enumerate() {
        let stem = out.join(format!("sample_{i:06}"));
        let file = |ext: &str| PathBuf::from(format!("{}{ext}", stem.display()));
        // npz: the reference's keys, one view.
        let m = read_npz(file(".npz")).unwrap();
        let names: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["image", "depth", "conf", "extrinsics", "intrinsics"]
        );
        let depth = npz_get(&m, "depth").unwrap();
        assert_eq!(depth.shape, [1, 84, 112]);
        let depth = depth.to_f32_vec();
        assert!(depth.iter().all(|v| v.is_finite()));
        assert_eq!(npz_get(&m, "image").unwrap().shape, [1, 84, 112, 3]);
        assert_eq!(npz_get(&m, "conf").unwrap().shape, [1, 84, 112]);
        assert_eq!(npz_get(&m, "extrinsics").unwrap().shape, [1, 3, 4]);
        let k = npz_get(&m, "intrinsics").unwrap();
        assert_eq!(k.shape, [1, 3, 3]);
        let k = k.to_f32_vec();
        extrinsics.push(npz_get(&m, "extrinsics").unwrap().to_f32_vec());
        // The depth the node sent equals the library's on the same image.
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
        let err = depth
            .iter()
            .zip(want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
            / scale;
        assert!(err <= 1e-5, "frame {i}: npz depth vs library: {err}");
        depth_sums.push(depth.iter().map(|v| *v as f64).sum::<f64>());

        // png16: depth x 1000 within one unit where it is in range.
        let png = image::open(file(".png")).unwrap();
        assert_eq!(png.color(), image::ColorType::L16);
        assert_eq!((png.width(), png.height()), (112, 84));
        let png = png.into_luma16().into_raw();
        let mut in_range = 0;
        for (p, d) in png.iter().zip(&depth) {
            let mm = (*d as f64 * 1000.0).round();
            if *d > 0.0 && mm <= 65535.0 {
                assert!((*p as f64 - mm).abs() <= 1.0, "{p} vs {d}");
                in_range += 1;
            } else if *d <= 0.0 {
                assert_eq!(*p, 0);
            } else {
                assert_eq!(*p, 65535);
            }
        }
        println!(
            "frame {i}: {in_range} of {} depth pixels in the PNG's range",
            depth.len()
        );
        let js: Value = serde_json::from_slice(&std::fs::read(file(".json")).unwrap()).unwrap();
        assert_eq!(js["width"], 112);
        assert_eq!(js["height"], 84);
        assert_eq!(js["frame_id"], i as u64);
        assert_eq!(js["camera"], "sample");
        assert!(js["stamp_ns"].as_u64().unwrap() > 0);
        assert_eq!(js["depth_scale"], 0.001);
        for r in 0..3 {
            for c in 0..3 {
                let v = js["intrinsics"][r][c].as_f64().unwrap();
                assert!((v - k[r * 3 + c] as f64).abs() < 1e-3, "K[{r}][{c}]");
            }
        }

        // Colour PNG.
        let vis = image::open(file("_vis.png")).unwrap();
        assert_eq!((vis.width(), vis.height()), (112, 84));

        // PLY: the header's count, > 0 points, all finite.
        let (count, xyz) = parse_ply(&std::fs::read(file(".ply")).unwrap());
        assert!(count > 0);
        ply_points += count;
        assert_eq!(xyz.len(), count);
        assert!(xyz.iter().flatten().all(|v| v.is_finite()));

        // GLB: header, chunks, the same points (glTF axes) and a 5-vertex frustum.
        let glb = std::fs::read(file(".glb")).unwrap();
        assert_eq!(&glb[..4], b"glTF");
        assert_eq!(u32::from_le_bytes(glb[4..8].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_le_bytes(glb[8..12].try_into().unwrap()) as usize,
            glb.len()
        );
        let jl = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
        assert_eq!(&glb[16..20], b"JSON");
        let doc: Value = serde_json::from_slice(&glb[20..20 + jl]).unwrap();
        assert_eq!(&glb[24 + jl..28 + jl], b"BIN\0");
        let acc = |mesh: usize, attr: &str| {
            let i = doc["meshes"][mesh]["primitives"][0]["attributes"][attr]
                .as_u64()
                .unwrap() as usize;
            doc["accessors"][i]["count"].as_u64().unwrap() as usize
        };
        assert_eq!(doc["meshes"][0]["primitives"][0]["mode"], 0);
        assert_eq!(acc(0, "POSITION"), count);
        assert_eq!(acc(0, "COLOR_0"), count);
        assert_eq!(doc["meshes"][1]["primitives"][0]["mode"], 1);
        assert_eq!(acc(1, "POSITION"), 5);
    }

    // numpy reads the same files (the .venv Python of scripts/setup.sh; numpy comes
    // with rerun-sdk): keys, shapes, dtypes and the depth values agree.
    let npz: Vec<String> = (0..n)
        .map(|i| out.join(format!("sample_{i:06}.npz")).display().to_string())
        .collect();
    let script = "import json, sys, numpy as np\n\
        print(json.dumps([{k: [list(d[k].shape), str(d[k].dtype), float(np.asarray(d[k], np.float64).sum())] \
        for k in d.files} for d in map(np.load, sys.argv[1:])]))";
    let mut args = vec!["-c".to_string(), script.to_string()];
    args.extend(npz.iter().cloned());
    let seen: Vec<Value> = serde_json::from_value(venv_python_json(&args).unwrap()).unwrap();
    assert_eq!(seen.len(), n);
    for (i, f) in seen.iter().enumerate() {
        let keys: Vec<&str> = f.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 5, "frame {i}: {keys:?}");
        assert_eq!(f["depth"][0], serde_json::json!([1, 84, 112]));
        assert_eq!(f["depth"][1], "float32");
        assert_eq!(f["image"][1], "uint8");
        assert_eq!(f["extrinsics"][0], serde_json::json!([1, 3, 4]));
        let sum = f["depth"][2].as_f64().unwrap();
        assert!(
            (sum - depth_sums[i]).abs() <= 1e-6 * depth_sums[i].abs().max(1.0),
            "frame {i}: numpy depth sum {sum} vs {}",
            depth_sums[i]
        );
    }

    // COLMAP: 4 cameras and images; the pose is the npz's extrinsics.
    let col = out.join("colmap");
    let cams = std::fs::read_to_string(col.join("cameras.txt")).unwrap();
    let cam_lines: Vec<&str> = cams
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(cam_lines.len(), n);
    for l in &cam_lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 8);
        assert_eq!(f[1], "PINHOLE");
        assert_eq!((f[2], f[3]), ("112", "84"));
    }
    let imgs = std::fs::read_to_string(col.join("images.txt")).unwrap();
    let data: Vec<&str> = imgs.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(data.len(), 2 * n, "two lines per image");
    for (i, pair) in data.chunks(2).enumerate() {
        let f: Vec<&str> = pair[0].split_whitespace().collect();
        assert_eq!(f.len(), 10, "{}", pair[0]);
        assert_eq!(f[9], format!("sample_{i:06}.png"));
        let v: Vec<f64> = f[1..8].iter().map(|x| x.parse().unwrap()).collect();
        let (q, t) = (&v[..4], &v[4..]);
        assert!((q.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-6);
        let e = &extrinsics[i];
        for (a, b) in t.iter().zip([e[3], e[7], e[11]]) {
            assert!((a - b as f64).abs() < 1e-4, "t {t:?} vs {e:?}");
        }
        // R from the quaternion (w, x, y, z) equals the npz rotation.
        let r = da3_msg::Pose {
            position: [0.0; 3],
            orientation: [q[1], q[2], q[3], q[0]],
        }
        .rotation();
        for a in 0..3 {
            for b in 0..3 {
                assert!((r[a][b] - e[a * 4 + b] as f64).abs() < 1e-4, "R[{a}][{b}]");
            }
        }
        // The image's 2D points: `X Y POINT3D_ID` triples, every one observing a 3D point.
        let p2: Vec<&str> = pair[1].split_whitespace().collect();
        assert!(
            !p2.is_empty() && p2.len().is_multiple_of(3),
            "image {i}: {}",
            p2.len()
        );
        assert!(p2.chunks(3).all(|t| t[2] != "-1"));
    }
    let pts = std::fs::read_to_string(col.join("points3D.txt")).unwrap();
    let npts = pts
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .inspect(|l| assert!(l.split_whitespace().count() >= 8, "{l}"))
        .count();
    assert!(npts > 0);
    assert_eq!(npts, ply_points, "every PLY point is in the COLMAP model");

    // pycolmap reads the text model with an observation per point, each 2D point where
    // the image's camera sees its 3D point; trimesh and plyfile read a frame's GLB and PLY.
    let s = export_check(&[
        ("--colmap", &col),
        ("--glb", &out.join("sample_000000.glb")),
        ("--ply", &out.join("sample_000000.ply")),
    ]);
    println!("{s}");
    let c = &s["colmap"];
    assert_eq!(c["num_points3D"].as_u64(), Some(npts as u64));
    assert_eq!(c["num_observations"].as_u64(), Some(npts as u64));
    assert_eq!(c["tracks_consistent"], true);
    let err = c["max_reprojection_px"].as_f64().unwrap();
    assert!(
        err < 0.01,
        "2D points {err} px from their projected 3D points"
    );
    assert_eq!(c["images"].as_array().unwrap().len(), n);
    assert_eq!(s["glb"]["geometry"]["camera"][0], "Path3D");
    assert_eq!(s["glb"]["geometry"]["points"][1], s["ply"]["count"], "{s}");
}

/// `tests/export_check.py` (pycolmap, trimesh, plyfile from the .venv of scripts/setup.sh)
/// on the given files: its JSON summary.
fn export_check(args: &[(&str, &Path)]) -> Value {
    let mut a = vec![repo_root().join("tests/export_check.py").into_os_string()];
    for (flag, p) in args {
        a.push(flag.into());
        a.push(p.as_os_str().to_owned());
    }
    venv_python_json(&a).unwrap()
}

#[test]
fn without_camera_and_points_uses_the_depth_metadata_and_every() {
    let mut flow = Flow::sample_images_into_tiny_da3("images-da3-export.yml").unwrap();
    flow.env("da3", "DEVICE", "cpu").unwrap();
    flow.remove_input("export", "camera").unwrap();
    flow.remove_input("export", "points").unwrap();
    let out = flow.path("export");
    flow.env("export", "EXPORT_DIR", out.display()).unwrap();
    flow.env("export", "FORMATS", "npz,ply").unwrap();
    flow.env("export", "EVERY", "2").unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "sample_000000.npz",
            "sample_000000.ply",
            "sample_000002.npz",
            "sample_000002.ply"
        ]
    );
    for id in [0, 2] {
        let m = read_npz(out.join(format!("sample_{id:06}.npz"))).unwrap();
        // Pose and intrinsics from the depth's metadata.
        assert_eq!(npz_get(&m, "extrinsics").unwrap().shape, [1, 3, 4]);
        let k = npz_get(&m, "intrinsics").unwrap().to_f32_vec();
        assert!(k[0] > 0.0 && k[4] > 0.0 && k[8] == 1.0);
        // Back-projected, confidence-filtered points.
        let (count, xyz) =
            parse_ply(&std::fs::read(out.join(format!("sample_{id:06}.ply"))).unwrap());
        assert!(count > 0 && count < 112 * 84, "{count}");
        assert!(xyz.iter().flatten().all(|v| v.is_finite()));
    }
}

/// The DA3 node's `gaussians` output (a model with a Gaussian head: the reduced fixture
/// `tiny-gs`) into depth-export: one `<stem>_gs.ply` per frame that plyfile reads with the
/// reference's gs_ply properties. Wired to a model without a Gaussian head, the node refuses to
/// start and says why.
#[test]
fn gaussians_into_depth_export_write_gs_ply() {
    let gs_model = repo_root().join("nodes/da3/tests/fixtures/tiny-gs");
    let mut flow = Flow::sample_images_into_tiny_da3("images-da3-export.yml").unwrap();
    flow.env("da3", "MODEL", gs_model.display()).unwrap();
    flow.add_output("da3", "gaussians").unwrap();
    flow.input_lossless("export", "gaussians", "da3/gaussians")
        .unwrap();
    let out = flow.path("export");
    flow.env("export", "EXPORT_DIR", out.display()).unwrap();
    flow.env("export", "FORMATS", "npz").unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    let plys = files_ending(&out, "_gs.ply");
    let npz = files_ending(&out, ".npz").len();
    assert!(
        npz > 0 && plys.len() == npz,
        "{npz} frames, gs_ply: {plys:?}"
    );
    for p in &plys {
        let v = &export_check(&[("--ply", p)])["ply"];
        let names: Vec<&str> = v["properties"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(names, da3_io::gaussians::GS_PLY_PROPERTIES);
        // 112x84 views: a border of 3 x 2 pixels and the farthest 10% left out
        let count = v["count"].as_u64().unwrap();
        assert!(count > 106 * 80 * 8 / 10 && count < 112 * 84, "{count}");
    }

    let mut flow = Flow::sample_images_into_tiny_da3("images-da3-export.yml").unwrap();
    flow.add_output("da3", "gaussians").unwrap();
    flow.input_lossless("export", "gaussians", "da3/gaussians")
        .unwrap();
    flow.env("export", "EXPORT_DIR", flow.path("export2").display())
        .unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(
        !run.success,
        "a model without a Gaussian head ran:\n{}",
        run.log
    );
    assert!(run.log.contains("no Gaussian head"), "{}", run.log);
}
