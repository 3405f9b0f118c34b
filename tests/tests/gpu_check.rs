//! `scripts/gpu-check.sh --dry-run`: the GPU check's harness run on the CPU with the tiny
//! fixtures and without torch (issue #16), so that the script a lent GPU machine runs cannot
//! rot between the rare sessions that have one. Checks the JSON it writes: every phase ran,
//! our parity against the fixtures' reference outputs holds, the lockstep timings and the
//! replica run came back.

use std::process::Command;

use e2e::{bin, repo_root};

#[test]
fn gpu_check_dry_run_writes_the_report() {
    let root = repo_root();
    let out = tempfile::tempdir().expect("tempdir");
    let da3 = bin("da3").expect("the da3 CLI");
    let status = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .arg("--dry-run")
        .arg(out.path())
        .env("DA3_BIN", &da3)
        .current_dir(&root)
        .status()
        .expect("run scripts/gpu-check.sh");
    let report =
        std::fs::read_to_string(out.path().join("gpu-check.json")).expect("gpu-check.json written");
    let log = std::fs::read_to_string(out.path().join("gpu-check.log")).unwrap_or_default();
    assert!(
        status.success(),
        "gpu-check --dry-run failed ({status}):\n{log}"
    );
    let r: serde_json::Value = serde_json::from_str(&report).expect("valid JSON");
    assert_eq!(r["mode"], "dry-run");
    assert_eq!(r["ok"], true, "{report}");
    assert!(
        r["errors"].as_array().is_some_and(|e| e.is_empty()),
        "{report}"
    );
    for phase in ["env", "parity", "speed", "replicas", "memory"] {
        assert!(
            r["phases_s"][phase].is_number(),
            "phase {phase} missing: {report}"
        );
    }
    let parity = r["parity"].as_array().expect("parity list");
    assert_eq!(parity.len(), 3, "three fixture cases: {report}");
    for p in parity {
        let worst = p["worst"].as_f64().expect("worst error");
        assert!(worst < 1e-4, "{p}");
        assert!(p["max_rel_err"]["depth"].is_number(), "{p}");
    }
    // The pose-conditioned case compares the cameras too.
    assert!(parity
        .iter()
        .any(|p| p["max_rel_err"]["extrinsics"].is_number()));
    let speed = r["speed"].as_array().expect("speed list");
    assert_eq!(speed.len(), 2, "{report}");
    for s in speed {
        assert!(
            s["ours"]["median_ms"].as_f64().is_some_and(|v| v > 0.0),
            "{s}"
        );
    }
    let replicas = r["replicas"].as_array().expect("replica list");
    assert_eq!(
        replicas
            .iter()
            .map(|x| x["replicas"].as_u64())
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    assert!(replicas
        .iter()
        .all(|x| x["views_per_s"].as_f64().is_some_and(|v| v > 0.0)));
    assert_eq!(r["max_views"]["ours"], 4, "{report}");
}
