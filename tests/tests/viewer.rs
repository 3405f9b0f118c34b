//! The Rerun `viewer` node and the graphs around it, under the real `dora run`:
//! a video through DA3 (window mode) into depth-export and an .rrd; a live
//! camera into an .rrd; a camera recording replayed through DA3 into files; a
//! recording of DA3 outputs replayed into an .rrd; bad messages skipped.
//!
//! Each .rrd is read back with the Rerun SDK (`tests/rrd_check.py`, run by the
//! `.venv` Python where scripts/setup.sh installs rerun-sdk==0.36.3), which
//! also checks the file was closed properly (its footer is there). The values
//! in it are compared with what the other sinks wrote or the recording holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use da3_io::npz::{npz_get, read_npz};
use da3_msg::arrow::array::{ArrayRef, Float32Array};
use da3_msg::{
    CameraMsg, DepthKind, DepthMap, FrameInfo, ImageFrame, MetadataParameters, PointCloud,
};
use e2e::{files_ending, rrd_summary, tiny_model, write_test_video, Flow};
use recorder::recording::{RecordedMessage, RecordingReader, RecordingWriter};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);

/// The rows of `entity` that hold `archetype`, in frame order.
fn rows<'a>(s: &'a Value, entity: &str, archetype: &str) -> Vec<&'a Value> {
    let e = s["entities"].get(entity).unwrap_or_else(|| {
        let names: Vec<&String> = s["entities"].as_object().unwrap().keys().collect();
        panic!("no entity {entity} in the .rrd; entities: {names:?}")
    });
    e["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get(archetype).is_some())
        .collect()
}

fn frames(rows: &[&Value]) -> Vec<u64> {
    rows.iter()
        .map(|r| r["frame"].as_u64().expect("a `frame` time"))
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(a: f64, b: f64, rel: f64, what: &str) {
    let tol = rel * a.abs().max(b.abs()).max(1e-6);
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

fn mean_finite(v: &[f32]) -> f64 {
    let fin: Vec<f64> = v
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| x as f64)
        .collect();
    fin.iter().sum::<f64>() / fin.len() as f64
}

/// Entities every DA3 graph logs for camera `c`, with the archetype of each.
fn da3_entities(c: &str) -> Vec<(String, &'static str)> {
    let cam = format!("/world/cameras/{c}");
    vec![
        (cam.clone(), "Transform3D"),
        (format!("{cam}/pinhole"), "Pinhole"),
        (format!("{cam}/pinhole/depth"), "DepthImage"),
        (format!("{cam}/pinhole/confidence"), "Image"),
        (format!("{cam}/image"), "Pinhole"),
        (format!("{cam}/image/rgb"), "Image"),
        (format!("/world/points/{c}"), "Points3D"),
        (format!("/world/trajectory/{c}"), "LineStrips3D"),
    ]
}

/// Checks the common structure: the world axes, the app id, every entity
/// present, one pose, pinhole and trajectory row per depth frame, the
/// trajectory growing by one centre per frame, capture times matching the
/// source frames'. Returns the depth frames.
fn check_da3_structure(s: &Value, c: &str) -> Vec<u64> {
    assert_eq!(s["recordings"][0]["application_id"], "dora-da3");
    assert_eq!(s["entities"]["/world"]["static"], true);
    assert_eq!(s["entities"]["/world"]["archetypes"]["ViewCoordinates"], 1);
    for (e, arch) in da3_entities(c) {
        assert!(!rows(s, &e, arch).is_empty(), "{e}: no {arch} rows");
        let tl = &s["entities"][&e]["timelines"];
        for t in ["frame", "capture_time"] {
            assert!(tl.as_array().unwrap().contains(&t.into()), "{e}: {tl}");
        }
    }
    let cam = format!("/world/cameras/{c}");
    let depth = rows(s, &format!("{cam}/pinhole/depth"), "DepthImage");
    let dframes = frames(&depth);
    let mut sorted = dframes.clone();
    sorted.dedup();
    assert_eq!(sorted, dframes, "one depth row per frame, in order");
    for (what, e, arch) in [
        ("pose", cam.clone(), "Transform3D"),
        ("pinhole", format!("{cam}/pinhole"), "Pinhole"),
        (
            "trajectory",
            format!("/world/trajectory/{c}"),
            "LineStrips3D",
        ),
        ("confidence", format!("{cam}/pinhole/confidence"), "Image"),
        ("points", format!("/world/points/{c}"), "Points3D"),
    ] {
        assert_eq!(frames(&rows(s, &e, arch)), dframes, "{what} frames");
    }
    let traj = rows(s, &format!("/world/trajectory/{c}"), "LineStrips3D");
    for (i, r) in traj.iter().enumerate() {
        assert_eq!(r["LineStrips3D"]["strip_len"], i + 1, "trajectory row {i}");
    }
    // The depth's capture time is its source frame's.
    let rgb = rows(s, &format!("{cam}/image/rgb"), "Image");
    let stamps: BTreeMap<u64, &Value> = rgb
        .iter()
        .map(|r| (r["frame"].as_u64().unwrap(), &r["capture_time"]))
        .collect();
    for d in &depth {
        let f = d["frame"].as_u64().unwrap();
        assert!(d["capture_time"].as_u64().unwrap() > 0);
        if let Some(t) = stamps.get(&f) {
            assert_eq!(&d["capture_time"], *t, "frame {f}: capture_time");
        }
    }
    for d in &depth {
        let v = &d["DepthImage"];
        assert_eq!(v["datatype"], "F32");
        assert_eq!(v["meter"], 1.0);
        assert_eq!(
            v["n_values"],
            v["width"].as_u64().unwrap() * v["height"].as_u64().unwrap()
        );
    }
    dframes
}

/// Camera centre `-Rᵀ t` of a world-to-camera `[R | t]` (row-major 3x4).
fn centre(e: &[f64]) -> [f64; 3] {
    let t = [e[3], e[7], e[11]];
    [0, 1, 2].map(|i| -(e[i] * t[0] + e[4 + i] * t[1] + e[8 + i] * t[2]))
}

#[test]
fn video_through_window_mode_into_export_and_rrd() {
    let mut flow = Flow::load("video-da3-export-viewer.yml").unwrap();
    let (w, h, n) = (64u32, 48u32, 10u32);
    let mp4 = flow.path("clip.mp4");
    write_test_video(&mp4, w, h, n).unwrap();
    flow.env("images", "SOURCE", mp4.display()).unwrap();
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    flow.env("da3", "PROCESS_RES", "112").unwrap();
    flow.env("da3", "DEVICE", "cpu").unwrap();
    let out = flow.path("export");
    flow.env("export", "EXPORT_DIR", out.display()).unwrap();
    let rrd = flow.path("video.rrd");
    flow.env("viewer", "RERUN_RRD", rrd.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    assert!(
        run.log
            .contains("viewer: logged image: 10, depth: 10, confidence: 10, depth_vis: 10"),
        "{}",
        run.log
    );

    let s = rrd_summary(&rrd).unwrap();
    let dframes = check_da3_structure(&s, "video");
    assert_eq!(
        dframes,
        (0..n as u64).collect::<Vec<_>>(),
        "every frame once"
    );
    let cam = "/world/cameras/video";
    let rgb = rows(&s, &format!("{cam}/image/rgb"), "Image");
    assert_eq!(frames(&rgb), dframes);
    for r in &rgb {
        let v = &r["Image"];
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(64), Some(48))
        );
        assert_eq!(v["color_model"], "RGB");
        assert_eq!(v["datatype"], "U8");
    }
    let vis = rows(&s, &format!("{cam}/pinhole/depth_vis"), "Image");
    assert_eq!(frames(&vis), dframes);
    let depth = rows(&s, &format!("{cam}/pinhole/depth"), "DepthImage");
    let pinhole = rows(&s, &format!("{cam}/pinhole"), "Pinhole");
    let image_pinhole = rows(&s, &format!("{cam}/image"), "Pinhole");
    let poses = rows(&s, cam, "Transform3D");
    let points = rows(&s, "/world/points/video", "Points3D");

    // The same frames as depth-export wrote: depth, intrinsics, pose, points.
    for i in 0..n as usize {
        let stem = out.join(format!("video_{i:06}"));
        let m = read_npz(stem.with_extension("npz")).unwrap();
        let d = npz_get(&m, "depth").unwrap();
        assert_eq!(d.shape, [1, 84, 112]);
        let dv = &depth[i]["DepthImage"];
        assert_eq!(
            (dv["width"].as_u64(), dv["height"].as_u64()),
            (Some(112), Some(84))
        );
        assert_close(
            dv["mean"].as_f64().unwrap(),
            mean_finite(&d.to_f32_vec()),
            1e-5,
            &format!("frame {i}: depth mean"),
        );
        let k = npz_get(&m, "intrinsics").unwrap().to_f32_vec();
        let p = &pinhole[i]["Pinhole"];
        assert_eq!(f64s(&p["resolution"]), [112.0, 84.0]);
        let kc = f64s(&p["image_from_camera"]); // column-major
        for (a, b) in [(kc[0], k[0]), (kc[4], k[4]), (kc[6], k[2]), (kc[7], k[5])] {
            assert_close(a, b as f64, 1e-5, &format!("frame {i}: K"));
        }
        // The source image's pinhole: K scaled from 112x84 to 64x48.
        let ip = &image_pinhole[i]["Pinhole"];
        assert_eq!(f64s(&ip["resolution"]), [64.0, 48.0]);
        assert_close(
            f64s(&ip["image_from_camera"])[0],
            k[0] as f64 * 64.0 / 112.0,
            1e-5,
            "fx",
        );
        let e: Vec<f64> = npz_get(&m, "extrinsics")
            .unwrap()
            .to_f32_vec()
            .into_iter()
            .map(f64::from)
            .collect();
        let t = f64s(&poses[i]["Transform3D"]["translation"]);
        for (a, b) in t.iter().zip(centre(&e)) {
            assert!(
                (a - b).abs() < 1e-4,
                "frame {i}: centre {t:?} vs {:?}",
                centre(&e)
            );
        }
        let ply = std::fs::read(stem.with_extension("ply")).unwrap();
        let (xyz, _) = da3_io::ply::read_ply(&ply).unwrap();
        assert!(!xyz.is_empty());
        assert_eq!(points[i]["Points3D"]["n"], xyz.len(), "frame {i}: points");
        assert_eq!(points[i]["Points3D"]["n_colors"], xyz.len());
    }
    // The last trajectory row holds every centre.
    let traj = rows(&s, "/world/trajectory/video", "LineStrips3D");
    assert_eq!(traj.last().unwrap()["LineStrips3D"]["strip_len"], n);
}

#[test]
fn live_camera_into_rrd() {
    let mut flow = Flow::load("camera-da3-viewer.yml").unwrap();
    let n = 12u64;
    flow.env("camera", "CAMERA_DEVICE", "test-pattern").unwrap();
    flow.env("camera", "WIDTH", 160).unwrap();
    flow.env("camera", "HEIGHT", 120).unwrap();
    flow.env("camera", "FPS", 10).unwrap();
    flow.env("camera", "MAX_FRAMES", n).unwrap();
    flow.env("camera", "CAMERA_NAME", "front cam").unwrap();
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    flow.env("da3", "PROCESS_RES", "112").unwrap();
    flow.env("da3", "DEVICE", "cpu").unwrap();
    let rrd = flow.path("out/live.rrd");
    flow.env("viewer", "RERUN_MODE", "save").unwrap();
    flow.env("viewer", "RERUN_RRD", rrd.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);

    let s = rrd_summary(&rrd).unwrap();
    // The camera name becomes one entity path part.
    let dframes = check_da3_structure(&s, "front_cam");
    let rgb = rows(&s, "/world/cameras/front_cam/image/rgb", "Image");
    // Every camera frame reaches the viewer (backpressure); DA3 live infers
    // the freshest ones, at least one.
    assert_eq!(frames(&rgb), (0..n).collect::<Vec<_>>());
    assert!(
        !dframes.is_empty() && dframes.len() as u64 <= n,
        "{dframes:?}"
    );
    assert!(dframes.iter().all(|f| *f < n));
    println!(
        "live: {} of {n} frames inferred: {dframes:?}",
        dframes.len()
    );
}

/// Runs record-camera.yml: `n` test-pattern frames of `w x h` into `rec`.
fn record_camera(rec: &Path, w: u32, h: u32, n: u64) {
    let mut flow = Flow::load("record-camera.yml").unwrap();
    flow.env("camera", "WIDTH", w).unwrap();
    flow.env("camera", "HEIGHT", h).unwrap();
    flow.env("camera", "MAX_FRAMES", n).unwrap();
    flow.env("camera", "CAMERA_NAME", "pattern").unwrap();
    flow.env("recorder", "OUT", rec.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "recording failed:\n{}", run.log);
}

#[test]
fn camera_recording_replayed_through_da3_into_files() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("cam.arrows");
    let (w, h, n) = (160u32, 120u32, 6u64);
    record_camera(&rec, w, h, n);

    let mut flow = Flow::load("replay-da3-export.yml").unwrap();
    flow.env("replay", "FILE", rec.display()).unwrap();
    flow.env("replay", "SPEED", "0").unwrap();
    flow.env("replay", "LINGER_MS", "500").unwrap();
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    flow.env("da3", "PROCESS_RES", "112").unwrap();
    flow.env("da3", "DEVICE", "cpu").unwrap();
    let out = flow.path("export");
    flow.env("export", "EXPORT_DIR", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);

    // Every recorded frame, inferred on exactly the recorded pixels.
    let model = da3::Da3Model::load(
        &tiny_model(),
        &candle_core::Device::Cpu,
        // what the node's default PRECISION=auto runs with on this CPU
        da3::device::Precision::Auto.dtype(&candle_core::Device::Cpu),
    )
    .unwrap();
    let mut cfg = dora_da3::config::Config::defaults(&tiny_model());
    cfg.preprocess.process_res = 112;
    for i in 0..n {
        let m = read_npz(out.join(format!("pattern_{i:06}.npz"))).unwrap();
        let got = npz_get(&m, "depth").unwrap().to_f32_vec();
        let img = da3::preprocess::RgbImage::new(
            w as usize,
            h as usize,
            camera::render_test_pattern(i, w, h),
        )
        .unwrap();
        let want = dora_da3::engine::infer_image(&model, &cfg, img)
            .unwrap()
            .depth;
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
            / scale;
        assert!(err <= 1e-5, "frame {i}: depth vs library: {err}");
        assert!(out.join(format!("pattern_{i:06}.ply")).is_file());
        assert!(out.join(format!("pattern_{i:06}.png")).is_file());
    }
    assert_eq!(files_ending(&out, ".npz").len() as u64, n);
    let images = std::fs::read_to_string(out.join("colmap/images.txt")).unwrap();
    assert_eq!(
        images.lines().filter(|l| !l.starts_with('#')).count() as u64,
        2 * n
    );
}

fn read_recording(path: &Path) -> Vec<RecordedMessage> {
    RecordingReader::open(path)
        .unwrap()
        .map(|m| m.unwrap())
        .collect()
}

fn replay_into_viewer(file: &Path) -> (PathBuf, e2e::RunOutput, Flow) {
    let mut flow = Flow::load("replay-depth-viewer.yml").unwrap();
    flow.env("replay", "FILE", file.display()).unwrap();
    flow.env("replay", "LINGER_MS", "500").unwrap();
    let rrd = flow.path("replay.rrd");
    flow.env("viewer", "RERUN_RRD", rrd.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    (rrd, run, flow)
}

#[test]
fn recorded_da3_outputs_replay_into_rrd() {
    let mut flow = Flow::sample_images_into_tiny_da3("images-da3-record.yml").unwrap();
    flow.env("da3", "DEVICE", "cpu").unwrap();
    let rec = flow.path("da3.arrows");
    flow.env("recorder", "OUT", rec.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "recording failed:\n{}", run.log);
    let msgs = read_recording(&rec);
    let of = |s: &str| -> Vec<&RecordedMessage> { msgs.iter().filter(|m| m.stream == s).collect() };
    let n = e2e::sample_images().len();
    for s in ["image", "depth", "confidence", "points", "depth_vis"] {
        assert_eq!(of(s).len(), n, "recorded {s}");
    }

    let (rrd, run, _flow) = replay_into_viewer(&rec);
    assert!(run.success, "replay failed:\n{}", run.log);
    let s = rrd_summary(&rrd).unwrap();
    let dframes = check_da3_structure(&s, "sample");
    assert_eq!(dframes, (0..n as u64).collect::<Vec<_>>());
    let cam = "/world/cameras/sample";
    let depth = rows(&s, &format!("{cam}/pinhole/depth"), "DepthImage");
    for (r, m) in depth.iter().zip(of("depth")) {
        let d = DepthMap::from_message(m.data.as_ref(), &m.metadata).unwrap();
        let v = &r["DepthImage"];
        assert_eq!(r["frame"], d.info.frame_id.unwrap());
        assert_eq!(r["capture_time"], d.info.stamp_ns.unwrap());
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(d.width as u64), Some(d.height as u64))
        );
        assert_close(
            v["mean"].as_f64().unwrap(),
            mean_finite(&d.values),
            1e-6,
            "depth mean",
        );
        // The pose and pinhole come from the depth (or camera) of that frame.
        let pose = d.pose.unwrap();
        let t = rows(&s, cam, "Transform3D");
        let t = t.iter().find(|x| x["frame"] == r["frame"]).unwrap();
        for (a, b) in f64s(&t["Transform3D"]["translation"])
            .iter()
            .zip(pose.position)
        {
            assert!((a - b).abs() < 1e-5);
        }
        for (a, b) in f64s(&t["Transform3D"]["quaternion"])
            .iter()
            .zip(pose.orientation)
        {
            assert!((a - b).abs() < 1e-5);
        }
    }
    // Camera messages (small, dora may lose some) agree with the pinholes.
    let pinholes = rows(&s, &format!("{cam}/pinhole"), "Pinhole");
    for m in of("camera") {
        let c = CameraMsg::from_message(m.data.as_ref(), &m.metadata).unwrap();
        let p = pinholes
            .iter()
            .find(|x| x["frame"] == c.info.frame_id.unwrap())
            .unwrap();
        let kc = f64s(&p["Pinhole"]["image_from_camera"]);
        assert_close(kc[0], c.intrinsics[0], 1e-6, "fx");
        assert_close(kc[7], c.intrinsics[5], 1e-6, "cy");
        assert_eq!(
            f64s(&p["Pinhole"]["resolution"]),
            [c.width as f64, c.height as f64]
        );
    }
    let points = rows(&s, "/world/points/sample", "Points3D");
    for (r, m) in points.iter().zip(of("points")) {
        let p = PointCloud::from_message(m.data.as_ref(), &m.metadata).unwrap();
        assert_eq!(r["Points3D"]["n"], p.len());
        let mean = f64s(&r["Points3D"]["mean"]);
        for (k, got) in mean.iter().enumerate() {
            let want = p.xyz.iter().map(|q| q[k] as f64).sum::<f64>() / p.len() as f64;
            assert_close(*got, want, 1e-4, "points mean");
        }
    }
    let rgb = rows(&s, &format!("{cam}/image/rgb"), "Image");
    for (r, m) in rgb.iter().zip(of("image")) {
        let f = ImageFrame::from_message(m.data.as_ref(), &m.metadata).unwrap();
        assert_eq!(r["Image"]["width"], f.width);
        assert_eq!(r["Image"]["height"], f.height);
    }
    assert_eq!(
        rows(&s, &format!("{cam}/pinhole/depth_vis"), "Image").len(),
        n
    );
}

#[test]
fn bad_messages_are_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.arrows");
    let info = |i: u64| FrameInfo {
        frame_id: Some(i),
        stamp_ns: Some(1_700_000_000_000_000_000 + i),
        camera: Some("c".into()),
        last: false,
    };
    let good = |i: u64| {
        DepthMap {
            kind: DepthKind::Depth,
            width: 4,
            height: 3,
            values: (0..12).map(|k| 1.0 + k as f32 + i as f32).collect(),
            info: info(i),
            intrinsics: None,
            pose: None,
            is_metric: true,
        }
        .to_message()
    };
    let mut w = RecordingWriter::create(&file).unwrap();
    let mut push = |stream: &str, (data, meta): (ArrayRef, MetadataParameters)| {
        w.push(stream, 0, &meta, data.as_ref()).unwrap();
    };
    push("depth", good(0));
    // 11 values for a 4x3 map.
    let (_, meta) = good(1);
    push(
        "depth",
        (Arc::new(Float32Array::from(vec![1.0f32; 11])), meta),
    );
    // An image whose payload is not the size its metadata says.
    let mut img = ImageFrame::rgb8(4, 3, vec![0; 36]);
    img.info = info(1);
    let (_, meta) = img.to_message();
    push(
        "image",
        (
            Arc::new(da3_msg::arrow::array::UInt8Array::from(vec![0u8; 5])),
            meta,
        ),
    );
    // A corrupt JPEG: decodes as a message, fails to log.
    let mut jpeg = ImageFrame::rgb8(0, 0, b"not a jpeg".to_vec());
    jpeg.encoding = da3_msg::Encoding::Jpeg;
    jpeg.info = info(2);
    push("image", jpeg.to_message());
    push("depth", good(3));
    w.finish().unwrap();

    let (rrd, run, _flow) = replay_into_viewer(&file);
    assert!(
        run.success,
        "the viewer must survive bad input:\n{}",
        run.log
    );
    assert!(
        run.log.contains("2 messages rejected, 1 not logged"),
        "{}",
        run.log
    );
    let s = rrd_summary(&rrd).unwrap();
    let depth = rows(&s, "/world/cameras/c/pinhole/depth", "DepthImage");
    assert_eq!(frames(&depth), [0, 3]);
    assert_close(
        depth[1]["DepthImage"]["mean"].as_f64().unwrap(),
        4.0 + 5.5,
        1e-9,
        "depth 3",
    );
    assert!(s["entities"].get("/world/cameras/c/image/rgb").is_none());
}
