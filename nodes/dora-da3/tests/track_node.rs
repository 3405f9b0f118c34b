//! `MODE=track` without a daemon (`integration_testing`), on the committed tiny checkpoint
//! (random weights: poses and depth are the model's, not the scene's): one output per
//! inference with a world pose, keyframes within `K`, every frame processed or counted, and
//! bad input (frames out of order, a repeated capture time, `camera_info` that jumps)
//! counted, never a crash.

use std::time::Duration;

use da3::Da3Model;
use da3_msg::{FrameInfo, ImageFrame};
use da3_testkit::harness::{catch_crash, outputs, Events};
use dora_da3::config::{Config, Mode};
use serde_json::Value;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../da3/tests/fixtures/tiny-anyview"
);
const W: u32 = 56;
const H: u32 = 42;

fn config() -> Config {
    let mut c = Config::defaults(MODEL);
    c.preprocess.process_res = 56;
    c.mode = Mode::Track;
    c.max_points = 100;
    c.max_pixels = 100_000;
    c.status_every = Duration::from_secs(3600);
    c
}

fn frame(seed: u32, id: u64, stamp_ms: u64) -> ImageFrame {
    let mut f = ImageFrame::rgb8(W, H, da3_testkit::test_picture(W, H, seed));
    f.info = FrameInfo {
        frame_id: Some(id),
        stamp_ns: Some(stamp_ms * 1_000_000),
        camera: Some("cam".into()),
        last: false,
    };
    f
}

struct Run {
    out: Vec<serde_json::Map<String, Value>>,
    status: Vec<Value>,
}

impl Run {
    fn on(&self, port: &str) -> Vec<&serde_json::Map<String, Value>> {
        self.out.iter().filter(|o| o["id"] == port).collect()
    }
    fn last_stats(&self) -> &Value {
        self.status
            .iter()
            .rfind(|s| s["type"] == "stats")
            .expect("a final stats record")
    }
    fn events(&self, what: &str) -> Vec<&Value> {
        self.status
            .iter()
            .filter(|s| s["type"] == "track" && s["event"] == what)
            .collect()
    }
}

/// Runs the node on `(t, input, message)` events.
fn run(cfg: Config, events: Vec<(f64, &str, ImageOrCamera)>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut ev = Events::new(dir.path());
    for (t, input, m) in events {
        let (a, p) = match m {
            ImageOrCamera::Image(f) => f.to_message(),
            ImageOrCamera::Camera(c) => c.to_message(),
        };
        ev.input(t, input, &a, &p).unwrap();
    }
    let (mut node, stream, mut rx) = ev
        .start("da3", &["image", "camera_info"], &dora_da3::OUTPUTS)
        .unwrap();
    let model = Da3Model::load(MODEL, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    catch_crash(|| dora_da3::run(&mut node, stream, cfg, vec![model])).expect("the node ran");
    drop(node);
    let out: Vec<serde_json::Map<String, Value>> = outputs(&mut rx);
    let status = out
        .iter()
        .filter(|o| o["id"] == "status")
        .map(|o| serde_json::from_str(o["data"][0].as_str().unwrap()).unwrap())
        .collect();
    Run { out, status }
}

enum ImageOrCamera {
    Image(ImageFrame),
    Camera(da3_msg::CameraMsg),
}

fn frames_accounted(s: &Value) {
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(
        n("frames_out") + n("dropped") + n("rejected"),
        n("frames_in"),
        "{s:#}"
    );
}

#[test]
fn each_inference_sends_its_new_frame_in_one_world() {
    let n = 10u64;
    let events = (0..n)
        .map(|i| {
            (
                0.05 * i as f64,
                "image",
                ImageOrCamera::Image(frame(i as u32, i, 33 * i)),
            )
        })
        .collect();
    let r = run(config(), events);
    let st = r.last_stats();
    println!("{:#}", st["track"]);
    frames_accounted(st);
    let out = st["frames_out"].as_u64().unwrap();
    assert!(out >= 2, "{st:#}");
    // One output per inference: as many depth and camera messages as frames out (the
    // testing outputs carry no metadata; the e2e test checks the frame ids).
    assert_eq!(r.on("depth").len() as u64, out);
    assert_eq!(r.on("camera").len() as u64, out);
    for c in r.on("camera") {
        let v: Vec<f64> = c["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!(v.iter().all(|x| x.is_finite()));
    }
    let t = &st["track"];
    assert_eq!(st["mode"], "track");
    assert_eq!(t["frames"].as_u64().unwrap(), out);
    assert!(t["keyframes"]["cam"].as_u64().unwrap() <= 3);
    assert_eq!(t["keyframes_max"], 3);
    assert_eq!(
        t["tracked"].as_u64().unwrap() + t["reanchors"].as_u64().unwrap() + 1,
        out,
        "every frame after the anchor is tracked or re-anchors"
    );
    assert_eq!(r.events("anchor").len(), 1);
    assert_eq!(
        r.events("reanchor").len() as u64,
        t["reanchors"].as_u64().unwrap()
    );
}

#[test]
fn stale_repeated_frames_and_jumping_cameras_are_counted_never_a_crash() {
    let mut cam = da3_testkit::test_camera(W, H);
    let mut events = vec![(0.0, "camera_info", ImageOrCamera::Camera(cam.clone()))];
    // Capture times (ms) in arrival order: 40 is older than 50, 50 comes twice.
    let stamps = [0u64, 50, 40, 50, 100, 150, 200, 250];
    for (i, s) in stamps.iter().enumerate() {
        events.push((
            0.01 + 0.06 * i as f64,
            "image",
            ImageOrCamera::Image(frame(i as u32, i as u64, *s)),
        ));
    }
    // The camera's focal length jumps, then it turns by 90 degrees at once.
    cam.intrinsics[0] *= 1.5;
    events.push((0.25, "camera_info", ImageOrCamera::Camera(cam.clone())));
    cam.extrinsics = [0.0, 0.0, 1.0, 0.1, 0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0];
    events.push((0.37, "camera_info", ImageOrCamera::Camera(cam)));
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let r = run(config(), events);
    let st = r.last_stats();
    println!("{:#}", st["track"]);
    let t = &st["track"];
    assert_eq!(t["out_of_order"], 1, "{t:#}");
    assert_eq!(t["duplicate_stamps"], 1, "{t:#}");
    assert_eq!(t["camera_info_jumps"], 2, "{t:#}");
    assert_eq!(r.events("camera_info_jump").len(), 2);
    frames_accounted(st);
    assert!(st["dropped"].as_u64().unwrap() >= 2);
    assert!(st["frames_out"].as_u64().unwrap() >= 2);
}
