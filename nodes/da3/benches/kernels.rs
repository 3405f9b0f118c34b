//! Kernel timings on DA3-SMALL shapes: `cargo bench -p da3 --bench kernels`. Prints the
//! best of several runs of each kernel (attention with strided and contiguous q/k/v, and
//! with bf16 products, the
//! DPT's 3x3 convolutions: every stride-1 shape of one view, the any-view depth head in f32
//! and bf16, the ViT block's linear layers
//! with and without their fused extras (f32 weights in the model's layout, one also in the
//! checkpoint's), one of them with bf16 weights, GELU alone and the matmul peak). The
//! `DA3_*` tuning variables apply (see `da3::tuning::Tuning`; `DA3_DNNL=0` compares oneDNN).

use candle_core::{Device, Tensor};
use da3::model::cpu::profile::matmul_peak_gflops;
use da3::model::cpu::{
    attention, conv2d, gelu_inplace, layer_norm, linear, linear_weight_layout, norm_rope,
    resize_bilinear_ac, upsampled_heads, ConvExt, ConvHead, Half, HalfConv, LinearExt, Norm,
};

fn best_ms(mut f: impl FnMut()) -> f64 {
    f();
    (0..7)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    da3::tuning::set(da3::tuning::Tuning::from_env().expect("DA3_* tuning variables"));
    let dev = Device::Cpu;
    let qkv = Tensor::randn(0f32, 1.0, (1, 3892, 3, 6, 64), &dev)
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap();
    // strided views of the qkv output, as in the model, and contiguous copies
    let part = |i: usize| qkv.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
    let (q, k, v) = (part(0), part(1), part(2));
    let ms = best_ms(|| {
        attention(&q, &k, &v, 0.125, None).unwrap();
    });
    let (qc, kc, vc) = (
        qkv.get(0).unwrap(),
        qkv.get(1).unwrap(),
        qkv.get(2).unwrap(),
    );
    let ms_c = best_ms(|| {
        attention(&qc, &kc, &vc, 0.125, None).unwrap();
    });
    let ms_v = best_ms(|| {
        attention(&qc, &kc, &v, 0.125, None).unwrap();
    });
    let ms_k = best_ms(|| {
        attention(&qc, &k, &vc, 0.125, None).unwrap();
    });
    let ms_q = best_ms(|| {
        attention(&q, &kc, &vc, 0.125, None).unwrap();
    });
    let gf = 4.0 * 6.0 * 3892f64 * 3892.0 * 64.0 / 1e9;
    println!(
        "attention global 4v: {ms:.1} ms, {:.1} GFLOP/s (contiguous q/k/v: {ms_c:.1} ms; only v strided {ms_v:.1}, only k {ms_k:.1}, only q {ms_q:.1})",
        gf / ms * 1e3
    );
    // Mixed precision: the two products with bf16 inputs (by oneDNN where it runs bf16)
    let ms_h = best_ms(|| {
        attention(&q, &k, &v, 0.125, Some(Half::Bf16)).unwrap();
    });
    println!(
        "attention global 4v, bf16 products: {ms_h:.1} ms, {:.1} GFLOP/s",
        gf / ms_h * 1e3
    );
    // QK-norm + RoPE of one view's q (a strided view of the qkv output), and the
    // LayerNorm of one view's tokens (rows 768 floats apart, as the ViT's cat-token output)
    let qkv1 = Tensor::randn(0f32, 1.0, (1, 973, 3, 6, 64), &dev)
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap();
    let q1 = qkv1.narrow(0, 0, 1).unwrap().squeeze(0).unwrap();
    let (nw, nb) = (
        Tensor::ones(64, candle_core::DType::F32, &dev).unwrap(),
        Tensor::zeros(64, candle_core::DType::F32, &dev).unwrap(),
    );
    let (cos, sin) = (
        Tensor::randn(0f32, 1.0, (973, 64), &dev).unwrap(),
        Tensor::randn(0f32, 1.0, (973, 64), &dev).unwrap(),
    );
    let ms = best_ms(|| {
        norm_rope(&q1, Some(Norm::new(&nw, &nb, 1e-6)), Some((&cos, &sin))).unwrap();
    });
    let tok = Tensor::randn(0f32, 1.0, (1, 973, 768), &dev)
        .unwrap()
        .narrow(2, 384, 384)
        .unwrap();
    let (lw, lb) = (
        Tensor::ones(384, candle_core::DType::F32, &dev).unwrap(),
        Tensor::zeros(384, candle_core::DType::F32, &dev).unwrap(),
    );
    let ms_ln = best_ms(|| {
        layer_norm(&tok, Norm::new(&lw, &lb, 1e-6)).unwrap();
    });
    println!(
        "norm+rope 1v q (1x6x973x64): {ms:.3} ms; layer-norm 1v (973x384, rows 768 apart): {ms_ln:.3} ms"
    );
    // the DPT's 3x3 convolutions (DA3-SMALL at 504x378): the two most expensive at 4 views,
    // then every stride-1 shape of one view, large maps to small
    for (n, ci, co, h, w) in [
        (4usize, 64usize, 64usize, 108usize, 144usize),
        (4, 32, 32, 378, 504),
        (1, 32, 32, 378, 504),
        (1, 64, 32, 216, 288),
        (1, 64, 64, 108, 144),
        (1, 48, 64, 108, 144),
        (1, 64, 64, 54, 72),
        (1, 96, 64, 54, 72),
        (1, 64, 64, 27, 36),
        (1, 192, 64, 27, 36),
        (1, 64, 64, 14, 18),
        (1, 384, 64, 14, 18),
    ] {
        let x = Tensor::randn(0f32, 1.0, (n, ci, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.1, (co, ci, 3, 3), &dev).unwrap();
        let ms = best_ms(|| {
            conv2d(&x, &wt, None, 1, 1, ConvExt::default()).unwrap();
        });
        let gf = 2.0 * (n * h * w * ci * co * 9) as f64 / 1e9;
        println!(
            "conv3x3 {ci}->{co} {h}x{w} x{n}: {ms:.2} ms, {:.1} GFLOP/s",
            gf / ms * 1e3
        );
    }
    // the any-view depth head (DA3-SMALL, one view): 216x288 upsampled to 378x504 + UV
    // embedding, 3x3 32->32 + ReLU, 1x1 32->2; f32 (resize, then the conv with its 1x1
    // fused) and bf16 (oneDNN's channels-last convolution, band by band)
    let x = Tensor::randn(0f32, 1.0, (1, 32, 216, 288), &dev).unwrap();
    let (w0, b0) = (
        Tensor::randn(0f32, 0.1, (32, 32, 3, 3), &dev).unwrap(),
        Tensor::randn(0f32, 0.1, 32, &dev).unwrap(),
    );
    let (w1, b1) = (
        Tensor::randn(0f32, 0.1, (2, 32, 1, 1), &dev).unwrap(),
        Tensor::randn(0f32, 0.1, 2, &dev).unwrap(),
    );
    let (ex, ey) = (vec![0.01f32; 16 * 504], vec![0.02f32; 16 * 378]);
    let f32_ms = best_ms(|| {
        let up = resize_bilinear_ac(&x, 378, 504, Some((&ex, &ey))).unwrap();
        let ext = ConvExt {
            then_1x1: Some((&w1, Some(&b1))),
            ..Default::default()
        };
        conv2d(&up, &w0, Some(&b0), 1, 1, ext).unwrap();
    });
    let half = HalfConv::new(Half::Bf16);
    let head = ConvHead {
        conv: &w0,
        bias: &b0,
        last: &w1,
        last_bias: Some(&b1),
        half: half.as_ref(),
    };
    let mut ran = true;
    let bf16_ms = best_ms(|| {
        ran = upsampled_heads(&x, (378, 504), Some((&ex, &ey)), &[head])
            .unwrap()
            .is_some();
    });
    let bf16 = if ran {
        format!("{bf16_ms:.2} ms")
    } else {
        "declined (no oneDNN bf16 convolution here)".into()
    };
    println!("depth head 1v (upsample + 3x3 + 1x1): f32 {f32_ms:.2} ms, bf16 {bf16}");
    let x = Tensor::randn(0f32, 1.0, (4, 973, 384), &dev).unwrap();
    // f32 weights in the layout the model keeps them in (a view of the transpose), and as
    // the checkpoint stores them
    let w_rows = Tensor::randn(0f32, 0.1, (1536, 384), &dev).unwrap();
    let w = linear_weight_layout(&w_rows).unwrap();
    let ext = LinearExt {
        gelu: true,
        ..Default::default()
    };
    let ms = best_ms(|| {
        linear(&x, &w, None, ext).unwrap();
    });
    let gf = 2.0 * 4.0 * 973.0 * 384.0 * 1536.0 / 1e9;
    let ms_rows = best_ms(|| {
        linear(&x, &w_rows, None, ext).unwrap();
    });
    println!(
        "fc1+gelu 4v: {ms:.1} ms, {:.1} GFLOP/s (checkpoint's (out, in) rows: {ms_rows:.1} ms)",
        gf / ms * 1e3
    );
    // mixed precision: the same layer with bf16 weights (oneDNN, else oneMKL)
    let wb = w_rows.to_dtype(candle_core::DType::BF16).unwrap();
    let ms = best_ms(|| {
        linear(&x, &wb, None, ext).unwrap();
    });
    println!(
        "fc1+gelu 4v, bf16 weights: {ms:.1} ms, {:.1} GFLOP/s",
        gf / ms * 1e3
    );
    let ms = best_ms(|| {
        linear(&x, &w, None, LinearExt::default()).unwrap();
    });
    println!("fc1 (no gelu) 4v: {ms:.1} ms, {:.1} GFLOP/s", gf / ms * 1e3);
    // the block's other linears, with and without their fused extras
    let nw = Tensor::randn(0f32, 1.0, 384, &dev).unwrap();
    let nb = Tensor::randn(0f32, 1.0, 384, &dev).unwrap();
    let wq = linear_weight_layout(&Tensor::randn(0f32, 0.1, (1152, 384), &dev).unwrap()).unwrap();
    let bq = Tensor::randn(0f32, 0.1, 1152, &dev).unwrap();
    let gf = 2.0 * 4.0 * 973.0 * 384.0 * 1152.0 / 1e9;
    let plain = best_ms(|| {
        linear(&x, &wq, Some(&bq), LinearExt::default()).unwrap();
    });
    let ext = LinearExt {
        prenorm: Some(Norm::new(&nw, &nb, 1e-6)),
        ..Default::default()
    };
    let normed = best_ms(|| {
        linear(&x, &wq, Some(&bq), ext).unwrap();
    });
    println!(
        "qkv 4v: {plain:.1} ms ({:.1} GFLOP/s), with pre-norm {normed:.1} ms ({:.1})",
        gf / plain * 1e3,
        gf / normed * 1e3
    );
    let h = Tensor::randn(0f32, 1.0, (4, 973, 1536), &dev).unwrap();
    let w2 = linear_weight_layout(&Tensor::randn(0f32, 0.1, (384, 1536), &dev).unwrap()).unwrap();
    let gamma = Tensor::randn(0f32, 0.1, 384, &dev).unwrap();
    let plain = best_ms(|| {
        linear(&h, &w2, Some(&nb), LinearExt::default()).unwrap();
    });
    let ext = LinearExt {
        residual: Some((&x, &gamma)),
        ..Default::default()
    };
    let resid = best_ms(|| {
        linear(&h, &w2, Some(&nb), ext).unwrap();
    });
    println!(
        "fc2 4v: {plain:.1} ms ({:.1} GFLOP/s), with residual {resid:.1} ms ({:.1})",
        gf * 4.0 / 3.0 / plain * 1e3,
        gf * 4.0 / 3.0 / resid * 1e3
    );
    let mut v = vec![0.5f32; 4 * 973 * 1536];
    let ms = best_ms(|| gelu_inplace(&mut v));
    println!("gelu alone, 1 thread, {} values: {ms:.1} ms", v.len());
    println!("matmul peak {:.1} GFLOP/s", matmul_peak_gflops());
}
