//! Recorder and replay under the real dora CLI: the camera's test pattern is
//! recorded and replayed byte for byte with its metadata; a recorder killed
//! with SIGKILL leaves a readable file holding what it flushed; a replay as
//! fast as possible into a slow consumer loses nothing; SPEED scales timing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use da3_msg::arrow::array::{Array, ArrayRef, StringArray};
use da3_msg::{DepthKind, DepthMap, FrameInfo, ImageFrame, MetadataParameters};
use e2e::{bin, read_dump, record_and_kill, Flow};
use msg_dump::fnv1a64;
use recorder::recording::{RecordedMessage, RecordingReader, RecordingWriter};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

fn hash(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a64(bytes))
}

fn read_recording(path: &Path) -> (Vec<RecordedMessage>, Option<String>) {
    let mut r = RecordingReader::open(path).unwrap();
    let msgs = r.by_ref().map(|m| m.unwrap()).collect();
    (msgs, r.truncated().map(str::to_string))
}

/// The msg-dump line a message should produce (everything but `input`).
fn expected_line(input: &str, m: &RecordedMessage) -> Value {
    msg_dump::record(input, &m.metadata, m.data.as_ref())
}

/// Loads a graph written here (`Flow::load` takes an absolute path as is);
/// keep the returned folder alive while the flow runs.
fn flow_from_yaml(yaml: &str) -> (tempfile::TempDir, Flow) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graph.yml");
    std::fs::write(&path, yaml).unwrap();
    let flow = Flow::load(path.to_str().unwrap()).unwrap();
    (dir, flow)
}

/// Camera frame `i` of the test pattern as recorded: checks bytes and metadata.
fn check_pattern_frame(i: usize, m: &RecordedMessage, w: u32, h: u32) {
    let img = ImageFrame::from_message(m.data.as_ref(), &m.metadata).unwrap();
    assert_eq!(img.info.frame_id, Some(i as u64), "frame {i} out of order");
    assert_eq!((img.width, img.height), (w, h));
    assert_eq!(img.info.camera.as_deref(), Some("pattern"));
    assert_eq!(
        hash(&img.data),
        hash(&camera::render_test_pattern(i as u64, w, h)),
        "frame {i}: bytes differ"
    );
}

fn replay_into_dump(file: &Path, speed: &str) -> Vec<Value> {
    let mut flow = Flow::load("replay-dump.yml").unwrap();
    let out = flow.path("replay.jsonl");
    flow.env("replay", "FILE", file.display()).unwrap();
    flow.env("replay", "SPEED", speed).unwrap();
    flow.env("replay", "LINGER_MS", 500).unwrap();
    flow.env("dump", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "replay failed:\n{}", run.log);
    assert!(run.log.contains("replay: sent"), "{}", run.log);
    read_dump(&out).unwrap()
}

#[test]
fn camera_recording_replays_byte_exact_with_metadata() {
    let (w, h, n) = (160u32, 120u32, 30usize);
    let mut flow = Flow::load("record-camera.yml").unwrap();
    let rec_path = flow.path("rec.arrows");
    flow.env("camera", "WIDTH", w).unwrap();
    flow.env("camera", "HEIGHT", h).unwrap();
    flow.env("camera", "MAX_FRAMES", n).unwrap();
    flow.env("camera", "CAMERA_NAME", "pattern").unwrap();
    flow.env("recorder", "OUT", rec_path.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "recording failed:\n{}", run.log);
    assert!(
        run.log
            .contains("recorder: 30 messages in (image: 30), 30 written"),
        "{}",
        run.log
    );

    // The file: every frame, in order, byte-exact, with the camera's metadata.
    let (msgs, truncated) = read_recording(&rec_path);
    assert!(truncated.is_none());
    let ids: Vec<_> = msgs
        .iter()
        .map(|m| m.metadata["frame_id"].clone())
        .collect();
    assert_eq!(msgs.len(), n, "{ids:?}");
    let mut last_recv = 0;
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.stream, "image");
        assert_eq!(m.seq, i as u64);
        assert_eq!(m.arrow_type, "UInt8");
        assert!(m.recv_ns >= last_recv);
        last_recv = m.recv_ns;
        check_pattern_frame(i, m, w, h);
    }
    assert!(msgs[n - 1].metadata.contains_key("last"));

    // da3-record-info summarises it.
    let info = Command::new(bin("da3-record-info").unwrap())
        .arg(&rec_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{text}");
    assert!(text.contains("30 messages"), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("image"))
        .unwrap();
    assert!(line.contains("UInt8"), "{text}");
    let rate: f64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(
        (20.0..40.0).contains(&rate),
        "30 fps recorded as {rate} Hz:\n{text}"
    );

    // Replayed as fast as possible: the same lines msg-dump would write for
    // the original messages (payload hash, type, length, every metadata value).
    let recs = replay_into_dump(&rec_path, "0");
    let got: Vec<_> = recs
        .iter()
        .map(|r| r["metadata"]["frame_id"].clone())
        .collect();
    assert_eq!(recs.len(), n, "lost frames in the replay: {got:?}");
    for (i, (rec, m)) in recs.iter().zip(&msgs).enumerate() {
        assert_eq!(rec, &expected_line("image", m), "frame {i}");
        assert_eq!(
            rec["hash"],
            hash(&camera::render_test_pattern(i as u64, w, h)),
            "frame {i}"
        );
    }
}

#[test]
fn killed_recorder_leaves_a_readable_file() {
    let (w, h) = (160u32, 120u32);
    let k = record_and_kill(w, h, "", "rec.arrows", TIMEOUT).unwrap();
    let (rec_path, sent, before) = (&k.path, &k.sent, k.flushed_before_kill);
    let (msgs, truncated) = read_recording(rec_path);
    // Everything sent more than FLUSH_MS (+ slack for a busy machine) before
    // the kill was flushed.
    eprintln!(
        "kill -9: {} frames sent, {before} more than FLUSH_MS+0.5 s before the kill, {} recorded, truncated: {truncated:?}",
        sent.len(),
        msgs.len()
    );
    assert!(before > 10, "too few frames before the kill: {before}");
    assert!(
        msgs.len() >= before && msgs.len() < 150,
        "recorded {} frames, {before} sent more than FLUSH_MS before the kill",
        msgs.len()
    );
    for (i, m) in msgs.iter().enumerate() {
        check_pattern_frame(i, m, w, h);
    }

    // The cut file replays.
    let recs = replay_into_dump(rec_path, "0");
    assert_eq!(recs.len(), msgs.len());
    for (i, (rec, m)) in recs.iter().zip(&msgs).enumerate() {
        assert_eq!(rec, &expected_line("image", m), "frame {i}");
    }
}

fn info(i: u64) -> FrameInfo {
    FrameInfo {
        frame_id: Some(i),
        stamp_ns: Some(1_700_000_000_000_000_000 + i * 1000),
        camera: Some("synthetic".into()),
        last: false,
    }
}

/// A recording of `n` messages cycling over `image`, `depth` and `status`,
/// `step_ms` apart.
fn synthetic_recording(path: &Path, n: u64, step_ms: i64) -> Vec<RecordedMessage> {
    let mut w = RecordingWriter::create(path).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let (stream, (data, metadata)): (&str, (ArrayRef, MetadataParameters)) = match i % 3 {
            0 => {
                let mut f = ImageFrame::rgb8(
                    160,
                    120,
                    (0..160 * 120 * 3).map(|k| (k + i) as u8).collect(),
                );
                f.info = info(i);
                ("image", f.to_message())
            }
            1 => {
                let d = DepthMap {
                    kind: DepthKind::Depth,
                    width: 8,
                    height: 6,
                    values: (0..48).map(|k| k as f32 * 0.25 + i as f32).collect(),
                    info: info(i),
                    intrinsics: None,
                    pose: None,
                    is_metric: true,
                };
                ("depth", d.to_message())
            }
            _ => {
                let s: ArrayRef = Arc::new(StringArray::from(vec![format!("{{\"i\":{i}}}")]));
                ("status", (s, MetadataParameters::new()))
            }
        };
        let recv_ns = 1_000_000_000 + i as i64 * step_ms * 1_000_000;
        let seq = w.push(stream, recv_ns, &metadata, data.as_ref()).unwrap();
        if i % 16 == 15 {
            w.flush().unwrap();
        }
        out.push(RecordedMessage {
            stream: stream.into(),
            seq,
            recv_ns,
            arrow_type: data.data_type().to_string(),
            metadata,
            data,
        });
    }
    w.finish().unwrap();
    out
}

fn replay_sink_yaml(file: &Path, replay_env: &str, delay_ms: u64) -> String {
    format!(
        r#"
nodes:
  - id: replay
    path: ../target/debug/replay
    outputs: [image, d]
    env: {{FILE: "{}", RENAME: "depth:d", LINGER_MS: "500", {replay_env}}}
  - id: sink
    path: ../target/debug/slow-sink
    inputs:
      image: {{source: replay/image, queue_size: 1000, queue_policy: backpressure}}
      depth: {{source: replay/d, queue_size: 1000, queue_policy: backpressure}}
    env: {{DELAY_MS: "{delay_ms}"}}
"#,
        file.display()
    )
}

#[test]
fn fast_replay_into_a_slow_consumer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("synthetic.arrows");
    let msgs = synthetic_recording(&file, 240, 5);
    let (_g, mut flow) = flow_from_yaml(&replay_sink_yaml(&file, "SPEED: \"0\"", 10));
    let out = flow.path("sink.jsonl");
    flow.env("sink", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "{}", run.log);
    // `status` has no output: skipped; `depth` goes out renamed as `d`.
    assert!(
        run.log.contains("stream `status` has no output"),
        "{}",
        run.log
    );
    let recs = read_dump(&out).unwrap();
    let want: Vec<&RecordedMessage> = msgs.iter().filter(|m| m.stream != "status").collect();
    assert_eq!(
        recs.len(),
        want.len(),
        "messages lost into the slow consumer"
    );
    for stream in ["image", "depth"] {
        let got: Vec<&Value> = recs.iter().filter(|r| r["input"] == stream).collect();
        let exp: Vec<&&RecordedMessage> = want.iter().filter(|m| m.stream == stream).collect();
        assert_eq!(got.len(), exp.len(), "{stream}");
        for (i, (g, m)) in got.iter().zip(exp).enumerate() {
            let mut g = (*g).clone();
            g.as_object_mut().unwrap().remove("arrival_ns");
            assert_eq!(g, expected_line(stream, m), "{stream} message {i}");
        }
    }
}

#[test]
fn speed_scales_the_recorded_timing_and_tick_mode_sends_one_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("timed.arrows");
    // 10 images 100 ms apart (every 3rd message of 28, 33 ms apart).
    let msgs = synthetic_recording(&file, 28, 100 / 3);
    let images: Vec<&RecordedMessage> = msgs.iter().filter(|m| m.stream == "image").collect();
    let recorded_span = (images.last().unwrap().recv_ns - images[0].recv_ns) as f64 / 1e9;

    let (_g, mut flow) =
        flow_from_yaml(&replay_sink_yaml(&file, "SPEED: \"2\", STREAMS: image", 0));
    let out = flow.path("sink.jsonl");
    flow.env("sink", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "{}", run.log);
    let recs = read_dump(&out).unwrap();
    assert_eq!(recs.len(), images.len());
    let t = |r: &Value| r["arrival_ns"].as_u64().unwrap() as f64 / 1e9;
    let span = t(&recs[recs.len() - 1]) - t(&recs[0]);
    let want = recorded_span / 2.0;
    assert!(
        (span - want).abs() < 0.25,
        "SPEED=2: {span:.3}s, expected ~{want:.3}s"
    );

    // PACE=tick: one message per timer tick, all of them.
    let (_g, mut flow) = flow_from_yaml(&replay_sink_yaml(&file, "PACE: tick", 0));
    flow.input("replay", "tick", "dora/timer/millis/20")
        .unwrap();
    let out = flow.path("sink.jsonl");
    flow.env("sink", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "{}", run.log);
    let recs = read_dump(&out).unwrap();
    let want = msgs.iter().filter(|m| m.stream != "status").count();
    assert_eq!(recs.len(), want);
}
