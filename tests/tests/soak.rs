//! Load / soak: `dataflows/camera-da3-record.yml` under the real `dora run`:
//! the camera's 1280x720 test pattern at 30 and at 60 fps into the DA3 node
//! on CPU (the tiny random-weight checkpoint; slower than the camera, so live
//! mode drops) and into a recorder on the same stream.
//!
//! Measured per rate: frames sent, processed and dropped (the DA3 node's
//! `status`), latency, the DA3 node's RSS over time (its `status`) and the
//! recorder's (`/proc`), and the recorder's frames in against the frames in
//! its files. Bounds: RSS growth after warm-up, no frame lost by the
//! recorder, no node crashed.
//!
//! `SOAK_SECS` (default 20) is the run time per rate; the long form:
//! `SOAK_SECS=600 cargo test -p e2e --test soak -- --nocapture --test-threads=1`.
//! `SOAK_RES` (default 252) is the DA3 node's PROCESS_RES, `SOAK_RATES`
//! (default `30,60`) the camera rates.
//! Rotated recording files are counted and deleted while the run goes on
//! (`ROTATE_MB=256`), so the long form needs about 1 GB of disk, not 100.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use da3_msg::arrow::array::{Array, StringArray};
use e2e::{bin_copy, da3_stats, read_dump, rss_mib_of, tiny_model, Flow};
use recorder::recording::RecordingReader;
use serde_json::Value;

/// RSS may not grow more than this between the start and the end of a run
/// (after warm-up).
const RSS_GROWTH_LIMIT_MIB: f64 = 64.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the recorder's files hold (frame ids in file order), counted as
/// the files are closed.
#[derive(Default)]
struct OnDisk {
    files: usize,
    names: Vec<String>,
    frames: u64,
    bytes: u64,
    frame_ids: Vec<u64>,
    truncated: Vec<String>,
}

impl OnDisk {
    fn count(&mut self, path: &Path) {
        let mut r = RecordingReader::open(path).unwrap();
        while let Some(batch) = r.next_batch() {
            let meta = batch
                .column_by_name("metadata")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("a metadata column");
            let stream = batch
                .column_by_name("stream")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("a stream column");
            for i in 0..meta.len() {
                assert_eq!(stream.value(i), "image");
                let m: Value = serde_json::from_str(meta.value(i)).unwrap();
                let id = m["frame_id"]["Integer"].as_u64().expect("frame_id");
                self.frame_ids.push(id);
                self.frames += 1;
            }
        }
        if let Some(t) = r.truncated() {
            self.truncated.push(format!("{}: {t}", path.display()));
        }
        self.files += 1;
        self.names.push(format!(
            "{} from {}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            self.frame_ids.len()
        ));
        self.bytes += std::fs::metadata(path).map_or(0, |m| m.len());
    }
}

fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "arrows"));
    v.sort();
    v
}

fn pid_of(pattern: &str) -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(pattern)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
}

/// The last log line containing `needle`.
fn log_line<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().rev().find(|l| l.contains(needle))
}

/// The number right after the last `prefix` in `line`.
fn number_after(line: &str, prefix: &str) -> Option<f64> {
    let rest = &line[line.rfind(prefix)? + prefix.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .parse()
        .ok()
}

/// The number right before the first `suffix` in `line`.
fn number_before(line: &str, suffix: &str) -> Option<f64> {
    let head = &line[..line.find(suffix)?];
    head.rsplit(' ').next()?.parse().ok()
}

/// Growth of a series' peak: the highest value of its last third minus the
/// highest of its first third (batches and allocator noise come and go;
/// a leak raises the peaks).
fn peak_growth(v: &[f64]) -> Option<(f64, f64)> {
    if v.len() < 3 {
        return None;
    }
    let k = v.len() / 3;
    let max = |s: &[f64]| s.iter().copied().fold(f64::MIN, f64::max);
    Some((max(&v[..k]), max(&v[v.len() - k..])))
}

/// Runs one rate; `false` when dora put the camera's frames on its daemon
/// path (no measurement: see `soak_1280x720...`).
fn soak(fps: u64) -> bool {
    let secs = env_u64("SOAK_SECS", 20);
    let res = env_u64("SOAK_RES", 252);
    let scratch = tempfile::tempdir().unwrap();
    let rec_dir = scratch.path().join("rec");
    std::fs::create_dir_all(&rec_dir).unwrap();
    let rec_bin = bin_copy("recorder", scratch.path(), &format!("recorder-soak-{fps}")).unwrap();

    let mut flow = Flow::load("camera-da3-record.yml").unwrap();
    flow.env("camera", "FPS", fps).unwrap();
    flow.env("camera", "CAMERA_NAME", "soak").unwrap();
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    flow.env("da3", "PROCESS_RES", res).unwrap();
    flow.set(
        "recorder",
        "path",
        serde_yaml::Value::String(rec_bin.display().to_string()),
    )
    .unwrap();
    flow.env("recorder", "OUT", format!("{}/", rec_dir.display()))
        .unwrap();
    flow.env("recorder", "ROTATE_MB", 256).unwrap();
    let dump = flow.path("status.jsonl");
    flow.env("dump", "OUT_FILE", dump.display()).unwrap();

    // Counts (then deletes) each recording file once the recorder has moved
    // on to the next one, and samples the recorder's RSS once a second.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let rec_dir = rec_dir.clone();
        let pattern = rec_bin.display().to_string();
        std::thread::spawn(move || {
            let mut disk = OnDisk::default();
            let mut rss = Vec::new();
            let mut pid = None;
            let mut last_sample = Instant::now() - Duration::from_secs(1);
            while !stop.load(Ordering::Relaxed) {
                let files = recordings(&rec_dir);
                for f in files.iter().take(files.len().saturating_sub(1)) {
                    disk.count(f);
                    std::fs::remove_file(f).unwrap();
                }
                if last_sample.elapsed() >= Duration::from_secs(1) {
                    last_sample = Instant::now();
                    pid = pid.or_else(|| pid_of(&pattern));
                    if let Some(m) = pid.and_then(rss_mib_of) {
                        rss.push(m);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            for f in recordings(&rec_dir) {
                disk.count(&f);
            }
            (disk, rss)
        })
    };
    let stop_after = format!("{secs}s");
    let run = flow
        .run_with(
            &["--stop-after", &stop_after],
            Duration::from_secs(secs + 180),
        )
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (disk, rec_rss) = watcher.join().unwrap();
    // dora 1.1 logs the path of an output's first large sends.
    let daemon_path = run.log.lines().any(|l| {
        l.contains("camera: ") && l.contains("output `image`: ") && l.contains(" -> daemon path")
    });
    if daemon_path {
        println!(
            "soak {fps} fps: dora routed camera/image through its daemon path \
             (startup handshake not done in time): {}",
            log_line(&run.log, "camera: sent ").unwrap_or("")
        );
        return false;
    }

    // No node crashed.
    assert!(run.success, "{fps} fps: dora run failed:\n{}", run.log);
    for node in ["camera", "da3", "recorder", "dump"] {
        assert!(
            run.log.contains(&format!("{node} finished successfully")),
            "{fps} fps: {node} did not finish cleanly:\n{}",
            run.log
        );
    }
    assert!(!run.log.contains("panicked"), "{}", run.log);

    // Camera: what it sent (its final log line).
    let cam = log_line(&run.log, "camera: sent ").expect("the camera's summary");
    let sent = number_after(cam, "camera: sent ").unwrap() as u64;
    let cam_secs = number_after(cam, " frames in ").unwrap_or(0.0);
    let late = number_after(cam, " fps), ").unwrap_or(0.0) as u64;

    // DA3: the status records over time.
    let st = da3_stats(&read_dump(&dump).unwrap());
    let last = st.last().expect("a stats record").clone();
    // The final counts: the node's exit line (its last `status` record, sent
    // after dora's Stop, does not reach the sink: see docs/reliability.md).
    let exit = log_line(&run.log, "dora-da3: ").expect("the DA3 node's summary");
    let fin = number_after(exit, "dora-da3: ").unwrap() as u64;
    let fout = number_after(exit, " frames in, ").unwrap() as u64;
    let dropped = number_after(exit, " out, ").unwrap() as u64;
    let by_dora = last["dropped_by_dora"].as_u64().unwrap();
    let p50 = last["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN);
    let p95 = last["latency_ms"]["p95"].as_f64().unwrap_or(f64::NAN);
    let p95_max = st
        .iter()
        .filter_map(|s| s["latency_ms"]["p95"].as_f64())
        .fold(0.0, f64::max);
    // Warm-up: until two inferences are out (buffers allocated).
    let da3_rss: Vec<f64> = st
        .iter()
        .filter(|s| s["frames_out"].as_u64().unwrap_or(0) >= 2)
        .filter_map(|s| s["rss_mib"].as_f64())
        .collect();
    let series = |v: &[f64]| -> String {
        let every = (v.len() / 12).max(1);
        v.iter()
            .step_by(every)
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };

    // Recorder: its own count, and what its files hold.
    let rec = log_line(&run.log, " messages in (").expect("the recorder's summary");
    let rec_in = number_after(rec, "recorder: ").unwrap() as u64;
    let rec_written = number_before(rec, " written to ").unwrap() as u64;
    let rec_lost = rec_in as i64 - disk.frames as i64;

    println!("soak {fps} fps, 1280x720, {secs} s, DA3 PROCESS_RES {res} on CPU:");
    println!(
        "  camera: sent {sent} frames in {cam_secs:.1} s ({:.1} fps achieved), {late} late",
        sent as f64 / cam_secs.max(1e-9)
    );
    println!(
        "  DA3: in {fin}, processed {fout}, dropped {dropped} (node) + {by_dora} (dora's queue), \
         {} never reached it; latency p50 {p50:.0} ms, p95 {p95:.0} ms (worst p95 {p95_max:.0} ms)",
        sent.saturating_sub(fin + by_dora)
    );
    match peak_growth(&da3_rss) {
        Some((a, b)) => println!(
            "  DA3 RSS after warm-up: peak {a:.1} -> {b:.1} MiB (growth {:+.1} MiB); series {}",
            b - a,
            series(&da3_rss)
        ),
        None => println!("  DA3 RSS: too few samples {da3_rss:?}"),
    }
    match peak_growth(&rec_rss) {
        Some((a, b)) => println!(
            "  recorder RSS: peak {a:.1} -> {b:.1} MiB (growth {:+.1} MiB); series {}",
            b - a,
            series(&rec_rss)
        ),
        None => println!("  recorder RSS: too few samples {rec_rss:?}"),
    }
    println!(
        "  recorder: {rec_in} frames in, {rec_written} written, {} on disk in {} file(s) ({:.0} MB); \
         lost by the recorder {rec_lost}; {} of {sent} sent never reached it",
        disk.frames,
        disk.files,
        disk.bytes as f64 / 1e6,
        sent.saturating_sub(rec_in)
    );

    // The recorder loses nothing it received; its files are whole.
    assert!(disk.truncated.is_empty(), "{:?}", disk.truncated);
    assert_eq!(rec_written, rec_in, "recorder: written vs received");
    assert_eq!(rec_lost, 0, "recorder: frames in vs frames on disk");
    // Every frame once; dora may hand frames over out of order under load
    // (seen here: a run of frames arriving after a later one): reported.
    let mut sorted = disk.frame_ids.clone();
    sorted.sort_unstable();
    let dups = sorted.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "a frame recorded twice");
    let mut late_arrivals = Vec::new();
    let mut max_seen = None;
    for (pos, &id) in disk.frame_ids.iter().enumerate() {
        if max_seen.is_some_and(|m| id < m) {
            late_arrivals.push((pos, id));
        }
        max_seen = max_seen.max(Some(id));
    }
    println!(
        "  recorder: {} frames arrived after a later one {:?}",
        late_arrivals.len(),
        &late_arrivals[..late_arrivals.len().min(8)]
    );
    assert!(rec_in <= sent);
    // Frames dora did not deliver to the recorder: in the stream (gaps
    // between the first and last frame on disk) or at its ends (before the
    // first, after the last: the Stop of `--stop-after` reaches the recorder
    // while the camera still sends).
    let first = sorted.first().copied().unwrap_or(0);
    let last_id = sorted.last().copied().unwrap_or(0);
    let gaps = (last_id + 1 - first) - disk.frames;
    println!(
        "  recorder: frames {first}..={last_id} on disk, {gaps} missing between them, \
         {first} before, {} after",
        sent.saturating_sub(last_id + 1)
    );
    // dora's default (zero-copy) path loses frames of a burst without
    // counting them (docs/messages.md, Delivery; here when a stalled camera
    // catches up; up to 4.4 % of a 20 s run seen): report it, bound it. The
    // same frames miss the DA3 node.
    assert!(
        gaps <= (sent / 10).max(2),
        "dora lost {gaps} of {sent} frames in the stream to the recorder"
    );

    // The DA3 node: slower than the camera, drops and counts, stays bounded.
    // (A starved machine can slow the camera below the model's rate: then it
    // need not drop.)
    assert!(fout >= 2, "{exit}");
    // Nothing queues: every frame in is processed or dropped (and counted).
    assert_eq!(fout + dropped, fin, "{exit}");
    assert!(fin + by_dora <= sent, "{exit} / {last}");
    // Latency bounded: about one inference behind, never a growing queue
    // (which would reach tens of seconds here). The 250 ms floor allows for
    // the tail of a CPU shared with other jobs.
    assert!(
        p95 < 4.0 * p50.max(250.0),
        "latency p50 {p50} ms, p95 {p95} ms"
    );
    assert!(p95_max < 10_000.0, "worst p95 {p95_max} ms");
    if let Some((a, b)) = peak_growth(&da3_rss) {
        assert!(
            b - a < RSS_GROWTH_LIMIT_MIB,
            "DA3 RSS grew {a:.1} -> {b:.1} MiB"
        );
    }
    if let Some((a, b)) = peak_growth(&rec_rss) {
        assert!(
            b - a < RSS_GROWTH_LIMIT_MIB,
            "recorder RSS grew {a:.1} -> {b:.1} MiB"
        );
    }
    true
}

/// One test, the two rates one after the other: run side by side they
/// would share the CPU and measure each other. `SOAK_RATES` (default
/// `30,60`) picks the rates.
#[test]
fn soak_1280x720_at_30_then_60_fps_into_da3_live_and_a_recorder() {
    let rates = std::env::var("SOAK_RATES").unwrap_or_else(|_| "30,60".into());
    for fps in rates.split(',') {
        let fps = fps.trim().parse().expect("SOAK_RATES: comma-separated fps");
        // Under load dora 1.1 may not finish an output's startup handshake in
        // time and then sends it through the daemon (a TCP copy of every
        // 2.7 MB frame: 2-4 fps) for the whole run. Such a run measures
        // nothing: it is run again, once.
        assert!(
            soak(fps) || soak(fps),
            "{fps} fps: dora used its daemon path twice for the camera's frames"
        );
    }
}
