//! MCAP recordings under the real dora CLI: `dataflows/camera-da3-mcap.yml`
//! (test-pattern camera -> DA3 on the tiny checkpoint -> recorder, `.mcap`)
//! read back three ways: by the `mcap` Python package (channels, schemas,
//! counts, the depth bytes, poses and intrinsics, next to what a msg-dump sink
//! saw of the same messages), by Rerun (`rerun mcap convert`, then its .rrd
//! reader), and by `replay` (every message again, exactly); and a recorder
//! killed with SIGKILL leaves a file that all of them read up to its last
//! chunk (Rerun after `da3-mcap-recover`).
//!
//! `tests/mcap_check.py` runs the Python side (the `.venv` of
//! scripts/setup.sh: mcap 1.6.0, mcap-protobuf-support 0.6.0, rerun-sdk 0.36.3).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::{bin, read_dump, record_and_kill, repo_root, tiny_model, venv_python_json, Flow};
use msg_dump::fnv1a64;
use recorder::mcap_recording::McapRecordingReader;
use recorder::recording::RecordedMessage;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);
/// The recorded streams of camera-da3-mcap.yml.
const STREAMS: [&str; 7] = [
    "image",
    "depth",
    "confidence",
    "camera",
    "points",
    "depth_vis",
    "status",
];

/// `tests/mcap_check.py` on `path` (with the Rerun conversion when `rerun`; mcap and
/// rerun-sdk from the .venv of scripts/setup.sh).
fn mcap_check(path: &Path, rerun: bool) -> Value {
    let mut args = vec![
        repo_root().join("tests/mcap_check.py").into_os_string(),
        path.as_os_str().to_owned(),
    ];
    if rerun {
        args.push("--rerun".into());
    }
    venv_python_json(&args).unwrap()
}

/// FNV-1a 64 of bytes given as hex, as msg-dump prints payload hashes.
fn fnv_of_hex(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    format!("{:016x}", fnv1a64(&bytes))
}

/// msg-dump lines by input, in arrival order.
fn by_input(recs: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in recs {
        m.entry(r["input"].as_str().unwrap().to_string())
            .or_default()
            .push(r.clone());
    }
    m
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The mcap_check entries of `kind` (`images`, `transforms`...) on `topic`, by MCAP sequence.
fn on_topic<'a>(doc: &'a Value, kind: &str, topic: &str) -> BTreeMap<u64, &'a Value> {
    doc[kind]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["topic"] == topic)
        .map(|e| (e["sequence"].as_u64().unwrap(), e))
        .collect()
}

/// Replays `file` as fast as possible into a msg-dump with one input per
/// stream: what it received, and the log.
fn replay_all(file: &Path) -> (Vec<Value>, String) {
    let inputs: String = STREAMS
        .iter()
        .map(|s| {
            format!(
                "      {s}: {{source: replay/{s}, queue_size: 1000, queue_policy: backpressure}}\n"
            )
        })
        .collect();
    let yaml = format!(
        "nodes:\n  - id: replay\n    path: ../target/debug/replay\n    outputs: [{}]\n    env: {{FILE: \"{}\", SPEED: \"0\", LINGER_MS: \"500\"}}\n  - id: dump\n    path: ../target/debug/msg-dump\n    inputs:\n{inputs}    env: {{PRINT: \"0\"}}\n",
        STREAMS.join(", "),
        file.display()
    );
    let mut flow = Flow::from_yaml(&yaml).unwrap();
    let out = flow.path("replay.jsonl");
    flow.env("dump", "OUT_FILE", out.display()).unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "replay failed:\n{}", run.log);
    (read_dump(&out).unwrap(), run.log)
}

fn read_mcap(path: &Path) -> (Vec<RecordedMessage>, Option<String>) {
    let mut r = McapRecordingReader::open(path).unwrap();
    let msgs = r.by_ref().map(|m| m.unwrap()).collect();
    (msgs, r.truncated().map(str::to_string))
}

#[test]
fn camera_da3_mcap_recording_opens_in_mcap_and_rerun_and_replays_exactly() {
    let (w, h, n) = (160u32, 120u32, 10usize);
    let mut flow = Flow::load("camera-da3-mcap.yml").unwrap();
    let rec_path = flow.path("rec.mcap");
    for (k, v) in [
        ("WIDTH", w.to_string()),
        ("HEIGHT", h.to_string()),
        ("FPS", "5".into()),
        ("MAX_FRAMES", n.to_string()),
        ("CAMERA_NAME", "pattern".into()),
        ("INTRINSICS", "150,150,80,60".into()),
    ] {
        flow.env("camera", k, v).unwrap();
    }
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    flow.env("da3", "PROCESS_RES", "112").unwrap();
    flow.env("recorder", "OUT", rec_path.display()).unwrap();
    flow.env("dump", "OUT_FILE", flow.path("sent.jsonl").display())
        .unwrap();
    for s in STREAMS {
        let src = if s == "image" {
            "camera/image".to_string()
        } else {
            format!("da3/{s}")
        };
        flow.input_lossless("dump", s, &src).unwrap();
    }
    let run = flow.run(TIMEOUT).unwrap();
    assert!(run.success, "dora run failed:\n{}", run.log);
    let sent = by_input(&read_dump(&flow.path("sent.jsonl")).unwrap());
    let count = |s: &str| sent.get(s).map_or(0, Vec::len);
    assert_eq!(count("image"), n);
    assert!(
        count("depth") >= 2,
        "DA3 answered {} frames",
        count("depth")
    );
    let total: usize = STREAMS.iter().map(|s| count(s)).sum();
    assert!(
        run.log
            .contains(&format!("{total} written to 1 file(s), 0 left out")),
        "{}",
        run.log
    );

    // Our reader: every message, in order per stream, exactly as sent.
    let (msgs, truncated) = read_mcap(&rec_path);
    assert!(truncated.is_none(), "{truncated:?}");
    assert_eq!(msgs.len(), total);
    for s in STREAMS {
        let got: Vec<Value> = msgs
            .iter()
            .filter(|m| m.stream == s)
            .map(|m| msg_dump::record(s, &m.metadata, m.data.as_ref()))
            .collect();
        let want = sent.get(s).cloned().unwrap_or_default();
        assert_eq!(got.len(), want.len(), "{s}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{s} message {i}: recorded != sent");
        }
    }

    // da3-record-info summarises it.
    let info = Command::new(bin("da3-record-info").unwrap())
        .arg(&rec_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{text}");
    assert!(
        text.contains(&format!("mcap, {total} records (0 bad)")),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("depth "))
        .unwrap_or_else(|| panic!("no depth line:\n{text}"));
    assert!(line.contains("Float32"), "{text}");
    assert_eq!(
        line.split_whitespace().nth(1),
        Some(count("depth").to_string().as_str()),
        "{text}"
    );

    // The mcap Python package: channels, schemas, counts, values.
    let doc = mcap_check(&rec_path, true);
    assert_eq!(doc["summary"], true, "the finished file has its summary");
    assert!(doc["error"].is_null(), "{}", doc["error"]);
    let ch = &doc["channels"];
    let schema = |topic: &str| ch[topic]["schema"].as_str().unwrap_or("-").to_string();
    let msgs_on = |topic: &str| ch[topic]["messages"].as_u64().unwrap_or(0) as usize;
    for s in STREAMS {
        let topic = format!("{s}/record");
        assert_eq!(schema(&topic), "da3.Record", "{topic}");
        assert_eq!(msgs_on(&topic), count(s), "{topic}");
        assert_eq!(ch[&topic]["message_encoding"], "protobuf");
    }
    for (topic, want, k) in [
        ("image", "foxglove.RawImage", count("image")),
        (
            "image/calibration",
            "foxglove.CameraCalibration",
            count("image"),
        ),
        ("depth", "foxglove.RawImage", count("depth")),
        (
            "depth/calibration",
            "foxglove.CameraCalibration",
            count("depth"),
        ),
        ("depth/pose", "foxglove.FrameTransform", count("depth")),
        ("confidence", "foxglove.RawImage", count("confidence")),
        ("camera", "foxglove.CameraCalibration", count("camera")),
        ("camera/pose", "foxglove.FrameTransform", count("camera")),
        ("points", "foxglove.PointCloud", count("points")),
        ("depth_vis", "foxglove.RawImage", count("depth_vis")),
    ] {
        assert_eq!(schema(topic), want, "{topic}");
        assert_eq!(ch[topic]["schema_encoding"], "protobuf", "{topic}");
        assert_eq!(msgs_on(topic), k, "{topic}");
    }
    assert!(ch.get("status").is_none(), "status has no Foxglove view");

    // Depth: the RawImage bytes are the DA3 output (msg-dump's hash), its
    // pose and intrinsics those of the message.
    let records: Vec<&Value> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["stream"] == "depth")
        .collect();
    let images = on_topic(&doc, "images", "depth");
    let poses = on_topic(&doc, "transforms", "depth/pose");
    let cals = on_topic(&doc, "calibrations", "depth/calibration");
    assert_eq!(records.len(), count("depth"));
    for (rec, want) in records.iter().zip(&sent["depth"]) {
        let seq = rec["sequence"].as_u64().unwrap();
        let meta = &want["metadata"];
        assert_eq!(rec["payload_topic"], "depth");
        assert_eq!(
            rec["payload_len"], 0,
            "the payload lives in the RawImage only"
        );
        assert_eq!(rec["metadata"]["frame_id"]["Integer"], meta["frame_id"]);
        let img = images[&seq];
        assert_eq!(img["encoding"], "32FC1");
        assert_eq!(img["width"], meta["width"]);
        assert_eq!(img["height"], meta["height"]);
        assert_eq!(img["frame_id"], "pattern/depth");
        assert_eq!(img["timestamp_ns"], meta["stamp_ns"]);
        let hex = img["hex"]
            .as_str()
            .expect("a small depth map comes with its bytes");
        assert_eq!(
            fnv_of_hex(hex),
            want["hash"].as_str().unwrap(),
            "depth bytes"
        );
        let tf = poses[&seq];
        assert_eq!(
            (tf["parent"].as_str(), tf["child"].as_str()),
            (Some("world"), Some("pattern/depth"))
        );
        assert_eq!(f64s(&tf["translation"]), f64s(&meta["camera_position"]));
        assert_eq!(f64s(&tf["rotation"]), f64s(&meta["camera_orientation"]));
        let (f, c) = (f64s(&meta["focal"]), f64s(&meta["principal_point"]));
        assert_eq!(
            f64s(&cals[&seq]["K"]),
            vec![f[0], 0.0, c[0], 0.0, f[1], c[1], 0.0, 0.0, 1.0]
        );
    }
    let pts = on_topic(&doc, "points", "points");
    for (p, want) in pts.values().zip(&sent["points"]) {
        assert_eq!(p["n"], want["len"], "points");
        assert_eq!(p["stride"], 15);
    }

    // Rerun: the file opens (converted headless) with images, depth, poses,
    // cameras and points where the recorder put them.
    assert!(doc["rerun_error"].is_null(), "{}", doc["rerun_error"]);
    let ents = &doc["rerun"]["entities"];
    let arch = |e: &str, a: &str| ents[e]["archetypes"][a].as_u64().unwrap_or(0) as usize;
    assert_eq!(arch("/image", "Image"), count("image"));
    assert_eq!(arch("/depth", "Image"), count("depth"));
    assert_eq!(arch("/depth/calibration", "Pinhole"), count("depth"));
    assert_eq!(arch("/depth/pose", "Transform3D"), count("depth"));
    assert_eq!(arch("/camera", "Pinhole"), count("camera"));
    assert_eq!(arch("/camera/pose", "Transform3D"), count("camera"));
    assert_eq!(arch("/points", "Points3D"), count("points"));
    assert_eq!(arch("/status/record", "da3.Record"), count("status"));
    let depth_rows: Vec<&Value> = ents["/depth"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("Image").is_some())
        .collect();
    for r in &depth_rows {
        assert_eq!(r["Image"]["datatype"], "F32");
    }
    let d0 = &sent["depth"][0]["metadata"];
    assert_eq!(depth_rows[0]["Image"]["width"], d0["width"]);
    let tf_rows: Vec<&Value> = ents["/depth/pose"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("Transform3D").is_some())
        .collect();
    let t0 = f64s(&tf_rows[0]["Transform3D"]["translation"]);
    for (a, b) in t0.iter().zip(f64s(&d0["camera_position"])) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{t0:?} vs {b}");
    }

    // Replayed: every message again, exactly (what msg-dump saw the first time).
    let (back, log) = replay_all(&rec_path);
    assert!(
        log.contains("0 undecodable, 0 file(s) cut or damaged"),
        "{log}"
    );
    let back = by_input(&back);
    for s in STREAMS {
        let got = back.get(s).cloned().unwrap_or_default();
        let want = sent.get(s).cloned().unwrap_or_default();
        assert_eq!(got.len(), want.len(), "{s}: replayed");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{s} message {i}: replayed != sent");
        }
    }
}

#[test]
fn killed_mcap_recorder_leaves_a_readable_file() {
    let (w, h) = (160u32, 120u32);
    let k = record_and_kill(w, h, ", ENCODING: jpeg", "rec.mcap", TIMEOUT).unwrap();
    let (flow, rec_path, sent, before) = (&k.flow, &k.path, &k.sent, k.flushed_before_kill);
    let (msgs, truncated) = read_mcap(rec_path);
    eprintln!(
        "kill -9 (mcap): {} frames sent, {before} more than FLUSH_MS+0.5 s before the kill, {} recorded, truncated: {truncated:?}",
        sent.len(),
        msgs.len()
    );
    assert!(truncated.is_some(), "no summary after kill -9: reported");
    assert!(before > 10, "too few frames before the kill: {before}");
    assert!(
        msgs.len() >= before && msgs.len() < 150,
        "recorded {} frames, {before} sent more than FLUSH_MS before the kill",
        msgs.len()
    );
    for (i, (m, want)) in msgs.iter().zip(sent).enumerate() {
        assert_eq!(
            msg_dump::record("image", &m.metadata, m.data.as_ref()),
            *want,
            "frame {i}"
        );
    }

    // The mcap Python package reads the same records, up to the cut.
    let doc = mcap_check(rec_path, false);
    assert_eq!(doc["summary"], false);
    assert!(!doc["error"].is_null(), "the cut is reported");
    assert_eq!(doc["records"].as_array().unwrap().len(), msgs.len());
    assert_eq!(
        doc["channels"]["image"]["schema"], "foxglove.CompressedImage",
        "JPEG frames"
    );

    // The cut file replays.
    let (recs, log) = replay_all(rec_path);
    assert_eq!(recs.len(), msgs.len());
    assert!(
        log.contains("0 undecodable, 1 file(s) cut or damaged"),
        "{log}"
    );

    // Recovered (summary and footer added), it opens in Rerun.
    let fixed = flow.path("fixed.mcap");
    let out = Command::new(bin("da3-mcap-recover").unwrap())
        .arg(rec_path)
        .arg(&fixed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = mcap_check(&fixed, true);
    assert_eq!(doc["summary"], true);
    assert!(doc["error"].is_null(), "{}", doc["error"]);
    assert_eq!(doc["records"].as_array().unwrap().len(), msgs.len());
    assert!(doc["rerun_error"].is_null(), "{}", doc["rerun_error"]);
    let enc = doc["rerun"]["entities"]["/image"]["archetypes"]["EncodedImage"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(enc as usize, msgs.len(), "JPEG frames as EncodedImage");
}
