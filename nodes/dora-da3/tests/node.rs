//! The DA3 node without a daemon (`dora_node_api::integration_testing`), on
//! the committed tiny fixture checkpoint: every mode, every input encoding,
//! every kind of bad input.

use std::time::Duration;

use da3::Da3Model;
use da3_msg::{Encoding, FrameInfo, ImageFrame};
use dora_da3::config::{Config, DeviceSpec, Mode};
use dora_node_api::integration_testing::{
    output_channel, IntegrationTestInput, TestingInput, TestingOptions, TestingOutput,
};
use dora_node_api::DoraNode;
use serde_json::{json, Value};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../da3/tests/fixtures/tiny-anyview"
);
const W: u32 = 56;
const H: u32 = 42;

fn config(mode: Mode) -> Config {
    let mut c = Config::defaults(MODEL);
    c.preprocess.process_res = 56;
    c.mode = mode;
    c.sync = Duration::from_millis(20);
    c.max_points = 500;
    c.max_pixels = 100_000;
    c.status_every = Duration::from_secs(3600);
    c
}

fn model() -> Da3Model {
    Da3Model::load(MODEL, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap()
}

fn frame(enc: Encoding, seed: u32, id: u64, camera: &str, stamp_ms: u64) -> ImageFrame {
    let px = da3_testkit::test_picture(W, H, seed);
    let data = da3_testkit::encode_as(enc, W, H, &px).unwrap();
    ImageFrame {
        encoding: enc,
        width: W,
        height: H,
        data,
        info: FrameInfo {
            frame_id: Some(id),
            stamp_ns: Some(stamp_ms * 1_000_000),
            camera: Some(camera.into()),
            last: false,
        },
        intrinsics: None,
    }
}

/// One input event in the integration-testing JSON format.
fn event(
    t: f64,
    input: &str,
    msg: (da3_msg::arrow::array::ArrayRef, da3_msg::MetadataParameters),
) -> Value {
    let (arr, params) = msg;
    let dt = serde_json::to_value(arr.data_type()).unwrap();
    let data = msg_dump::payload_values(arr.as_ref(), usize::MAX)
        .unwrap_or_else(|| panic!("unsupported test payload {}", arr.data_type()));
    json!({"time_offset_secs": t, "type": "Input", "id": input, "metadata": params, "data": data, "data_type": dt})
}

struct Outputs(Vec<serde_json::Map<String, Value>>);

impl Outputs {
    fn on(&self, port: &str) -> Vec<&serde_json::Map<String, Value>> {
        self.0.iter().filter(|o| o["id"] == port).collect()
    }
    fn floats(&self, port: &str) -> Vec<Vec<f32>> {
        self.on(port)
            .iter()
            .map(|o| {
                o["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    }
    fn status(&self) -> Vec<Value> {
        self.on("status")
            .iter()
            .map(|o| serde_json::from_str(o["data"][0].as_str().unwrap()).unwrap())
            .collect()
    }
    fn errors(&self) -> Vec<Value> {
        self.status()
            .into_iter()
            .filter(|s| s["type"] == "error")
            .collect()
    }
    fn last_stats(&self) -> Value {
        self.status()
            .into_iter()
            .rfind(|s| s["type"] == "stats")
            .expect("a final stats record")
    }
}

fn run_node(cfg: Config, models: Vec<Da3Model>, inputs: &[&str], events: Vec<Value>) -> Outputs {
    let outputs: Vec<&str> = dora_da3::OUTPUTS.to_vec();
    let input_map: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|i| (i.to_string(), json!(format!("src/{i}"))))
        .collect();
    let spec = json!({
        "id": "da3",
        "env": null,
        "outputs": outputs,
        "inputs": input_map,
        "events": events,
    });
    let input: IntegrationTestInput = serde_json::from_value(spec).unwrap();
    let (tx, mut rx) = output_channel();
    let (mut node, stream) = DoraNode::init_testing(
        TestingInput::Input(input),
        TestingOutput::ToChannel(tx),
        TestingOptions {
            skip_output_time_offsets: true,
        },
    )
    .unwrap();
    dora_da3::run(&mut node, stream, cfg, models).unwrap();
    drop(node);
    Outputs(dora_node_api::integration_testing::drain_outputs(&mut rx))
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
}

#[test]
fn batch_sends_every_frame_in_order_with_the_model_values() {
    let m = model();
    let n = 5;
    let events: Vec<Value> = (0..n)
        .map(|i| {
            event(
                0.001 * i as f64,
                "image",
                frame(Encoding::Rgb8, i, i as u64, "cam", i as u64).to_message(),
            )
        })
        .collect();
    let out = run_node(config(Mode::Batch), vec![m.clone()], &["image"], events);
    let depths = out.floats("depth");
    assert_eq!(depths.len(), n as usize, "every frame out");
    assert_eq!(out.on("confidence").len(), n as usize);
    assert_eq!(out.on("camera").len(), n as usize);
    assert_eq!(out.on("points").len(), n as usize);
    assert_eq!(out.on("depth_vis").len(), n as usize);
    // Values equal the library run on the same frames, in input order.
    let cfg = config(Mode::Batch);
    for (i, d) in depths.iter().enumerate() {
        let image = da3::preprocess::RgbImage::new(
            W as usize,
            H as usize,
            da3_testkit::test_picture(W, H, i as u32),
        )
        .unwrap();
        let want = dora_da3::engine::infer_image(&m, &cfg, image).unwrap();
        assert_eq!(d.len(), (W * H) as usize);
        let e = max_rel(d, &want.depth);
        println!("batch frame {i}: max rel diff {e:e}");
        assert!(e <= 1e-6, "frame {i} differs from the library result ({e})");
    }
    let stats = out.last_stats();
    assert_eq!(stats["frames_in"], n);
    assert_eq!(stats["frames_out"], n);
    assert_eq!(stats["dropped"], 0);
    assert_eq!(stats["mode"], "batch");
}

#[test]
fn every_encoding_is_accepted_and_lossless_ones_agree() {
    // Lossless ones first (1..7 must equal rgb8), then the lossy or
    // subsampled ones, then mono8.
    let encs = [
        Encoding::Rgb8,
        Encoding::Bgr8,
        Encoding::Rgba8,
        Encoding::Png,
        Encoding::Bgra8,
        Encoding::Webp,
        Encoding::Bmp,
        Encoding::Jpeg,
        Encoding::Yuv420,
        Encoding::Nv12,
        Encoding::Yuyv,
        Encoding::Uyvy,
        Encoding::Mono8,
    ];
    let events: Vec<Value> = encs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            event(
                0.001 * i as f64,
                "image",
                frame(*e, 3, i as u64, "cam", i as u64).to_message(),
            )
        })
        .collect();
    let out = run_node(config(Mode::Batch), vec![model()], &["image"], events);
    let d = out.floats("depth");
    assert_eq!(d.len(), encs.len(), "errors: {:?}", out.errors());
    for (i, e) in encs.iter().enumerate().take(7).skip(1) {
        assert_eq!(d[i], d[0], "{e} must give the same depth as rgb8");
    }
    for (i, e) in encs.iter().enumerate().take(12).skip(7) {
        let err = max_rel(&d[i], &d[0]);
        assert!(err < 0.2, "{e} depth far from rgb8: {err}");
    }
    assert!(out.errors().is_empty());
}

#[test]
fn mono16_depth_frames_are_rejected_with_the_reason() {
    // A depth camera's 16-bit depth (millimetres) has no colours: DA3 needs
    // a colour picture. Rejected, counted and named; the next frame runs.
    let mut depth = frame(Encoding::Mono16, 3, 1, "cam", 0);
    depth.info.camera = Some("realsense".into());
    let events = vec![
        event(0.0, "image", depth.to_message()),
        event(
            0.01,
            "image",
            frame(Encoding::Rgb8, 3, 2, "cam", 1).to_message(),
        ),
    ];
    let out = run_node(config(Mode::Batch), vec![model()], &["image"], events);
    assert_eq!(out.floats("depth").len(), 1);
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0]["frame_id"], 1);
    let reason = errors[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("mono16") && reason.contains("depth image"),
        "{reason}"
    );
    assert_eq!(out.last_stats()["rejected"], 1);
}

#[test]
fn bad_inputs_are_rejected_named_and_the_next_frame_is_processed() {
    let good = frame(Encoding::Rgb8, 1, 100, "cam", 0);
    let mut bad = Vec::new();
    // Wrong size: payload shorter than width*height*3.
    let mut f = frame(Encoding::Rgb8, 1, 1, "cam", 0);
    f.data.truncate(f.data.len() - 5);
    bad.push(("wrong size", f.to_message()));
    // Unknown encoding.
    let (a, mut p) = frame(Encoding::Rgb8, 1, 2, "cam", 0).to_message();
    p.insert(
        "encoding".into(),
        da3_msg::Parameter::String("yuv444".into()),
    );
    bad.push(("unknown encoding", (a, p)));
    // Corrupt JPEG.
    let mut f = frame(Encoding::Jpeg, 1, 3, "cam", 0);
    f.data = [0xFF, 0xD8, 0xFF, 0xE0]
        .into_iter()
        .chain(b"not jpeg data".iter().copied())
        .collect();
    bad.push(("corrupt jpeg", f.to_message()));
    // Missing width.
    let (a, mut p) = frame(Encoding::Rgb8, 1, 4, "cam", 0).to_message();
    p.remove("width");
    bad.push(("missing width", (a, p)));
    // Zero size.
    let (a, mut p) = ImageFrame {
        width: 0,
        height: 0,
        data: vec![],
        ..frame(Encoding::Rgb8, 1, 5, "cam", 0)
    }
    .to_message();
    p.insert("width".into(), da3_msg::Parameter::Integer(0));
    p.insert("height".into(), da3_msg::Parameter::Integer(0));
    bad.push(("zero size", (a, p)));
    // Absurd size: over MAX_PIXELS (100 000 in the test config).
    let big = ImageFrame {
        width: 400,
        height: 300,
        data: vec![0; 400 * 300 * 3],
        ..frame(Encoding::Rgb8, 1, 6, "cam", 0)
    };
    bad.push(("absurd size", big.to_message()));
    // Wrong Arrow type.
    let (_, p) = frame(Encoding::Rgb8, 1, 7, "cam", 0).to_message();
    let floats: da3_msg::arrow::array::ArrayRef =
        std::sync::Arc::new(da3_msg::arrow::array::Float32Array::from(vec![
            0f32;
            (W * H * 3)
                as usize
        ]));
    bad.push(("wrong arrow type", (floats, p)));

    let n_bad = bad.len();
    let mut events: Vec<Value> = bad
        .into_iter()
        .enumerate()
        .map(|(i, (_, m))| event(0.001 * i as f64, "image", m))
        .collect();
    events.push(event(0.05, "image", good.to_message()));
    let out = run_node(config(Mode::Batch), vec![model()], &["image"], events);
    let errors = out.errors();
    assert_eq!(errors.len(), n_bad, "{errors:#?}");
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["kind"], "rejected");
        assert_eq!(e["input"], "image");
        assert_eq!(
            e["frame_id"],
            (i + 1) as u64,
            "the record names the frame: {e}"
        );
        assert!(!e["reason"].as_str().unwrap().is_empty());
    }
    let reasons: Vec<&str> = errors
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].contains("bytes"), "{}", reasons[0]);
    assert!(reasons[1].contains("yuv444"), "{}", reasons[1]);
    assert!(reasons[2].contains("jpeg"), "{}", reasons[2]);
    assert!(reasons[3].contains("width"), "{}", reasons[3]);
    assert!(reasons[5].contains("exceeds"), "{}", reasons[5]);
    assert!(reasons[6].contains("UInt8"), "{}", reasons[6]);
    assert_eq!(
        out.on("depth").len(),
        1,
        "the good frame after them is processed"
    );
    let stats = out.last_stats();
    assert_eq!(stats["rejected"], n_bad);
}

#[test]
fn live_mode_drops_stale_frames_and_counts_them() {
    let n = 12u64;
    let events: Vec<Value> = (0..n)
        .map(|i| {
            event(
                0.0,
                "image",
                frame(Encoding::Rgb8, i as u32, i, "cam", i).to_message(),
            )
        })
        .collect();
    let out = run_node(config(Mode::Live), vec![model()], &["image"], events);
    let stats = out.last_stats();
    let sent = out.on("depth").len() as u64;
    let dropped = stats["dropped"].as_u64().unwrap();
    assert!(
        sent >= 1 && sent < n,
        "live mode must drop under a burst: {sent} sent"
    );
    assert_eq!(
        sent + dropped,
        n,
        "every frame is either processed or counted as dropped"
    );
    assert_eq!(stats["frames_in"], n);
}

#[test]
fn window_mode_emits_each_frame_once_with_chained_poses() {
    let n = 7u64;
    let events: Vec<Value> = (0..n)
        .map(|i| {
            event(
                0.001 * i as f64,
                "image",
                frame(Encoding::Rgb8, i as u32, i, "cam", i).to_message(),
            )
        })
        .collect();
    let out = run_node(config(Mode::Window), vec![model()], &["image"], events);
    assert_eq!(out.on("depth").len(), n as usize);
    let cams = out.floats("camera");
    assert_eq!(cams.len(), n as usize);
    for c in &cams {
        assert_eq!(c.len(), 21);
        assert!(c.iter().all(|v| v.is_finite()));
    }
    let stats = out.last_stats();
    assert_eq!(stats["frames_out"], n);
    assert_eq!(stats["dropped"], 0);
}

#[test]
fn rig_mode_runs_both_cameras_together() {
    let mut events = Vec::new();
    for i in 0..3u64 {
        let t = 0.01 * i as f64;
        events.push(event(
            t,
            "left",
            frame(Encoding::Rgb8, i as u32, i, "left", 100 * i).to_message(),
        ));
        events.push(event(
            t,
            "right",
            frame(Encoding::Rgb8, 10 + i as u32, i, "right", 100 * i + 3).to_message(),
        ));
    }
    let mut cfg = config(Mode::Rig);
    cfg.rig_inputs = Some(vec!["left".into(), "right".into()]);
    let out = run_node(cfg, vec![model()], &["left", "right"], events);
    let n = out.on("depth").len();
    assert!(
        n >= 2 && n.is_multiple_of(2),
        "rig outputs come in pairs, got {n}"
    );
    let stats = out.last_stats();
    assert_eq!(
        stats["frames_out"].as_u64().unwrap() + stats["dropped"].as_u64().unwrap(),
        6
    );
}

#[test]
fn several_replicas_keep_the_input_order() {
    let m = model();
    let n = 6u64;
    let mut cfg = config(Mode::Batch);
    cfg.devices = vec![DeviceSpec::Cpu, DeviceSpec::Cpu, DeviceSpec::Cpu];
    let events: Vec<Value> = (0..n)
        .map(|i| {
            event(
                0.0,
                "image",
                frame(Encoding::Rgb8, i as u32, i, "cam", i).to_message(),
            )
        })
        .collect();
    let out = run_node(cfg, vec![m.clone(), m.clone(), m], &["image"], events);
    let single = run_node(
        config(Mode::Batch),
        vec![model()],
        &["image"],
        (0..n)
            .map(|i| {
                event(
                    0.0,
                    "image",
                    frame(Encoding::Rgb8, i as u32, i, "cam", i).to_message(),
                )
            })
            .collect(),
    );
    assert_eq!(
        out.floats("depth"),
        single.floats("depth"),
        "same values, same order"
    );
    assert_eq!(out.last_stats()["replicas"], 3);
}

#[test]
fn camera_info_inputs_condition_the_pose_and_bad_poses_are_rejected() {
    let good_cam = da3_testkit::test_camera(W, H);
    // (NaN cannot travel through the JSON test format; da3-msg's `pose_checks` test covers it.)
    let mut nan_cam = good_cam.clone();
    nan_cam.extrinsics[0] = 2.0;
    let mut singular = good_cam.clone();
    singular.extrinsics[0] = 0.0;
    let events = vec![
        event(0.0, "camera_info", nan_cam.to_message()),
        event(0.001, "camera_info", singular.to_message()),
        event(0.002, "camera_info", good_cam.to_message()),
        event(
            0.01,
            "image",
            frame(Encoding::Rgb8, 1, 0, "cam", 0).to_message(),
        ),
    ];
    let out = run_node(
        config(Mode::Batch),
        vec![model()],
        &["image", "camera_info"],
        events,
    );
    let errors = out.errors();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(out.on("depth").len(), 1);
    // Pose-conditioned: the sent camera keeps the given intrinsics.
    let cam = &out.floats("camera")[0];
    assert!((cam[12] - 50.0).abs() < 1e-3, "fx {}", cam[12]);
}

/// A world-to-camera `[R | t]` (row-major 3x4) of a camera at `centre` (metres), turned by
/// `yaw` about y and `pitch` about x.
fn pose_at(centre: [f64; 3], yaw: f64, pitch: f64) -> [f64; 12] {
    let (cy, sy, cp, sp) = (yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin());
    // R = Rx(pitch) * Ry(yaw)
    let r = [
        [cy, 0.0, sy],
        [sp * sy, cp, -sp * cy],
        [-cp * sy, sp, cp * cy],
    ];
    let mut e = [0.0; 12];
    for i in 0..3 {
        e[i * 4..i * 4 + 3].copy_from_slice(&r[i]);
        e[i * 4 + 3] = -(0..3).map(|j| r[i][j] * centre[j]).sum::<f64>();
    }
    e
}

#[test]
fn rig_with_camera_info_equals_the_library_inference() {
    // A calibrated 4-camera rig several metres across (non-unit scale): the node must
    // normalise the input cameras and align depth to them exactly as the library's
    // `infer` (the reference `inference()`) does.
    let names = ["cam0", "cam1", "cam2", "cam3"];
    let poses = [
        pose_at([0.0, 0.0, 0.0], 0.0, 0.0),
        pose_at([3.0, 0.2, 0.5], -0.3, 0.05),
        pose_at([-1.0, 2.5, 1.0], 0.2, -0.1),
        pose_at([4.0, 3.0, -1.5], -0.5, 0.1),
    ];
    let ks = [
        [50.0, 0.0, 28.0, 0.0, 50.0, 21.0, 0.0, 0.0, 1.0],
        [48.0, 0.0, 27.0, 0.0, 49.0, 20.5, 0.0, 0.0, 1.0],
        [55.0, 0.0, 29.0, 0.0, 54.0, 22.0, 0.0, 0.0, 1.0],
        [45.0, 0.0, 28.5, 0.0, 46.0, 21.5, 0.0, 0.0, 1.0],
    ];
    let mut events = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut cam = da3_testkit::test_camera(W, H);
        cam.extrinsics = poses[i];
        cam.intrinsics = ks[i];
        cam.info.camera = Some(name.to_string());
        events.push(event(0.0, &format!("camera_info_{name}"), cam.to_message()));
    }
    for (i, name) in names.iter().enumerate() {
        let f = frame(Encoding::Rgb8, 20 + i as u32, 0, name, 1000);
        events.push(event(0.01, name, f.to_message()));
    }
    let mut cfg = config(Mode::Rig);
    cfg.rig_inputs = Some(names.iter().map(|n| n.to_string()).collect());
    let mut inputs: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    inputs.extend(names.iter().map(|n| format!("camera_info_{n}")));
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let out = run_node(cfg, vec![model()], &inputs, events);
    assert!(out.errors().is_empty(), "{:#?}", out.errors());
    let depth = out.floats("depth");
    let cams = out.floats("camera");
    assert_eq!(
        (depth.len(), cams.len()),
        (4, 4),
        "one rig set of four views"
    );

    // The library on the same views and cameras.
    let m = model();
    let images: Vec<da3::preprocess::RgbImage> = (0..4)
        .map(|i| {
            da3::preprocess::RgbImage::new(
                W as usize,
                H as usize,
                da3_testkit::test_picture(W, H, 20 + i),
            )
            .unwrap()
        })
        .collect();
    let ext: Vec<da3_io::geometry::Mat4<f32>> = poses
        .iter()
        .map(|e| {
            let mut m = [[0f32, 0.0, 0.0, 1.0]; 4];
            for (i, row) in m.iter_mut().take(3).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = e[i * 4 + j] as f32;
                }
            }
            m
        })
        .collect();
    let intr = da3::inference::InputIntrinsics::F64(
        ks.iter()
            .map(|k| [[k[0], k[1], k[2]], [k[3], k[4], k[5]], [k[6], k[7], k[8]]])
            .collect(),
    );
    let cfg = config(Mode::Rig);
    let want =
        da3::inference::infer(&m, &images, Some(&ext), Some(&intr), &cfg.inference()).unwrap();
    let scale = want.alignment_scale.expect("pose-conditioned: aligned");
    // Far from 1: depth left at the network's scale would not match.
    assert!((scale - 1.0).abs() > 0.5, "alignment scale {scale}");
    let p = &want.prediction;
    let plane = p.width * p.height;
    let (mut worst_d, mut worst_e, mut worst_k) = (0f32, 0f32, 0f32);
    for i in 0..4 {
        worst_d = worst_d.max(max_rel(&depth[i], &p.depth[i * plane..(i + 1) * plane]));
        let e: Vec<f32> = p.extrinsics.as_ref().unwrap()[i]
            .iter()
            .flatten()
            .copied()
            .collect();
        let k: Vec<f32> = p.intrinsics.as_ref().unwrap()[i]
            .iter()
            .flatten()
            .copied()
            .collect();
        worst_e = worst_e.max(max_rel(&cams[i][..12], &e));
        worst_k = worst_k.max(max_rel(&cams[i][12..21], &k));
    }
    println!(
        "node vs library (Umeyama scale {scale:.4}): depth {worst_d:.2e}, extrinsics \
         {worst_e:.2e}, intrinsics {worst_k:.2e} (max relative)"
    );
    assert!(worst_d <= 1e-5, "depth differs by {worst_d:e}");
    assert!(worst_e <= 1e-5, "extrinsics differ by {worst_e:e}");
    assert!(worst_k <= 1e-5, "intrinsics differ by {worst_k:e}");
}
