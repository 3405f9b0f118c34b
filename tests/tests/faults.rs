//! Faults under the real `dora run`: a consumer that dies and is restarted by
//! dora's `restart_policy`, a source killed with SIGKILL mid-stream, and the
//! DA3 node given a corrupt or missing checkpoint. (A recorder killed with
//! SIGKILL: `record_replay.rs`, `killed_recorder_leaves_a_readable_file`.)
//!
//! Each test prints its figures (`cargo test -p e2e --test faults -- --nocapture`).

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{bin_copy, da3_stats, read_dump, sigkill_matching, tiny_model, Flow};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);

fn ids(recs: &[&Value]) -> Vec<u64> {
    recs.iter()
        .map(|r| r["metadata"]["frame_id"].as_u64().expect("frame_id"))
        .collect()
}

fn on_input<'a>(recs: &'a [Value], input: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["input"] == input).collect()
}

/// `key=N` in the last log line that has it (dora's daemon statistics).
fn log_figure(log: &str, key: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
    })
}

/// Every file under `dir` (recursively); empty when `dir` does not exist.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// camera -> DA3 (live) -> a sink that exits with code 3 after 10 depth
/// messages and is restarted by dora (`restart_policy: on-failure`); a
/// msg-dump beside it sees everything the DA3 node sends.
#[test]
fn consumer_killed_mid_stream_is_restarted_and_the_graph_keeps_flowing() {
    let die_after = 10u64;
    let mut flow = Flow::from_yaml(&format!(
        r#"
nodes:
  - id: camera
    path: ../target/debug/camera
    outputs: [image]
    env: {{CAMERA_DEVICE: test-pattern, WIDTH: "160", HEIGHT: "120", FPS: "20", MAX_FRAMES: "160", CAMERA_NAME: pattern}}
  - id: da3
    path: ../target/debug/dora-da3
    inputs:
      image: {{source: camera/image, queue_size: 1}}
    outputs: [depth, status]
    env: {{MODE: live, PROCESS_RES: "112", STATUS_MS: "500"}}
  - id: sink
    path: ../target/debug/slow-sink
    restart_policy: on-failure
    max_restarts: 3
    restart_delay: 0.2
    inputs:
      depth: {{source: da3/depth, queue_size: 100, queue_policy: backpressure}}
    env: {{DIE_AFTER: "{die_after}"}}
  - id: dump
    path: ../target/debug/msg-dump
    inputs:
      depth: {{source: da3/depth, queue_size: 100, queue_policy: backpressure}}
      status: {{source: da3/status, queue_size: 100, queue_policy: backpressure}}
"#
    ))
    .unwrap();
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    flow.env("sink", "OUT_FILE", flow.path("sink.jsonl").display())
        .unwrap();
    flow.env("dump", "OUT_FILE", flow.path("dump.jsonl").display())
        .unwrap();
    let run = flow.run(TIMEOUT).unwrap();
    // The sink's first run failed, its restart ended cleanly: the dataflow succeeds.
    assert!(run.success, "dora run failed:\n{}", run.log);
    assert!(
        run.log.contains(&format!("DIE_AFTER={die_after} reached")),
        "the sink did not die:\n{}",
        run.log
    );
    assert!(
        run.log.contains("restarting node after failure"),
        "{}",
        run.log
    );
    // The daemon's statistics line, when it has printed one, agrees.
    if let Some(r) = log_figure(&run.log, "restarts") {
        assert_eq!(r, 1, "dora's restart count:\n{}", run.log);
    }

    let sink = read_dump(&flow.path("sink.jsonl")).unwrap();
    let first: Vec<&Value> = sink.iter().filter(|r| r["restart"] == 0).collect();
    let second: Vec<&Value> = sink.iter().filter(|r| r["restart"] == 1).collect();
    assert_eq!(first.len() + second.len(), sink.len(), "a third run?");
    let (a, b) = (ids(&first), ids(&second));
    let dump = read_dump(&flow.path("dump.jsonl")).unwrap();
    let sent = ids(&on_input(&dump, "depth"));
    let last = da3_stats(&dump).pop().expect("a final stats record");
    let frames_out = last["frames_out"].as_u64().unwrap();
    let lost = sent.len() - sink.len();
    println!(
        "restart: DA3 sent {} depth maps ({frames_out} by its status); sink run 0 got {} (frames {:?}..{:?}), \
         run 1 got {} (frames {:?}..{:?}); {lost} lost while the sink was down; dora counted {:?} dropped",
        sent.len(),
        a.len(),
        a.first(),
        a.last(),
        b.len(),
        b.first(),
        b.last(),
        log_figure(&run.log, "dropped_messages"),
    );
    assert_eq!(
        sent.len() as u64,
        frames_out,
        "the dump sees every depth map"
    );
    assert_eq!(a.len() as u64, die_after);
    assert_eq!(
        a,
        sent[..a.len()],
        "before the failure: every depth map, in order"
    );
    // After the restart the graph keeps flowing: later frames, in order, to the end.
    assert!(b.len() >= 3, "too little after the restart: {b:?}");
    assert!(b[0] > a[a.len() - 1], "{a:?} then {b:?}");
    assert!(b.windows(2).all(|w| w[0] < w[1]), "out of order: {b:?}");
    assert_eq!(b.last(), sent.last(), "the last depth map reached the sink");
    // What the sink missed is the stretch while it was down, nothing after.
    let resumed = sent.iter().position(|i| *i == b[0]).unwrap();
    assert_eq!(b, sent[resumed..], "after the restart: every depth map");
}

/// camera -> DA3 (live) -> msg-dump; the camera is killed with SIGKILL
/// mid-stream. The DA3 node finishes what it accepted and exits cleanly, the
/// sink gets all of it, and `dora run` reports the camera's failure.
#[test]
fn source_killed_mid_stream_downstream_finishes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cam = bin_copy("camera", dir.path(), "camera-to-kill").unwrap();
    let max_frames = 900u64;
    let mut flow = Flow::from_yaml(&format!(
        r#"
nodes:
  - id: camera
    path: {}
    outputs: [image]
    env: {{CAMERA_DEVICE: test-pattern, WIDTH: "320", HEIGHT: "240", FPS: "30", MAX_FRAMES: "{max_frames}", CAMERA_NAME: pattern}}
  - id: da3
    path: ../target/debug/dora-da3
    inputs:
      image: {{source: camera/image, queue_size: 1}}
    outputs: [depth, camera, status]
    env: {{MODE: live, PROCESS_RES: "112", STATUS_MS: "500"}}
  - id: dump
    path: ../target/debug/msg-dump
    inputs:
      image: {{source: camera/image, queue_size: 1000, queue_policy: backpressure}}
      depth: {{source: da3/depth, queue_size: 100, queue_policy: backpressure}}
      camera: {{source: da3/camera, queue_size: 100, queue_policy: backpressure}}
      status: {{source: da3/status, queue_size: 100, queue_policy: backpressure}}
"#,
        cam.display()
    ))
    .unwrap();
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    let out = flow.path("dump.jsonl");
    flow.env("dump", "OUT_FILE", out.display()).unwrap();

    let killer = {
        let out = out.clone();
        let pattern = cam.display().to_string();
        std::thread::spawn(move || -> Option<Instant> {
            // Kill once the DA3 node has sent 10 depth maps.
            let start = Instant::now();
            loop {
                let n = std::fs::read_to_string(&out)
                    .map(|t| t.matches("\"input\":\"depth\"").count())
                    .unwrap_or(0);
                if n >= 10 {
                    break;
                }
                if start.elapsed() > Duration::from_secs(90) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let t = Instant::now();
            let pids = sigkill_matching(&pattern).ok()?;
            (!pids.is_empty()).then_some(t)
        })
    };
    let run = flow.run(TIMEOUT).unwrap();
    let ended = Instant::now();
    let killed_at = killer
        .join()
        .unwrap()
        .unwrap_or_else(|| panic!("the camera was not found running:\n{}", run.log));

    // `dora run` fails, naming the killed source; the other nodes end cleanly.
    assert!(!run.success, "dora run succeeded:\n{}", run.log);
    assert!(
        run.log.contains("Node `camera` failed") && run.log.contains("SIGKILL"),
        "{}",
        run.log
    );
    for node in ["da3", "dump"] {
        assert!(
            run.log.contains(&format!("{node} finished successfully")),
            "{node} did not finish cleanly:\n{}",
            run.log
        );
    }
    assert!(!run.log.contains("panicked"), "{}", run.log);

    let recs = read_dump(&out).unwrap();
    let images = on_input(&recs, "image").len() as u64;
    let depth = ids(&on_input(&recs, "depth"));
    let cams = ids(&on_input(&recs, "camera"));
    let last = da3_stats(&recs).pop().expect("a final stats record");
    let g = |k: &str| last[k].as_u64().unwrap();
    let (fin, fout, dropped, by_dora) = (
        g("frames_in"),
        g("frames_out"),
        g("dropped"),
        g("dropped_by_dora"),
    );
    println!(
        "source killed: camera sent {images} of {max_frames} frames before SIGKILL; DA3 in {fin}, out {fout}, \
         dropped {dropped}, dropped by dora {by_dora}; sink got {} depth maps; dora run ended {:.1} s after the kill",
        depth.len(),
        ended.duration_since(killed_at).as_secs_f64()
    );
    assert!(images < max_frames, "the camera was not stopped mid-stream");
    // What arrived was processed: every frame that reached the node is out
    // or counted as dropped, and every result reached the sink, in order.
    assert_eq!(fout + dropped, fin, "{last}");
    assert!(fin + by_dora <= images, "{last}");
    assert_eq!(depth.len() as u64, fout, "{last}");
    assert_eq!(cams, depth, "one camera message per depth map");
    assert!(depth.windows(2).all(|w| w[0] < w[1]), "{depth:?}");
    assert!(*depth.last().unwrap() < images, "{depth:?}");
}

/// The DA3 node with a corrupt checkpoint, a missing one, and a folder
/// without weights: it stops at start with an error naming the file,
/// `dora run` fails, and depth-export downstream writes nothing.
#[test]
fn bad_checkpoint_fails_at_start_naming_the_file_and_writes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let fixture = Path::new(&tiny_model()).to_path_buf();
    let copy = |name: &str| {
        let d = scratch.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture.join(f), d.join(f)).unwrap();
        }
        d
    };
    // Truncated weights (a copy cut short).
    let truncated = copy("truncated");
    let w = truncated.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 3]).unwrap();
    // Garbage where the header should be.
    let garbage = copy("garbage");
    let w = garbage.join("model.safetensors");
    std::fs::write(&w, vec![0xAB_u8; 4096]).unwrap();
    // A folder without weights.
    let no_weights = copy("no-weights");
    std::fs::remove_file(no_weights.join("model.safetensors")).unwrap();
    let missing = scratch.path().join("no-such-model");

    let weights = |d: &Path| d.join("model.safetensors").display().to_string();
    // (case, MODEL, what the error must say)
    let cases = [
        (
            "truncated",
            truncated.display().to_string(),
            weights(&truncated),
        ),
        ("garbage", garbage.display().to_string(), weights(&garbage)),
        (
            "no weights",
            no_weights.display().to_string(),
            format!("{} has no model.safetensors", no_weights.display()),
        ),
        (
            "missing",
            missing.display().to_string(),
            format!("model source \"{}\" is neither", missing.display()),
        ),
    ];
    for (case, model, named) in cases {
        let mut flow = Flow::sample_images_into_tiny_da3("images-da3-export.yml").unwrap();
        flow.env("da3", "MODEL", &model).unwrap();
        let export = flow.path("export");
        flow.env("export", "EXPORT_DIR", export.display()).unwrap();
        let t = Instant::now();
        let run = flow.run(TIMEOUT).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(!run.success, "{case}: dora run succeeded:\n{}", run.log);
        // dora's summary names the DA3 node, and its error names the file.
        let summary = run
            .log
            .split("Dataflow failed:")
            .nth(1)
            .unwrap_or_else(|| panic!("{case}: no failure summary:\n{}", run.log));
        assert!(
            summary.contains("Node `da3` failed"),
            "{case}: the summary does not name da3:\n{summary}"
        );
        let err = summary
            .lines()
            .skip_while(|l| !l.starts_with("Error:"))
            .take_while(|l| !l.starts_with("Location:"))
            .collect::<Vec<_>>()
            .join("\n");
        println!("{case}: dora run failed after {secs:.1} s; the node said:\n{err}");
        assert!(
            err.contains("cannot load MODEL"),
            "{case}: no load error:\n{summary}"
        );
        assert!(
            err.contains(&named),
            "{case}: the error does not say `{named}`:\n{err}"
        );
        assert!(!run.log.contains("panicked"), "{case}:\n{}", run.log);
        let written = files_under(&export);
        assert!(written.is_empty(), "{case}: depth-export wrote {written:?}");
    }
}
