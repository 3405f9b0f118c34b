//! Timing of a DA3-SMALL-sized network (random weights) on CPU, and of candle's matmul:
//! `cargo bench -p da3 --bench forward`. The `DA3_*` tuning variables apply (see
//! `da3::tuning::Tuning`).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use da3::model::dual_dpt::DualDpt;
use da3::model::net::Da3Net;
use da3::model::vit::DinoVisionTransformer;
use da3::{ForwardOptions, NetConfig, RefViewStrategy};

fn main() {
    da3::tuning::set(da3::tuning::Tuning::from_env().expect("DA3_* tuning variables"));
    da3_small_cpu_timing();
    matmul_gflops();
}

fn da3_small_cpu_timing() {
    let dev = Device::Cpu;
    let cfg = NetConfig::da3_small();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let net = Da3Net::new(&cfg, vb.pp("model")).unwrap();
    let bb = DinoVisionTransformer::new(&cfg.vit, vb.pp("model.backbone.pretrained")).unwrap();
    let head = DualDpt::new(&cfg.head, vb.pp("model.head")).unwrap();
    for s in [1usize, 2] {
        let (h, w) = (378, 504);
        let x = Tensor::randn(0f32, 1.0, (1, s, 3, h, w), &dev).unwrap();
        let t0 = std::time::Instant::now();
        let (feats, _) = bb
            .forward(&x, None, RefViewStrategy::default(), &[], true)
            .unwrap();
        let t1 = std::time::Instant::now();
        let f: Vec<Tensor> = feats
            .iter()
            .map(|l| l.feats.reshape((s, (h / 14) * (w / 14), 768)).unwrap())
            .collect();
        head.forward(&f, h, w, false).unwrap();
        let t2 = std::time::Instant::now();
        head.forward(&f, h, w, true).unwrap();
        let t3 = std::time::Instant::now();
        let out = net.forward(&x, &ForwardOptions::default()).unwrap();
        let t4 = std::time::Instant::now();
        println!(
            "da3-small {s} view(s) {h}x{w}: backbone {:.2} s, head {:.2} s (with ray branch {:.2} s), full forward {:.2} s, {:?}",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64(),
            out.depth.dims()
        );
    }
}

fn matmul_gflops() {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (1296, 384), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (384, 1536), &dev).unwrap();
    a.matmul(&b).unwrap();
    let n = 20;
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        a.matmul(&b).unwrap();
    }
    let dt = t0.elapsed().as_secs_f64() / n as f64;
    println!(
        "matmul 1296x384x1536: {:.1} GFLOP/s",
        2.0 * 1296.0 * 384.0 * 1536.0 / dt / 1e9
    );
}
