//! Sources under the real dora CLI: every frame from a folder, an MP4 made
//! here and the camera's test pattern arrives intact, in order, with its
//! metadata; bad inputs give clear errors naming the file.

use std::path::Path;
use std::time::Duration;

use e2e::{read_dump, synthetic_rgb, write_test_video, Flow};
use msg_dump::fnv1a64;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

fn hash(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a64(bytes))
}

/// Checks the common metadata and returns the records.
fn check_stream(recs: &[Value], camera: &str, expected: &[(u32, u32, Vec<u8>)]) {
    assert_eq!(recs.len(), expected.len(), "frame count");
    let mut last_stamp = 0u64;
    for (i, (rec, (w, h, rgb))) in recs.iter().zip(expected).enumerate() {
        let m = &rec["metadata"];
        assert_eq!(rec["arrow_type"], "UInt8", "frame {i}");
        assert_eq!(m["encoding"], "rgb8", "frame {i}");
        assert_eq!(m["primitive"], "image", "frame {i}");
        assert_eq!(m["frame_id"], i as u64, "frame {i} out of order");
        assert_eq!(m["width"], *w, "frame {i}");
        assert_eq!(m["height"], *h, "frame {i}");
        assert_eq!(m["camera"], camera, "frame {i}");
        assert_eq!(rec["len"], (w * h * 3) as u64, "frame {i}");
        assert_eq!(rec["hash"], hash(rgb), "frame {i}: bytes differ");
        let stamp = m["stamp_ns"].as_u64().expect("stamp_ns");
        assert!(stamp >= last_stamp, "frame {i}: stamp_ns went back");
        last_stamp = stamp;
    }
}

fn write_pngs(dir: &Path, n: u32, w: u32, h: u32) -> Vec<(u32, u32, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let rgb = synthetic_rgb(w, h, i);
            image::RgbImage::from_raw(w, h, rgb.clone())
                .unwrap()
                .save(dir.join(format!("img_{i:02}.png")))
                .unwrap();
            (w, h, rgb)
        })
        .collect()
}

#[test]
fn folder_frames_arrive_in_order_with_metadata() {
    let mut flow = Flow::load("frames.yml").unwrap();
    let images = flow.path("images");
    let expected = write_pngs(&images, 6, 48, 32);
    // A corrupt JPEG in the folder is skipped with a warning naming it.
    std::fs::write(images.join("img_02b.jpg"), b"\xff\xd8\xff\xe0garbage").unwrap();
    let out = flow.path("frames.jsonl");
    flow.env("images", "SOURCE", images.display()).unwrap();
    flow.env("images", "CAMERA_NAME", "folder-cam").unwrap();
    flow.env("images", "INTRINSICS", "50,51,24,16").unwrap();
    flow.input("images", "tick", "dora/timer/millis/30")
        .unwrap();
    flow.env("dump", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    assert!(
        run.log.contains("img_02b.jpg"),
        "the skipped file is not named in the log:\n{}",
        run.log
    );
    let recs = read_dump(&out).unwrap();
    check_stream(&recs, "folder-cam", &expected);
    let last = &recs[recs.len() - 1]["metadata"];
    assert_eq!(last["last"], true);
    assert!(recs[0]["metadata"].get("last").is_none());
    assert_eq!(
        recs[0]["metadata"]["focal"],
        serde_json::json!([50.0, 51.0])
    );
    assert_eq!(
        recs[0]["metadata"]["principal_point"],
        serde_json::json!([24.0, 16.0])
    );
}

#[test]
fn strict_mode_stops_at_a_corrupt_file_and_names_it() {
    let mut flow = Flow::load("frames.yml").unwrap();
    let images = flow.path("images");
    write_pngs(&images, 2, 16, 16);
    std::fs::write(images.join("img_00b.jpg"), b"\xff\xd8\xff\xe0garbage").unwrap();
    flow.env("images", "SOURCE", images.display()).unwrap();
    flow.env("images", "STRICT", "1").unwrap();
    flow.env("dump", "OUT_FILE", flow.path("f.jsonl").display())
        .unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(!run.success, "STRICT=1 should fail:\n{}", run.log);
    assert!(run.log.contains("img_00b.jpg"), "{}", run.log);
}

#[test]
fn missing_source_path_is_a_clear_error() {
    let mut flow = Flow::load("frames.yml").unwrap();
    flow.env("images", "SOURCE", "/nonexistent/dir/pics")
        .unwrap();
    flow.env("dump", "OUT_FILE", flow.path("f.jsonl").display())
        .unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(!run.success);
    assert!(
        run.log.contains("/nonexistent/dir/pics") && run.log.contains("does not exist"),
        "{}",
        run.log
    );
}

#[test]
fn mp4_frames_arrive_bit_exact() {
    let mut flow = Flow::load("frames.yml").unwrap();
    let (w, h, n) = (64u32, 48u32, 12u32);
    let mp4 = flow.path("clip.mp4");
    write_test_video(&mp4, w, h, n).unwrap();
    let out = flow.path("frames.jsonl");
    flow.env("images", "SOURCE", mp4.display()).unwrap();
    flow.env("images", "CAMERA_NAME", "video").unwrap();
    flow.input("images", "tick", "dora/timer/millis/20")
        .unwrap();
    flow.env("dump", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    let recs = read_dump(&out).unwrap();
    let expected: Vec<_> = (0..n).map(|i| (w, h, synthetic_rgb(w, h, i))).collect();
    check_stream(&recs, "video", &expected);

    // Stride and the longest-side limit apply to videos too.
    let mut flow2 = Flow::load("frames.yml").unwrap();
    let out2 = flow2.path("strided.jsonl");
    flow2.env("images", "SOURCE", mp4.display()).unwrap();
    flow2.env("images", "EVERY", "3").unwrap();
    flow2.env("images", "MAX_SIZE", "32").unwrap();
    flow2.env("images", "FPS", "0").unwrap();
    flow2.remove_input("images", "tick").unwrap();
    flow2.env("dump", "OUT_FILE", out2.display()).unwrap();
    let run = flow2.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    let recs = read_dump(&out2).unwrap();
    assert_eq!(recs.len(), 4, "12 frames with EVERY=3");
    for r in &recs {
        assert_eq!(r["metadata"]["width"], 32);
        assert_eq!(r["metadata"]["height"], 24);
    }
}

#[test]
fn camera_test_pattern_frames_arrive_in_order() {
    let mut flow = Flow::load("camera-frames.yml").unwrap();
    let (w, h, n) = (160u32, 120u32, 45u64);
    let out = flow.path("camera.jsonl");
    flow.env("camera", "WIDTH", w).unwrap();
    flow.env("camera", "HEIGHT", h).unwrap();
    flow.env("camera", "FPS", 30).unwrap();
    flow.env("camera", "MAX_FRAMES", n).unwrap();
    flow.env("camera", "CAMERA_NAME", "pattern").unwrap();
    flow.env("dump", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    let recs = read_dump(&out).unwrap();
    let expected: Vec<_> = (0..n)
        .map(|i| (w, h, camera::render_test_pattern(i, w, h)))
        .collect();
    check_stream(&recs, "pattern", &expected);
    // Paced at 30 fps: capture stamps span about (n-1)/30 s.
    let first = recs[0]["metadata"]["stamp_ns"].as_u64().unwrap();
    let last = recs[recs.len() - 1]["metadata"]["stamp_ns"]
        .as_u64()
        .unwrap();
    let span = (last - first) as f64 / 1e9;
    let want = (n - 1) as f64 / 30.0;
    assert!(
        (span - want).abs() < 0.5,
        "45 frames at 30 fps spanned {span:.3}s, expected ~{want:.3}s"
    );
}
