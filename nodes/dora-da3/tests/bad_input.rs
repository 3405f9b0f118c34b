//! Bad input to the DA3 node, through `integration_testing`: hundreds of
//! broken image and camera messages (seeded, from `da3_testkit::bad`),
//! interleaved with good frames. Every broken message must be rejected,
//! logged, counted (`rejected` in `status`) and named in an error record; the
//! good frames must still come out, in order, with the model's values; the
//! node must end without error.

use std::time::Duration;

use da3::Da3Model;
use da3_msg::{DecodeLimits, Encoding, FrameInfo, ImageFrame};
use da3_testkit::bad::{CameraKit, ImageKit, NEW_ENCODINGS};
use da3_testkit::harness::{catch_crash, outputs, Events, Figures};
use da3_testkit::Rng;
use dora_da3::config::{Config, Mode};
use serde_json::Value;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../da3/tests/fixtures/tiny-anyview"
);
const W: u32 = 56;
const H: u32 = 42;
/// Broken messages per run.
const N_BAD: usize = 240;
/// A good frame after every this many broken ones (and one first).
const GOOD_EVERY: usize = 20;

fn config() -> Config {
    let mut c = Config::defaults(MODEL);
    c.preprocess.process_res = 56;
    c.mode = Mode::Batch;
    c.max_points = 100;
    c.max_pixels = 100_000;
    c.status_every = Duration::from_secs(3600);
    c
}

fn frame(seed: u32, id: u64) -> ImageFrame {
    let mut f = ImageFrame::rgb8(W, H, da3_testkit::test_picture(W, H, seed));
    f.info = FrameInfo {
        frame_id: Some(id),
        stamp_ns: Some(id * 1_000_000),
        camera: Some("cam".into()),
        last: false,
    };
    f
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
}

fn status(out: &[serde_json::Map<String, Value>]) -> Vec<Value> {
    out.iter()
        .filter(|o| o["id"] == "status")
        .map(|o| serde_json::from_str(o["data"][0].as_str().expect("status text")).expect("json"))
        .collect()
}

#[test]
fn bad_inputs_are_rejected_counted_and_good_frames_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let mut rng = Rng::new(0xDA3_0001);
    let mut images = ImageKit::new(frame(0, 0), cfg.max_pixels).unwrap();
    let mut cameras = CameraKit {
        good: da3_testkit::test_camera(W, H),
    };
    // Good frames cycle through the colour encodings: the kit's JPEG and
    // PNG, the YUV layouts and files of dora's camera nodes too.
    let encodings = [
        Encoding::Rgb8,
        Encoding::Png,
        Encoding::Jpeg,
        Encoding::Bgr8,
        Encoding::Yuv420,
        Encoding::Nv12,
        Encoding::Yuyv,
        Encoding::Uyvy,
        Encoding::Bgra8,
        Encoding::Webp,
        Encoding::Bmp,
    ];
    // The first image cases: one truncated frame of each newer encoding
    // (a mono16 depth frame would be rejected whole anyway).
    let mut truncated: Vec<Encoding> = NEW_ENCODINGS.to_vec();
    let mut events = Events::new(dir.path());
    let mut good: Vec<ImageFrame> = Vec::new();
    // (input, frame id named by the metadata) of every broken message, in order.
    let mut bad: Vec<(&str, Option<u64>, &'static str)> = Vec::new();
    let mut t = 0.0;
    for i in 0..=N_BAD {
        if i % GOOD_EVERY == 0 {
            let k = good.len() as u32;
            let g = ImageKit::new(frame(k + 1, k as u64), cfg.max_pixels).unwrap();
            let f = g.encoded(encodings[k as usize % encodings.len()]);
            let (a, p) = f.to_message();
            events.input(t, "image", &a, &p).unwrap();
            good.push(f);
        }
        if i == N_BAD {
            break;
        }
        let id = 10_000 + i as u64;
        let (input, case) = if rng.chance(1, 5) {
            cameras.good.info.frame_id = Some(id);
            ("camera_info", cameras.bad(&mut rng))
        } else {
            images.good.info.frame_id = Some(id);
            match truncated.pop() {
                Some(enc) => ("image", images.truncated(enc, &mut rng)),
                None => ("image", images.bad(&mut rng)),
            }
        };
        let named = FrameInfo::read(&case.params).ok().and_then(|f| f.frame_id);
        if case.params.contains_key("frame_id") && named.is_some() {
            assert_eq!(named, Some(id), "{}", case.kind);
        }
        events.input(t, input, &case.array, &case.params).unwrap();
        bad.push((input, named, case.kind));
        t += 0.0005;
    }
    let tried = events.len() as u64;
    let (mut node, stream, mut rx) = events
        .start("da3", &["image", "camera_info"], &dora_da3::OUTPUTS)
        .unwrap();
    let model = Da3Model::load(MODEL, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let run = catch_crash(|| dora_da3::run(&mut node, stream, cfg.clone(), vec![model.clone()]));
    drop(node);
    let out = outputs(&mut rx);
    let st = status(&out);
    let errors: Vec<&Value> = st.iter().filter(|s| s["type"] == "error").collect();
    let stats = st
        .iter()
        .rfind(|s| s["type"] == "stats")
        .cloned()
        .unwrap_or_default();
    let depths: Vec<Vec<f32>> = out
        .iter()
        .filter(|o| o["id"] == "depth")
        .map(|o| {
            o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let figures = Figures {
        node: "dora-da3",
        tried,
        bad: bad.len() as u64,
        rejected: stats["rejected"].as_u64().unwrap_or(0),
        good: good.len() as u64,
        good_out: depths.len() as u64,
        crashed: run.is_err() as u64,
    };
    figures.print();
    run.expect("the node ends without error");
    assert!(
        truncated.is_empty(),
        "every newer encoding was truncated once"
    );

    // Every broken message: one error record naming input and frame, in order.
    assert_eq!(
        errors.len(),
        bad.len(),
        "one error record per broken message"
    );
    for (e, (input, named, kind)) in errors.iter().zip(&bad) {
        assert_eq!(e["kind"], "rejected", "{kind}: {e}");
        assert_eq!(e["input"], *input, "{kind}: {e}");
        assert_eq!(e["frame_id"].as_u64(), *named, "{kind}: {e}");
        assert!(
            !e["reason"].as_str().unwrap_or("").is_empty(),
            "{kind}: no reason"
        );
    }
    assert_eq!(stats["rejected"], bad.len() as u64, "{stats}");
    assert_eq!(stats["frames_out"], good.len() as u64, "{stats}");
    assert_eq!(stats["failed_units"], 0);
    assert_eq!(stats["dropped"], 0);
    assert_eq!(stats["dropped_by_dora"], 0);

    // Good frames: all out, in order, with the library's values.
    assert_eq!(depths.len(), good.len(), "every good frame comes out");
    for (k, (d, f)) in depths.iter().zip(&good).enumerate() {
        let (w, h, rgb) = f.to_rgb8(&DecodeLimits::default()).unwrap();
        let image = da3::preprocess::RgbImage::new(w as usize, h as usize, rgb).unwrap();
        let want = dora_da3::engine::infer_image(&model, &cfg, image).unwrap();
        let e = max_rel(d, &want.depth);
        assert!(e <= 1e-6, "good frame {k} ({}) differs: {e}", f.encoding);
    }
}

/// Inputs that decode but cannot be used as given: a camera_info calibrated for another image
/// size (another aspect ratio), and frames without any focal length for the metric model. Each
/// frame still comes out; each case is counted (`warnings`) and said once per camera
/// (`type: warning` status records); the metric model's depth is sent relative (`is_metric`
/// false), never in wrong metres; nothing crashes.
#[test]
fn unusable_cameras_and_a_metric_model_without_focal_are_counted_warnings() {
    const METRIC: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../da3/tests/fixtures/tiny-metric"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.model = METRIC.into();
    let mut events = Events::new(dir.path());
    // Calibrated for 640x480 (4:3): the 56x42 frames are 4:3 too, so this one is used...
    let mut cam = da3_testkit::test_camera(640, 480);
    cam.info.camera = Some("cam".into());
    let (a, p) = cam.to_message();
    events.input(0.0, "camera_info", &a, &p).unwrap();
    // ...but camera `wide` is calibrated for 640x360 (16:9): not used for its 4:3 frames.
    let mut wide = da3_testkit::test_camera(640, 360);
    wide.info.camera = Some("wide".into());
    let (a, p) = wide.to_message();
    events.input(0.001, "camera_info", &a, &p).unwrap();
    let n = 4u64;
    for i in 0..n {
        for name in ["cam", "wide"] {
            let mut f = frame(i as u32, i);
            f.info.camera = Some(name.into());
            let (a, p) = f.to_message();
            events
                .input(0.01 + i as f64 * 0.01, "image", &a, &p)
                .unwrap();
        }
    }
    let (mut node, stream, mut rx) = events
        .start("da3", &["image", "camera_info"], &dora_da3::OUTPUTS)
        .unwrap();
    let model = Da3Model::load(METRIC, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    assert_eq!(model.units(), da3::DepthUnits::FocalOver300);
    let run = catch_crash(|| dora_da3::run(&mut node, stream, cfg.clone(), vec![model.clone()]));
    drop(node);
    run.expect("the node ends without error");
    let out = outputs(&mut rx);
    let st = status(&out);
    let warnings: Vec<&Value> = st.iter().filter(|s| s["type"] == "warning").collect();
    let kinds: Vec<(&str, &str)> = warnings
        .iter()
        .map(|w| {
            (
                w["kind"].as_str().unwrap(),
                w["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // Said once each: the wide camera's size, and the missing focal of `wide` (cam has one).
    assert_eq!(kinds.len(), 2, "{kinds:#?}");
    assert!(kinds
        .iter()
        .any(|(k, r)| *k == "camera_size" && r.contains("640x360")));
    assert!(kinds
        .iter()
        .any(|(k, r)| *k == "no_focal" && r.contains("`wide`")));
    let stats = st.iter().rfind(|s| s["type"] == "stats").unwrap();
    // Counted every time: 4 frames of `wide` without a usable camera, each also relative.
    assert_eq!(stats["warnings"], 2 * n, "{stats}");
    assert_eq!(stats["frames_out"], 2 * n, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");
    // (The outputs' `is_metric` per camera is checked under `dora run` in tests/tests/fidelity.rs.)
}
