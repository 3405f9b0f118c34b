//! Weight loading: strictness (missing / extra / mis-shaped keys are errors naming the file
//! and the key), tied-alias resolution, and reduced-precision checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use da3::testing::max_rel_err;
use da3::{Da3Model, ForwardOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copy of a fixture checkpoint with its tensors transformed by `edit`.
fn edited_copy(tag: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let src = fixture("tiny-anyview");
    let dir = std::env::temp_dir().join(format!("da3-loading-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match Da3Model::load(dir.to_str().unwrap(), &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

const KEY: &str = "model.backbone.pretrained.blocks.3.attn.proj.weight";

#[test]
fn missing_key_is_an_error() {
    let dir = edited_copy("missing", |t| {
        t.remove(KEY).unwrap();
    });
    let e = load_err(&dir);
    assert!(
        e.contains(KEY) && e.contains("model.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn extra_key_is_an_error() {
    let dir = edited_copy("extra", |t| {
        t.insert(
            "model.backbone.pretrained.mask_token".into(),
            Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    assert!(
        e.contains("model.backbone.pretrained.mask_token") && e.contains("unexpected"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_an_error() {
    let dir = edited_copy("shape", |t| {
        let w = t[KEY].clone();
        let n = w.elem_count();
        t.insert(KEY.into(), w.reshape((n,)).unwrap());
    });
    let e = load_err(&dir);
    assert!(e.contains(KEY) && e.contains("shape"), "{e}");
}

#[test]
fn stored_aliases_are_accepted_too() {
    // A state dict written with the tied LayerNorm duplicated under every name loads as well.
    let dir = edited_copy("aliases", |t| {
        for lvl in 1..4 {
            for p in ["weight", "bias"] {
                let src = t[&format!("model.head.scratch.output_conv2_aux.0.2.{p}")].clone();
                t.insert(
                    format!("model.head.scratch.output_conv2_aux.{lvl}.2.{p}"),
                    src,
                );
            }
        }
    });
    Da3Model::load(dir.to_str().unwrap(), &Device::Cpu, DType::F32)
        .expect("aliases stored explicitly");
}

#[test]
fn half_precision_checkpoints_load_and_run() {
    let cases = candle_core::safetensors::load(
        fixture("tiny-anyview").join("cases.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let x = &cases["v2.input"];
    let want = &cases["v2.out.depth"];
    for dt in [DType::F16, DType::BF16] {
        let dir = edited_copy(&format!("{dt:?}"), |t| {
            for v in t.values_mut() {
                *v = v.to_dtype(dt).unwrap();
            }
        });
        let m = Da3Model::load(dir.to_str().unwrap(), &Device::Cpu, DType::F32)
            .expect("load half checkpoint");
        let out = m.forward(x, &ForwardOptions::default()).unwrap();
        let e = max_rel_err(&out.depth, want);
        println!("{dt:?} checkpoint, f32 run: depth rel err {e:.2e}");
        assert!(e < 5e-2, "{dt:?}: {e}");
    }
}

#[test]
fn unknown_source_is_an_error() {
    let e = match Da3Model::load("./no/such/dir", &Device::Cpu, DType::F32) {
        Ok(_) => panic!("should fail"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("no/such/dir"), "{e}");
}

#[test]
fn truncated_or_missing_files_are_errors_naming_the_file() {
    let src = fixture("tiny-mono");
    let dir = std::env::temp_dir().join(format!("da3-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
    // A header cut short.
    std::fs::write(dir.join("model.safetensors"), &bytes[..20]).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
    // No weights at all.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
    // No config.json beside the weights.
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
