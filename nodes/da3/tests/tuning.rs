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

    // Mixed precision (bf16 GEMM weights): oneDNN's kernels (where loaded), oneMKL's half
    // GEMMs, the f32 fallback (neither: weights widened per call), oneDNN's attention
    // products and candle's ops all within bf16's rounding of each other and of the f32
    // reference.
    let bf16 = Da3Model::load(dir.to_str().unwrap(), &Device::Cpu, DType::BF16).expect("load");
    let half = |t: Tuning| {
        tuning::set(t);
        bf16.forward(x, &ForwardOptions::default())
            .expect("bf16 forward")
            .depth
    };
    let default_bf16 = half(d);
    for (label, t) in [
        (
            "bf16 without a half kernel (widened)",
            Tuning {
                mkl: false,
                dnnl: false,
                ..d
            },
        ),
        ("bf16 by oneMKL (no oneDNN)", Tuning { dnnl: false, ..d }),
        (
            "f32 attention products",
            Tuning {
                half_attention: false,
                ..d
            },
        ),
        (
            "bf16 by candle ops",
            Tuning {
                cpu_kernels: false,
                ..d
            },
        ),
    ] {
        let other = half(t);
        let (e, ref_e) = (
            max_rel_err(&other, &default_bf16),
            max_rel_err(&other, want),
        );
        println!(
            "{label}: depth rel err {e:.2e} against bf16 as default (oneMKL linked: {}, oneDNN: {:?}), {ref_e:.2e} against the reference",
            da3::model::ops::mkl_linked(),
            da3::model::ops::onednn_version()
        );
        assert!(e <= 2e-2 && ref_e <= 2e-2, "{label}: {e} / {ref_e}");
    }
    let e = max_rel_err(&default_bf16, want);
    println!("bf16 by default: depth rel err {e:.2e} against the reference");
    assert!(e <= 2e-2, "bf16: {e}");
    tuning::set(d);
    assert_eq!(tuning::get(), Tuning::DEFAULT);
}
