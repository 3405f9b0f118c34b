//! The DA3 node against the reference API's own `inference()`, under the real `dora run`, fed
//! by a plain Python dora node (`tests/py/da3_feeder.py`: dora-rs 1.1.0 + pyarrow, as a robot
//! integrator writes one) and read by another (`tests/py/da3_collector.py`).
//!
//! Fixtures: `tests/fixtures/node/<case>.npz`, made by `scripts/make_node_fixtures.py` with the
//! reference package (tiny seeded checkpoints of nodes/da3/tests/fixtures). Every output within
//! 1e-4 relative of the reference (`tests/py/fidelity_compare.py` prints the figures).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e::{repo_root, Flow};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);
const TOL: f64 = 1e-4;

fn python() -> PathBuf {
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn py(name: &str) -> String {
    repo_root()
        .join("tests/py")
        .join(name)
        .display()
        .to_string()
}

fn fixture(case: &str) -> PathBuf {
    repo_root().join(format!("tests/fixtures/node/{case}.npz"))
}

fn checkpoint(name: &str) -> String {
    repo_root()
        .join("nodes/da3/tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Runs feeder -> dora-da3 -> collector for one case; returns the comparison report.
fn run_case(
    case: &str,
    model: &str,
    cameras: &str,
    image_inputs: &[&str],
    node_env: &[(&str, &str)],
    views: &[&str],
) -> Value {
    let da3_inputs: String = image_inputs
        .iter()
        .map(|i| {
            format!("      {i}:\n        source: feeder/{i}\n        queue_policy: backpressure\n")
        })
        .collect();
    let feeder_outputs: String = image_inputs
        .iter()
        .map(|i| format!("      - {i}\n"))
        .collect();
    let camera_info = if matches!(cameras, "rig" | "moving") {
        "      camera_info:\n        source: feeder/camera_info\n        queue_policy: backpressure\n"
    } else {
        ""
    };
    let yaml = format!(
        r#"
nodes:
  - id: feeder
    path: {python}
    args: {feeder}
    outputs:
{feeder_outputs}      - camera_info
    env:
      FIXTURE: {fixture}
      CAMERAS: {cameras}
  - id: da3
    path: ../target/debug/dora-da3
    inputs:
{da3_inputs}{camera_info}    outputs: [depth, confidence, camera, sky, status]
    env:
      MODEL: {model}
      DEVICE: cpu
      PRECISION: f32
      PROCESS_RES: "70"
  - id: collector
    path: {python}
    args: {collector}
    inputs:
      depth: {{source: da3/depth, queue_policy: backpressure}}
      confidence: {{source: da3/confidence, queue_policy: backpressure}}
      camera: {{source: da3/camera, queue_policy: backpressure}}
      sky: {{source: da3/sky, queue_policy: backpressure}}
      status: {{source: da3/status, queue_policy: backpressure}}
    env:
      OUT: collected.npz
"#,
        python = python().display(),
        feeder = py("da3_feeder.py"),
        collector = py("da3_collector.py"),
        fixture = fixture(case).display(),
    );
    let mut flow = Flow::from_yaml(&yaml).unwrap();
    for (k, v) in node_env {
        flow.env("da3", k, v).unwrap();
    }
    let out = flow.run(TIMEOUT).unwrap();
    assert!(out.success, "{case}: dora run failed:\n{}", out.log);
    let collected = flow.path("collected.npz");
    assert!(
        collected.exists(),
        "{case}: no collector output:\n{}",
        out.log
    );
    let cmp = Command::new(python())
        .arg(py("fidelity_compare.py"))
        .arg(fixture(case))
        .arg(&collected)
        .args(views)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{case}: compare failed: {}",
        String::from_utf8_lossy(&cmp.stderr)
    );
    let report: Value = serde_json::from_slice(&cmp.stdout).unwrap();
    println!("{case}: {report}");
    report
}

/// Every compared output within [`TOL`], nothing missing, sky agreeing off the threshold.
fn check(case: &str, r: &Value, outputs: &[&str], metric: bool) {
    assert_eq!(r["missing"], serde_json::json!([]), "{case}: {r}");
    for o in outputs {
        let e = r[o]
            .as_f64()
            .unwrap_or_else(|| panic!("{case}: no {o}: {r}"));
        assert!(e <= TOL, "{case}: {o} max rel {e:.2e} > {TOL:e}: {r}");
    }
    let flags = r["is_metric"].as_array().unwrap();
    assert!(
        flags.iter().all(|f| f.as_bool() == Some(metric)),
        "{case}: is_metric should be {metric}: {r}"
    );
    assert_eq!(r["sky_disagree_off_threshold"], 0, "{case}: {r}");
}

#[test]
fn rig_of_four_calibrated_cameras_equals_the_reference() {
    let inputs = ["cam0", "cam1", "cam2", "cam3"];
    let r = run_case(
        "rig",
        &checkpoint("tiny-anyview"),
        "rig",
        &inputs,
        &[("MODE", "rig"), ("SYNC_MS", "2000")],
        &inputs,
    );
    // Depth in the given cameras' units: never claimed metric.
    check(
        "rig",
        &r,
        &["depth", "confidence", "extrinsics", "intrinsics"],
        false,
    );
}

#[test]
fn window_with_a_pose_per_frame_equals_the_reference() {
    let r = run_case(
        "window",
        &checkpoint("tiny-anyview"),
        "moving",
        &["image"],
        &[("MODE", "window"), ("WINDOW", "3"), ("STRIDE", "3")],
        &["cam0", "cam0", "cam0"],
    );
    check(
        "window",
        &r,
        &["depth", "confidence", "extrinsics", "intrinsics"],
        false,
    );
}

#[test]
fn metric_model_with_a_known_focal_sends_metres() {
    let r = run_case(
        "metric",
        &checkpoint("tiny-metric"),
        "focal",
        &["image"],
        &[("MODE", "batch")],
        &["cam0"],
    );
    check("metric", &r, &["depth"], true);
    assert!(r["sky_pixels"].as_u64().unwrap() > 0, "no sky in the case");
    assert_eq!(r["sky_mask_vs_depth_zeros"], 0, "{r}");
}

#[test]
fn mono_model_marks_the_sky() {
    let r = run_case(
        "mono",
        &checkpoint("tiny-mono"),
        "none",
        &["image"],
        &[("MODE", "batch")],
        &["cam0"],
    );
    check("mono", &r, &["depth"], false);
    assert!(r["sky_pixels"].as_u64().unwrap() > 0, "no sky in the case");
    assert_eq!(r["sky_mask_vs_depth_zeros"], 0, "{r}");
}

#[test]
fn nested_model_sends_metres_and_marks_the_sky() {
    let r = run_case(
        "nested",
        &checkpoint("tiny-nested"),
        "none",
        &["image"],
        &[("MODE", "window"), ("WINDOW", "2"), ("STRIDE", "2")],
        &["cam0", "cam0"],
    );
    check(
        "nested",
        &r,
        &["depth", "confidence", "extrinsics", "intrinsics"],
        true,
    );
    assert!(r["sky_pixels"].as_u64().unwrap() > 0, "no sky in the case");
}
