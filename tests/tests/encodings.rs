//! Frames in every encoding dora's camera nodes send, under the real dora CLI.
//!
//! - `opencv-video-capture` (PyPI 0.5.0, in the test venv) itself sends a
//!   video in each of its `ENCODING`s (bgr8, rgb8, yuv420, jpeg, bmp, webp,
//!   png) into the DA3 node: every frame accepted, and each decodes back to
//!   the video's frame (exact where the encoding is lossless).
//! - `tests/py/yuv_camera.py`, a camera node made here with OpenCV, sends what
//!   opencv-video-capture cannot (nv12, yuyv, ROS `yuv422` = UYVY, bgra8, and
//!   `mono16` depth as RealSense (UInt16) and ROS `16UC1` (bytes) send it):
//!   the colour ones are accepted by DA3; the depth ones are rejected by DA3
//!   with the reason and accepted as depth (millimetres) by depth-export and
//!   the viewer.
//! - The YUV layouts decode within 2 levels of OpenCV's own `cvtColor` of the
//!   same bytes.
//!
//! Frames are paced by an `image-source` reading the same video: each camera
//! node reads one frame per tick and stops when that input closes, so every
//! run is a fixed number of frames.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use da3_msg::{DecodeLimits, Encoding, ImageFrame};
use e2e::{read_dump, repo_root, synthetic_rgb, tiny_model, write_test_video, Flow};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);
const W: u32 = 64;
const H: u32 = 48;
/// Frames of the test video.
const N: u32 = 5;

fn venv(bin: &str) -> PathBuf {
    let p = repo_root().join(".venv/bin").join(bin);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (installs opencv-video-capture==0.5.0 and OpenCV into .venv)",
        p.display()
    );
    p
}

/// The graph's head: an image-source over the video, ticking the cameras.
fn ticker_yaml(video: &Path) -> String {
    format!(
        r#"nodes:
  - id: ticker
    path: ../target/debug/image-source
    inputs:
      tick: dora/timer/millis/150
    outputs:
      - image
    env:
      SOURCE: "{}"
      CAMERA_NAME: clip
"#,
        video.display()
    )
}

fn lossless(source: &str) -> String {
    format!("{{source: {source}, queue_size: 100, queue_policy: backpressure}}")
}

/// The DA3 node (tiny checkpoint, batch) on `inputs` (id -> source).
fn da3_yaml(inputs: &[(String, String)]) -> String {
    let ins: String = inputs
        .iter()
        .map(|(id, src)| format!("      {id}: {}\n", lossless(src)))
        .collect();
    format!(
        r#"  - id: da3
    path: ../target/debug/dora-da3
    inputs:
{ins}    outputs:
      - depth
      - status
    env:
      MODEL: "{}"
      MODE: batch
      PROCESS_RES: "56"
      STATUS_MS: "100000"
"#,
        tiny_model()
    )
}

fn dump_yaml(id: &str, out: &Path, inputs: &[(String, String)]) -> String {
    let ins: String = inputs
        .iter()
        .map(|(id, src)| format!("      {id}: {}\n", lossless(src)))
        .collect();
    format!(
        r#"  - id: {id}
    path: ../target/debug/msg-dump
    inputs:
{ins}    env:
      OUT_FILE: "{}"
      PRINT: "0"
      MAX_VALUES: "100000"
"#,
        out.display()
    )
}

fn by_input(recs: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut m: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in recs {
        m.entry(r["input"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(r);
    }
    m
}

fn status_records(recs: &[&Value]) -> Vec<Value> {
    recs.iter()
        .filter_map(|r| r["text"].as_str())
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .collect()
}

/// A dumped frame, decoded by `da3-msg` (from its recorded values and
/// metadata), and the index of the video frame it came from.
fn decode_dumped(rec: &Value) -> (u64, (u32, u32, Vec<u8>)) {
    let m = &rec["metadata"];
    let enc = Encoding::parse(m["encoding"].as_str().expect("encoding")).expect("known encoding");
    let data: Vec<u8> = rec["values"]
        .as_array()
        .expect("values recorded (MAX_VALUES)")
        .iter()
        .map(|v| v.as_u64().expect("a byte") as u8)
        .collect();
    let frame = ImageFrame {
        encoding: enc,
        width: m["width"].as_u64().unwrap_or(0) as u32,
        height: m["height"].as_u64().unwrap_or(0) as u32,
        data,
        info: Default::default(),
        intrinsics: None,
    };
    let id = m["frame_id"]
        .as_u64()
        .expect("frame_id copied from the tick");
    let rgb = frame
        .to_rgb8(&DecodeLimits::default())
        .unwrap_or_else(|e| panic!("{enc} frame {id}: {e}"));
    (id, rgb)
}

/// Largest and mean absolute difference of two byte strings.
fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let d: Vec<u8> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
    let max = d.iter().copied().max().unwrap_or(0);
    (
        max,
        d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64,
    )
}

/// OpenCV's own making and decoding of a `w x h` RGB8 picture in each YUV
/// layout (`tests/py/yuv_camera.py reference`): `layout -> (payload, RGB)`.
fn opencv_reference(rgb: &[u8], w: u32, h: u32) -> BTreeMap<String, (Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.rgb");
    std::fs::write(&src, rgb).unwrap();
    let out = Command::new(venv("python"))
        .arg(repo_root().join("tests/py/yuv_camera.py"))
        .arg("reference")
        .arg(&src)
        .args([w.to_string(), h.to_string()])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "yuv_camera.py reference: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ["yuv420", "nv12", "yuyv", "uyvy"]
        .into_iter()
        .map(|l| {
            let read = |ext: &str| std::fs::read(dir.path().join(format!("{l}.{ext}"))).unwrap();
            (l.to_string(), (read("yuv"), read("rgb")))
        })
        .collect()
}

/// What a dumped frame is held to.
#[derive(Clone, Copy)]
enum Want {
    /// Equal to the source frame (lossless).
    Exact,
    /// Lossy (JPEG): at most this many levels from the source on average.
    Lossy(f64),
    /// A YUV layout: the payload is OpenCV's own (`cvtColor` of the source
    /// frame, as the sender made it) and decodes within 2 levels of
    /// OpenCV's conversion back. (Chroma subsampling blurs the source's
    /// sharp edges, so the source itself is only reported.)
    OpenCv(&'static str),
}

/// Checks every dumped frame of `input` against the video: N frames, the
/// encoding sent, decoded as [`Want`] says.
fn check_frames(dump: &BTreeMap<String, Vec<&Value>>, input: &str, encoding: &str, want: Want) {
    let recs = dump
        .get(input)
        .unwrap_or_else(|| panic!("no frames from {input}"));
    assert_eq!(recs.len(), N as usize, "{input}: frame count");
    let (mut to_source, mut to_cv) = ((0u8, 0f64), (0u8, 0f64));
    for r in recs {
        assert_eq!(r["metadata"]["encoding"], encoding, "{input}");
        assert!(r.get("invalid").is_none(), "{input}: {}", r["invalid"]);
        let (id, (w, h, rgb)) = decode_dumped(r);
        assert_eq!((w, h), (W, H), "{input}");
        let source = synthetic_rgb(W, H, id as u32);
        let (max, mean) = diff(&rgb, &source);
        to_source = (to_source.0.max(max), to_source.1.max(mean));
        if let Want::OpenCv(layout) = want {
            let refs = opencv_reference(&source, W, H);
            let (payload, cv_rgb) = &refs[layout];
            let sent: Vec<u8> = r["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap_or(0) as u8)
                .collect();
            assert!(
                &sent == payload,
                "{input} frame {id}: not OpenCV's {layout} layout"
            );
            let (max, mean) = diff(&rgb, cv_rgb);
            to_cv = (to_cv.0.max(max), to_cv.1.max(mean));
        }
    }
    let cv = match want {
        Want::OpenCv(_) => format!(
            "; |decoded - cv2.cvtColor| max {} mean {:.2}",
            to_cv.0, to_cv.1
        ),
        _ => String::new(),
    };
    println!(
        "encoding figures: {input} ({encoding}): {N} frames, |decoded - source| max {} mean {:.2}{cv}",
        to_source.0, to_source.1
    );
    match want {
        Want::Exact => assert_eq!(to_source.0, 0, "{input}: decoded frames differ from the source"),
        Want::Lossy(bound) => assert!(
            to_source.1 <= bound,
            "{input}: decoded frames differ from the source by {:.2} levels on average (bound {bound})",
            to_source.1
        ),
        Want::OpenCv(_) => assert!(
            to_cv.0 <= 2,
            "{input}: decoded frames differ from OpenCV's own conversion by {} levels",
            to_cv.0
        ),
    }
}

#[test]
fn opencv_video_capture_sends_every_encoding_into_da3() {
    let opencv_capture = venv("opencv-video-capture");
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mp4");
    write_test_video(&video, W, H, N).unwrap();
    // (ENCODING, what its frames are held to): the lossless ones equal the
    // source (webp: OpenCV's default is lossless), jpeg close to it, yuv420
    // OpenCV's own I420 (`cvtColor(COLOR_BGR2YUV_I420)`).
    let encodings = [
        ("bgr8", Want::Exact),
        ("rgb8", Want::Exact),
        ("png", Want::Exact),
        ("bmp", Want::Exact),
        ("webp", Want::Exact),
        ("jpeg", Want::Lossy(4.0)),
        ("yuv420", Want::OpenCv("yuv420")),
    ];
    let out = dir.path().join("out.jsonl");
    let mut yaml = ticker_yaml(&video);
    let mut da3_in = Vec::new();
    let mut dump_in = Vec::new();
    for (enc, _) in encodings {
        yaml += &format!(
            r#"  - id: cam_{enc}
    path: "{}"
    inputs:
      tick: ticker/image
    outputs:
      - image
    env:
      CAPTURE_PATH: "{}"
      ENCODING: {enc}
      CI: "false"
"#,
            opencv_capture.display(),
            video.display()
        );
        da3_in.push((enc.to_string(), format!("cam_{enc}/image")));
        dump_in.push((format!("frame_{enc}"), format!("cam_{enc}/image")));
    }
    yaml += &da3_yaml(&da3_in);
    dump_in.push(("status".into(), "da3/status".into()));
    yaml += &dump_yaml("dump", &out, &dump_in);
    let flow = Flow::from_yaml(&yaml).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    let recs = read_dump(&out).unwrap();
    let dump = by_input(&recs);
    for (enc, want) in encodings {
        check_frames(&dump, &format!("frame_{enc}"), enc, want);
    }
    let status = status_records(&dump["status"]);
    let errors: Vec<&Value> = status.iter().filter(|s| s["type"] == "error").collect();
    assert!(errors.is_empty(), "frames rejected: {errors:#?}");
    let stats = status
        .iter()
        .rfind(|s| s["type"] == "stats")
        .expect("a final stats record");
    let n = (N as usize * encodings.len()) as u64;
    assert_eq!(stats["frames_in"], n, "{stats}");
    assert_eq!(stats["frames_out"], n, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");
}

#[test]
fn camera_driver_layouts_and_depth_frames_reach_da3_viewer_and_export() {
    let python = venv("python");
    let script = repo_root().join("tests/py/yuv_camera.py");
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("clip.mp4");
    write_test_video(&video, W, H, N).unwrap();
    let out = dir.path().join("out.jsonl");
    let export_dir = dir.path().join("export");
    let rrd = dir.path().join("viewer.rrd");
    // (ENCODING of yuv_camera.py, what it sends, bound against the source).
    let colour = [
        ("nv12", "nv12", Want::OpenCv("nv12")),
        ("yuyv", "yuyv", Want::OpenCv("yuyv")),
        ("yuv422", "yuv422", Want::OpenCv("uyvy")),
        ("bgra8", "bgra8", Want::Exact),
    ];
    let depth = [("mono16", "mono16"), ("16uc1", "16UC1")];
    let mut yaml = ticker_yaml(&video);
    for enc in colour.iter().map(|c| c.0).chain(depth.iter().map(|d| d.0)) {
        yaml += &format!(
            r#"  - id: cam_{enc}
    path: "{}"
    args: "{}"
    inputs:
      tick: ticker/image
    outputs:
      - image
    env:
      CAPTURE_PATH: "{}"
      ENCODING: {enc}
"#,
            python.display(),
            script.display(),
            video.display()
        );
    }
    let all: Vec<(String, String)> = colour
        .iter()
        .map(|c| c.0)
        .chain(depth.iter().map(|d| d.0))
        .map(|e| (format!("in_{e}"), format!("cam_{e}/image")))
        .collect();
    yaml += &da3_yaml(&all);
    let mut dump_in: Vec<(String, String)> = colour
        .iter()
        .map(|c| (format!("frame_{}", c.0), format!("cam_{}/image", c.0)))
        .collect();
    dump_in.push(("status".into(), "da3/status".into()));
    yaml += &dump_yaml("dump", &out, &dump_in);
    // The RealSense-style depth into depth-export, the ROS-style one into the viewer.
    yaml += &format!(
        r#"  - id: export
    path: ../target/debug/depth-export
    inputs:
      depth: {}
    env:
      EXPORT_DIR: "{}"
      FORMATS: png16
  - id: viewer
    path: ../target/debug/viewer
    inputs:
      depth: {}
      image: {}
    env:
      RERUN_RRD: "{}"
"#,
        lossless("cam_mono16/image"),
        export_dir.display(),
        lossless("cam_16uc1/image"),
        lossless("cam_bgra8/image"),
        rrd.display()
    );
    let flow = Flow::from_yaml(&yaml).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);

    // Colour frames: all accepted, decoded close to the source.
    let recs = read_dump(&out).unwrap();
    let dump = by_input(&recs);
    for (enc, sent, want) in colour {
        check_frames(&dump, &format!("frame_{enc}"), sent, want);
    }
    let status = status_records(&dump["status"]);
    let stats = status
        .iter()
        .rfind(|s| s["type"] == "stats")
        .expect("a final stats record");
    let n = N as u64;
    assert_eq!(stats["frames_in"], n * 6, "{stats}");
    assert_eq!(stats["frames_out"], n * 4, "{stats}");
    assert_eq!(stats["rejected"], n * 2, "{stats}");
    // Depth frames: each rejected by DA3 with the reason, named by input.
    let errors: Vec<&Value> = status.iter().filter(|s| s["type"] == "error").collect();
    assert_eq!(errors.len() as u64, n * 2, "{errors:#?}");
    for e in &errors {
        let input = e["input"].as_str().unwrap_or_default();
        assert!(input == "in_mono16" || input == "in_16uc1", "{e}");
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("depth image"), "{reason}");
    }

    // depth-export wrote each mono16 frame as 16-bit millimetres, exactly
    // the values sent (green x 20, see yuv_camera.py), metric.
    for i in 0..N {
        let stem = format!("clip_{i:06}");
        let png = image::open(export_dir.join(format!("{stem}.png")))
            .unwrap_or_else(|e| panic!("{stem}.png: {e}\n{}", run.log))
            .into_luma16();
        let want: Vec<u16> = synthetic_rgb(W, H, i)
            .chunks(3)
            .map(|p| p[1] as u16 * 20)
            .collect();
        assert_eq!(png.dimensions(), (W, H));
        // 0 mm is "no reading" on the camera and invalid (0) in the PNG alike.
        assert_eq!(png.into_raw(), want, "{stem}: millimetres");
        let side: Value = serde_json::from_slice(
            &std::fs::read(export_dir.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(side["is_metric"], true, "{side}");
        assert_eq!(side["depth_unit"], "mm", "{side}");
    }

    // The viewer logged the 16UC1 frames as metric depth images and the
    // bgra8 frames as pictures.
    let summary = Command::new(venv("python"))
        .arg(repo_root().join("tests/rrd_check.py"))
        .arg(&rrd)
        .output()
        .unwrap();
    assert!(
        summary.status.success(),
        "rrd_check.py: {}",
        String::from_utf8_lossy(&summary.stderr)
    );
    let s: Value = serde_json::from_slice(&summary.stdout).unwrap();
    let rows = |entity: &str, arch: &str| -> Vec<Value> {
        s["entities"][entity]["rows"]
            .as_array()
            .map(|r| r.iter().filter_map(|row| row.get(arch).cloned()).collect())
            .unwrap_or_default()
    };
    let depth_rows = rows("/world/cameras/clip/pinhole/depth", "DepthImage");
    assert_eq!(depth_rows.len(), N as usize, "{s:#}");
    for (i, d) in depth_rows.iter().enumerate() {
        assert_eq!(d["width"], W);
        assert_eq!(d["datatype"], "F32");
        let mm = synthetic_rgb(W, H, i as u32)
            .chunks(3)
            .map(|p| p[1] as f64 * 20.0)
            .sum::<f64>()
            / (W * H) as f64;
        let mean = d["mean"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (mean - mm / 1000.0).abs() < 1e-4,
            "frame {i}: mean {mean} m, want {} m",
            mm / 1000.0
        );
    }
    let images = rows("/world/cameras/clip/image/rgb", "Image");
    assert_eq!(images.len(), N as usize, "{s:#}");
}

#[test]
fn yuv_layouts_decode_like_opencv() {
    // A picture with every kind of colour (a seeded LCG): the conversion,
    // not the subsampling, is what is compared.
    let (w, h) = (64u32, 48u32);
    let mut x = 0x2545_f491u32;
    let rgb: Vec<u8> = (0..w * h * 3)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    let reference = opencv_reference(&rgb, w, h);
    for enc in [
        Encoding::Yuv420,
        Encoding::Nv12,
        Encoding::Yuyv,
        Encoding::Uyvy,
    ] {
        let (payload, opencv) = reference[&enc.to_string()].clone();
        let mut f = ImageFrame::rgb8(w, h, payload);
        f.encoding = enc;
        let (_, _, ours) = f.to_rgb8(&DecodeLimits::default()).unwrap();
        let (max, mean) = diff(&ours, &opencv);
        println!("encoding figures: {enc} vs cv2.cvtColor: max {max} levels, mean {mean:.3}");
        assert!(max <= 2, "{enc}: {max} levels from OpenCV's conversion");
    }
}
