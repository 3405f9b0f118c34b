//! A bad env value stops the node at start with one clear line, before the
//! model loads (MODEL points nowhere: reaching the loader would say so).

use std::process::Command;

fn run_with(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dora-da3"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MODEL", "/nonexistent/checkpoint")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run dora-da3");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

#[test]
fn invalid_values_stop_before_the_model_loads() {
    let cases = [
        ("PRECISION", "int8"),
        ("MODEL_NAME", "da3-tiny"),
        ("DEVICE", "tpu:0"),
        ("MODE", "stream"),
        ("PROCESS_RES", "abc"),
        ("PROCESS_RES", "5"),
        ("PROCESS_RES_METHOD", "squash"),
        ("REF_VIEW_STRATEGY", "best"),
        ("WINDOW", "0"),
        ("STRIDE", "9"),
        ("CONF_PERCENTILE", "150"),
        ("MAX_POINTS", "0"),
        ("OUTPUT_SIZE", "huge"),
        ("USE_RAY_POSE", "maybe"),
        ("SYNC_MS", "-1"),
        ("MAX_PIXELS", "0"),
        ("TRACK_KEYFRAMES", "0"),
        ("TRACK_KF_BASELINE", "-1"),
        ("TRACK_KF_ROTATION_DEG", "200"),
        ("TRACK_KF_INTERVAL_MS", "0"),
        ("TRACK_MAX_RESIDUAL", "0"),
        ("TRACK_MAX_ROTATION_DEG", "0"),
        ("TRACK_MAX_SCALE_CHANGE", "nan"),
        ("TRACK_OVERLAP_BASELINE", "0"),
        ("TRACK_OVERLAP_ROTATION_DEG", "181"),
    ];
    for (k, v) in cases {
        let (ok, text) = run_with(&[(k, v)]);
        assert!(!ok, "{k}={v} must fail");
        assert!(text.contains(&format!("invalid {k}")), "{k}={v}: {text}");
        assert!(
            !text.contains("/nonexistent/checkpoint"),
            "{k}={v} reached the model loader: {text}"
        );
    }
}

#[test]
fn a_missing_model_is_a_clear_error_naming_it() {
    let (ok, text) = run_with(&[("DEVICE", "cpu")]);
    assert!(!ok);
    assert!(text.contains("/nonexistent/checkpoint"), "{text}");
}
