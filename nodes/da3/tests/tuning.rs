//! Tuning as data: the fused CPU kernels and candle's ops compared in one process by
//! switching `da3::tuning` (one test in this binary, so nothing else runs meanwhile).

use std::path::Path;

use candle_core::{DType, Device};
use da3::testing::max_rel_err;
use da3::tuning::{self, Tuning};
use da3::{Da3Model, ForwardOptions};

#[test]
fn kernels_and_candle_ops_agree_in_one_process() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-anyview");
    let model = Da3Model::load(dir.to_str().unwrap(), &Device::Cpu, DType::F32).expect("load");
    let cases = candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu)
        .expect("cases.safetensors");
    let x = &cases["v4.input"];
    let want = &cases["v4.out.depth"];
    let depth = |t: Tuning| {
        tuning::set(t);
        let out = model
            .forward(x, &ForwardOptions::default())
            .expect("forward");
        out.depth
    };
    let d = Tuning::default();
    let fast = depth(d);
    let variants = [
        (
            "candle ops",
            Tuning {
                cpu_kernels: false,
                ..d
            },
        ),
        (
            "no winograd",
            Tuning {
                winograd: false,
                ..d
            },
        ),
        (
            "full im2col",
            Tuning {
                conv_by_rows: false,
                winograd: false,
                ..d
            },
        ),
        (
            "small blocks",
            Tuning {
                q_block: 8,
                k_block: 16,
                linear_sub_rows: 8,
                ..d
            },
        ),
    ];
    let e = max_rel_err(&fast, want);
    println!("kernels: depth rel err {e:.2e} against the reference");
    assert!(e <= 1e-4, "kernels: {e}");
    for (label, t) in variants {
        let other = depth(t);
        let (e, ref_e) = (max_rel_err(&other, &fast), max_rel_err(&other, want));
        println!(
            "{label}: depth rel err {e:.2e} against the kernels, {ref_e:.2e} against the reference"
        );
        assert!(e <= 1e-4 && ref_e <= 1e-4, "{label}: {e} / {ref_e}");
    }
    tuning::set(d);
    assert_eq!(tuning::get(), Tuning::DEFAULT);
}
