//! The DA3 node's own work per frame, apart from the network: `cargo bench -p dora-da3
//! --bench overhead` (release). One 640x480 rgb8 frame as it arrives on a port is decoded,
//! run through the node's inference path (`engine::infer`: preprocessing to 504x378, the
//! forward, reading and packing the outputs) and turned into every output message (depth,
//! confidence, camera, points, colour-mapped depth), as `lib.rs` does; the forward alone is
//! timed on the same prepared tensor and subtracted, so the overhead is
//! `decode + (infer - forward) + outputs`.
//!
//! Model: `$DA3_BENCH_MODEL`, else the committed tiny any-view fixture (the overhead does
//! not depend on the network, only on the image and output sizes). Iterations:
//! `$DA3_BENCH_ITERS` (default 15); prints a table and one JSON line.

use std::time::Instant;

use da3::preprocess::RgbImage;
use da3::{inference, Da3Model};
use da3_msg::{DecodeLimits, Encoding, FrameInfo, ImageFrame};
use dora_da3::config::Config;
use dora_da3::engine::{self, ViewIn, WorkUnit};
use dora_da3::post;
use eyre::Result;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    da3::tuning::set(da3::tuning::Tuning::from_env()?);
    let model_dir = std::env::var("DA3_BENCH_MODEL").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../da3/tests/fixtures/tiny-anyview"
        )
        .to_string()
    });
    let iters: usize = std::env::var("DA3_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let model = Da3Model::load(
        &model_dir,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )?;
    let cfg = Config::defaults(&model_dir);
    let (w, h) = (640u32, 480u32);
    // A textured frame (a gradient with a pattern), as a camera would send it.
    let rgb: Vec<u8> = (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                [
                    (x % 256) as u8,
                    (y % 256) as u8,
                    ((x * 7 + y * 3) % 251) as u8,
                ]
            })
        })
        .collect();
    let frame = ImageFrame {
        encoding: Encoding::Rgb8,
        width: w,
        height: h,
        data: rgb,
        info: FrameInfo {
            frame_id: Some(1),
            stamp_ns: Some(1),
            camera: Some("cam".into()),
            last: false,
        },
        intrinsics: None,
    };
    let (array, params) = frame.to_message();
    let limits = DecodeLimits::default();
    let mut stages: Vec<(&str, Vec<f64>)> = ["decode", "infer", "forward", "outputs", "prepare"]
        .iter()
        .map(|s| (*s, Vec::new()))
        .collect();
    for it in 0..iters + 2 {
        let t0 = Instant::now();
        let f = ImageFrame::from_message(array.as_ref(), &params)?;
        let (fw, fh, data) = f.to_rgb8(&limits)?;
        let image = RgbImage::new(fw as usize, fh as usize, data)?;
        let t_decode = t0.elapsed().as_secs_f64();

        let unit = WorkUnit {
            seq: 0,
            views: vec![ViewIn {
                input: "image".into(),
                info: f.info.clone(),
                image: image.clone(),
                intrinsics: None,
                extrinsics: None,
                received: Instant::now(),
            }],
            emit: vec![true],
            chain_key: None,
        };
        let t1 = Instant::now();
        let views = engine::infer(&model, &cfg, &unit)?;
        let t_infer = t1.elapsed().as_secs_f64();

        let tp = Instant::now();
        let prepared = inference::prepare(&model, &[image], None, None, &cfg.inference())?;
        let t_prepare = tp.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let out = inference::forward(&model, &prepared)?;
        // Reading the depth back is part of any use of the forward (lazy devices).
        let _ = out.depth.flatten_all()?.to_vec1::<f32>()?;
        let t_forward = t2.elapsed().as_secs_f64();

        let t3 = Instant::now();
        let mut bytes = 0usize;
        for v in &views {
            let mut msgs = vec![
                post::depth_msg(v).to_message(),
                post::depth_vis(v).to_message(),
            ];
            if let Some(c) = post::conf_msg(v) {
                msgs.push(c.to_message());
            }
            if let Some(c) = post::camera_msg(v) {
                msgs.push(c.to_message());
            }
            if let Some(p) = post::points_msg(v, cfg.conf_percentile, cfg.max_points) {
                msgs.push(p.to_message());
            }
            bytes += msgs
                .iter()
                .map(|(a, _)| a.get_array_memory_size())
                .sum::<usize>();
        }
        let t_out = t3.elapsed().as_secs_f64();
        if it >= 2 {
            for (i, t) in [t_decode, t_infer, t_forward, t_out, t_prepare]
                .into_iter()
                .enumerate()
            {
                stages[i].1.push(t * 1e3);
            }
        }
        std::hint::black_box(bytes);
    }
    let m: Vec<f64> = stages.iter().map(|(_, v)| median(v.clone())).collect();
    let overhead = m[0] + (m[1] - m[2]).max(0.0) + m[3];
    println!("DA3 node overhead per frame, 640x480 rgb8 -> 504x378, {iters} runs (median ms):");
    println!("  decode (message -> RGB)            {:7.2}", m[0]);
    println!("  infer (engine::infer, incl. forward) {:5.2}", m[1]);
    println!("  forward alone                      {:7.2}", m[2]);
    println!("  (of infer: preprocessing           {:7.2})", m[4]);
    println!("  outputs (5 messages)               {:7.2}", m[3]);
    println!("  overhead = decode + infer - forward + outputs: {overhead:.2} ms");
    println!(
        "{}",
        serde_json::json!({
            "bench": "dora-da3 overhead", "model": model_dir, "width": w, "height": h,
            "iters": iters, "decode_ms": m[0], "infer_ms": m[1], "forward_ms": m[2],
            "outputs_ms": m[3], "prepare_ms": m[4], "overhead_ms": overhead,
            "threads": candle_core::utils::get_num_threads(),
        })
    );
    Ok(())
}
