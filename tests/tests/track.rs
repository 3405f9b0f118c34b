//! `dataflows/camera-da3-track-viewer.yml` under the real `dora run`: the camera's test
//! pattern at 30 fps into the DA3 node in track mode (the committed tiny checkpoint, random
//! weights: the poses are the model's; the alignment's tolerances opened, see below), the
//! viewer writing an `.rrd` and the recorder recording depth, camera and status.
//!
//! Checked: one output per inference (each frame once, in order, with a world pose),
//! (K+1)-view units ran, at most `K` keyframes, every frame processed or counted as
//! dropped, p95 latency within 1.2 x the (K+1)-view inference time (its p95) plus one frame
//! interval, RSS flat after warm-up, the
//! viewer's trajectory growing by one centre per frame, the recording holding every output.
//!
//! `TRACK_SECS` (default 20) is the camera's run time; `TRACK_MODEL` another checkpoint
//! (e.g. a DA3-SMALL folder) and `TRACK_RES` its PROCESS_RES (default 252): the long form
//! by hand, `TRACK_SECS=120 cargo test -p e2e --test track -- --nocapture`.

use std::path::Path;
use std::time::Duration;

use e2e::{da3_stats, rrd_summary, tiny_model, Flow};
use recorder::recording::RecordingReader;
use serde_json::Value;

const FPS: u64 = 30;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Every message of a recording as msg-dump records them (`input` = the stream).
fn read_recording(path: &Path) -> Vec<Value> {
    let mut r = RecordingReader::open(path).expect("the recorder wrote its file");
    let recs: Vec<Value> = r
        .by_ref()
        .map(|m| {
            let m = m.expect("a readable message");
            msg_dump::record(&m.stream, &m.metadata, m.data.as_ref())
        })
        .collect();
    assert!(r.truncated().is_none(), "recording truncated");
    recs
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number, got {v}"))
}

#[test]
fn camera_into_track_mode_bounded_latency_world_poses_and_flat_memory() {
    let secs: u64 = env_or("TRACK_SECS", "20").parse().expect("TRACK_SECS");
    let model = std::env::var("TRACK_MODEL").unwrap_or_else(|_| tiny_model());
    let res = env_or("TRACK_RES", "252");
    let frames = secs * FPS;
    let mut flow = Flow::load("camera-da3-track-viewer.yml").unwrap();
    flow.env("camera", "WIDTH", "320").unwrap();
    flow.env("camera", "HEIGHT", "240").unwrap();
    flow.env("camera", "FPS", FPS).unwrap();
    flow.env("camera", "MAX_FRAMES", frames).unwrap();
    flow.env("da3", "MODEL", &model).unwrap();
    flow.env("da3", "PROCESS_RES", &res).unwrap();
    flow.env("da3", "STATUS_MS", "500").unwrap();
    // Random weights predict a frame's pose differently in units of different sizes
    // (keyframe B as the new frame of a 2-view unit, then as the middle view of a 3-view
    // one): at the default tolerances every few frames re-anchors and no (K+1)-view unit
    // forms. The alignment's and the overlap's tolerances are opened (knobs of the node) so
    // that units of K+1 views run and their latency is what is measured; re-anchoring
    // itself is tested with the pose oracle (nodes/dora-da3/tests/track_oracle.rs).
    // `TRACK_DEFAULT_TOLERANCES=1` keeps the defaults.
    if std::env::var_os("TRACK_DEFAULT_TOLERANCES").is_none() {
        flow.env("da3", "TRACK_MAX_RESIDUAL", "1000").unwrap();
        flow.env("da3", "TRACK_MAX_ROTATION_DEG", "180").unwrap();
        flow.env("da3", "TRACK_MAX_SCALE_CHANGE", "100").unwrap();
        flow.env("da3", "TRACK_OVERLAP_BASELINE", "1000").unwrap();
        flow.env("da3", "TRACK_OVERLAP_ROTATION_DEG", "180")
            .unwrap();
    }
    flow.env("viewer", "RERUN_MODE", "save").unwrap();
    flow.env("viewer", "RERUN_RRD", flow.path("track.rrd").display())
        .unwrap();
    flow.env("recorder", "OUT", flow.path("track.arrows").display())
        .unwrap();
    let run = flow
        .run(Duration::from_secs(secs * 3 + 240))
        .expect("dora run");
    assert!(run.success, "dora run failed:\n{}", run.log);

    let recs = read_recording(&flow.path("track.arrows"));
    let st = da3_stats(&recs);
    let last = st.last().expect("stats records");
    let t = &last["track"];
    let k = t["keyframes_max"].as_u64().unwrap();
    let (fin, fout, dropped, rejected) = (
        last["frames_in"].as_u64().unwrap(),
        last["frames_out"].as_u64().unwrap(),
        last["dropped"].as_u64().unwrap(),
        last["rejected"].as_u64().unwrap(),
    );
    let by_dora = last["dropped_by_dora"].as_u64().unwrap();
    println!(
        "track ({model} at {res}): camera {frames} frames, in {fin}, out {fout}, dropped {dropped} (+{by_dora} by dora), rejected {rejected}"
    );
    println!("track: {t:#}");
    // Every frame that reached the node is processed or counted as dropped.
    assert_eq!(fout + dropped + rejected, fin, "{last:#}");
    assert!(fin + by_dora <= frames, "{last:#}");
    assert!(fout >= 5, "{last:#}");
    // Keyframes within K in every record; every frame placed (tracked, anchor, re-anchor).
    for s in &st {
        for (_, n) in s["track"]["keyframes"].as_object().unwrap() {
            assert!(n.as_u64().unwrap() <= k, "{s:#}");
        }
    }
    assert_eq!(t["frames"].as_u64().unwrap(), fout);
    assert_eq!(
        t["tracked"].as_u64().unwrap() + t["reanchors"].as_u64().unwrap() + 1,
        fout
    );
    assert_eq!(t["untracked"], 0);
    let events: Vec<Value> = recs
        .iter()
        .filter(|r| r["input"] == "status")
        .filter_map(|r| serde_json::from_str::<Value>(r["text"].as_str()?).ok())
        .filter(|s| s["type"] == "track")
        .collect();
    let reanchors = events.iter().filter(|e| e["event"] == "reanchor").count();
    for e in events.iter().take(5) {
        println!("track event: {e}");
    }
    assert_eq!(reanchors as u64, t["reanchors"].as_u64().unwrap());

    // One output per inference: each frame once, in order, with a world pose.
    let depth: Vec<&Value> = recs.iter().filter(|r| r["input"] == "depth").collect();
    let cams: Vec<&Value> = recs.iter().filter(|r| r["input"] == "camera").collect();
    assert_eq!(depth.len() as u64, fout);
    assert_eq!(cams.len() as u64, fout);
    let ids: Vec<u64> = depth
        .iter()
        .map(|d| d["metadata"]["frame_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for d in &depth {
        let md = &d["metadata"];
        for key in ["camera_position", "camera_orientation", "focal"] {
            let v = md[key].as_array().unwrap_or_else(|| panic!("{key}: {md}"));
            assert!(v.iter().all(|x| num(x).is_finite()), "{key}: {md}");
        }
    }

    // Latency: p95 within 1.2 x the (K+1)-view inference time plus one frame interval, the
    // inference time at the same percentile. Against the median it cannot hold here: on
    // these shared 2-core machines the inference's own p95 is 1.2-1.3x its p50 (tiny
    // checkpoint), so even a node with no wait and no sending would miss that form; it is
    // printed beside. Measured margin of this bound (session 11, 12 runs): 16-23 ms, with the
    // outputs' sending (`send_ms`, ~17-23 ms p95: the recorder's backpressured inputs take
    // dora 1.1's daemon path) inside it.
    let by_views = t["infer_ms_by_views"].as_object().unwrap();
    let views = (k + 1).to_string();
    let times = by_views
        .get(&views)
        .unwrap_or_else(|| panic!("no {views}-view unit ran: {by_views:?}"));
    let (infer50, infer95) = (num(&times["p50"]), num(&times["p95"]));
    let send95 = num(&t["send_ms"]["p95"]);
    let p95 = num(&last["latency_ms"]["p95"]);
    let interval = 1000.0 / FPS as f64;
    let bound = 1.2 * infer95 + interval;
    println!(
        "track: {views}-view inference (K+1 = {}) p50 {infer50:.1} p95 {infer95:.1} ms, send p95 {send95:.1} ms, latency p50 {} p95 {p95:.1} ms; bound {bound:.1} ms (against the p50 inference: {:.1} ms); by views {}",
        k + 1,
        last["latency_ms"]["p50"],
        1.2 * infer50 + interval,
        t["infer_ms_by_views"]
    );
    assert!(p95 <= bound, "latency p95 {p95} ms over {bound} ms");

    // Memory flat once the keyframes are full (buffers allocated).
    let rss: Vec<(f64, f64)> = st
        .iter()
        .filter(|s| s["frames_out"].as_u64().unwrap_or(0) >= 2 * (k + 1))
        .filter_map(|s| Some((num(&s["uptime_s"]), s["rss_mib"].as_f64()?)))
        .collect();
    let (first, end) = (rss.first().unwrap(), rss.last().unwrap());
    println!(
        "track: RSS {:.1} MiB at {:.0} s -> {:.1} MiB at {:.0} s (max {:.1})",
        first.1,
        first.0,
        end.1,
        end.0,
        rss.iter().map(|r| r.1).fold(0.0, f64::max)
    );
    let every = (rss.len() / 12).max(1);
    let series: Vec<String> = rss
        .iter()
        .step_by(every)
        .map(|(t, m)| format!("{t:.0}s {m:.1}"))
        .collect();
    println!("track: RSS series (MiB) {}", series.join(", "));
    assert!(end.1 - first.1 < 64.0, "RSS grew: {rss:?}");

    // The viewer's trajectory grows by one centre per frame.
    let camera = depth[0]["metadata"]["camera"].as_str().unwrap().to_string();
    let s = rrd_summary(&flow.path("track.rrd")).unwrap();
    let traj = &s["entities"][format!("/world/trajectory/{camera}")]["rows"];
    let lens: Vec<u64> = traj
        .as_array()
        .expect("a trajectory entity")
        .iter()
        .map(|r| r["LineStrips3D"]["strip_len"].as_u64().unwrap())
        .collect();
    println!("track: trajectory rows {}", lens.len());
    assert_eq!(lens.len() as u64, fout);
    assert_eq!(lens.last().copied(), Some(fout));
}
