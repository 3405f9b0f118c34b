//! A hub id resolves through the standard Hugging Face cache layout without network access
//! (its own test binary: it sets HF_HUB_CACHE for the process).

use std::path::Path;

use candle_core::{DType, Device};
use da3::{Da3Model, ForwardOptions};

#[test]
fn hub_id_loads_from_local_cache() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mono");
    let cache = std::env::temp_dir().join(format!("da3-hf-cache-{}", std::process::id()));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join("models--test-org--DA3-TINY");
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), snap.join(f)).unwrap();
    }
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let m = Da3Model::load("test-org/DA3-TINY", &Device::Cpu, DType::F32).expect("load from cache");
    let cases =
        candle_core::safetensors::load(fixture.join("cases.safetensors"), &Device::Cpu).unwrap();
    let out = m
        .forward(&cases["m1.input"], &ForwardOptions::default())
        .unwrap();
    assert_eq!(out.depth.dims(), cases["m1.out.depth"].dims());
    let e = Da3Model::load("test-org/NOT-CACHED", &Device::Cpu, DType::F32);
    assert!(e.is_err());
    // A pinned commit as Python stores it: snapshots/<commit>/ and no refs/<commit> file.
    let pinned = "fedcba9876543210fedcba9876543210fedcba98";
    let snap2 = repo.join("snapshots").join(pinned);
    std::fs::create_dir_all(&snap2).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), snap2.join(f)).unwrap();
    }
    Da3Model::load(
        &format!("test-org/DA3-TINY@{pinned}"),
        &Device::Cpu,
        DType::F32,
    )
    .expect("load a pinned commit offline");
    let e = Da3Model::load(
        "test-org/DA3-TINY@0000000000000000000000000000000000000000",
        &Device::Cpu,
        DType::F32,
    );
    assert!(e.is_err());
    std::fs::remove_dir_all(&cache).ok();
}
