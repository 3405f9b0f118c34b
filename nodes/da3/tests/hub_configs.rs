//! The hub's `config.json` files and bare `.safetensors` checkpoints.
//!
//! `tests/fixtures/hub-configs/<name>.json` are written by `scripts/make_hub_configs.py` from the
//! reference package's presets in the hub's format (`{"model_name": ..., "config": {...}}`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use da3::weights::{self, CheckpointFiles};
use da3::Da3Config;

fn hub_configs() -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub-configs");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("hub-configs fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_hub_config_maps_to_its_preset_and_agrees_with_it_field_by_field() {
    let all = hub_configs();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), Da3Config::PUBLISHED.len(), "{names:?}");
    for (name, v) in &all {
        assert!(Da3Config::PUBLISHED.contains(&name.as_str()), "{name}");
        let preset = Da3Config::from_model_name(name).unwrap();
        assert_eq!(v["model_name"], name.as_str());
        assert_eq!(
            &Da3Config::from_config_json(v).unwrap(),
            &preset,
            "{name}: config.json"
        );
        // The nested dict is the reference's own preset: ours must equal it.
        let from_dict = Da3Config::from_net_config(&v["config"])
            .unwrap_or_else(|e| panic!("{name}: parsing its \"config\": {e:#}"));
        assert_eq!(from_dict, preset, "{name}: reference preset vs ours");
    }
    // An unknown name with the nested dict still loads from the dict.
    let mut v = all[0].1.clone();
    v["model_name"] = "da3-small-finetuned".into();
    assert_eq!(
        Da3Config::from_config_json(&v).unwrap(),
        Da3Config::from_model_name(&all[0].0).unwrap()
    );
}

/// A valid safetensors file with `tensors` (f32, zero data) written sparse: the header is real,
/// the data a hole, so a full-size checkpoint costs no disk.
fn sparse_checkpoint(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = BTreeMap::new();
    let mut off = 0usize;
    for (name, shape) in tensors {
        let n = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut meta = serde_json::Map::new();
    meta.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    for (k, v) in header {
        meta.insert(k, v);
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(meta)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    f.set_len((8 + h.len() + off) as u64).unwrap();
}

/// The tensors a hub file of `name` stores (the tied aux LayerNorm once).
fn stored_tensors(name: &str) -> Vec<(String, Vec<usize>)> {
    let cfg = Da3Config::from_model_name(name).unwrap();
    weights::expected_keys(&cfg)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| weights::alias_target(k).is_none())
        .collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("da3-bare-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_bare_safetensors_is_recognised_by_its_tensors_or_named() {
    let dir = temp_dir("detect");
    // Renamed, no config.json beside it (as ComfyUI keeps them).
    let small = dir.join("da3_small_renamed.safetensors");
    sparse_checkpoint(&small, &stored_tensors("da3-small"));
    let files = CheckpointFiles {
        config: None,
        weights: small.clone(),
    };
    assert_eq!(
        weights::resolve_config(&files, None).unwrap(),
        Da3Config::da3_small()
    );
    // A name given wins (and is checked against the tensors when loading).
    assert_eq!(
        weights::resolve_config(&files, Some("DA3-SMALL")).unwrap(),
        Da3Config::da3_small()
    );
    // METRIC and MONO hold the same tensors: the name is needed.
    let metric = dir.join("metric.safetensors");
    sparse_checkpoint(&metric, &stored_tensors("da3metric-large"));
    let files = CheckpointFiles {
        config: None,
        weights: metric,
    };
    let e = format!("{:#}", weights::resolve_config(&files, None).unwrap_err());
    assert!(
        e.contains("da3metric-large") && e.contains("da3mono-large") && e.contains("MODEL_NAME"),
        "{e}"
    );
    assert_eq!(
        weights::resolve_config(&files, Some("da3mono-large")).unwrap(),
        Da3Config::da3mono_large()
    );
    // A file that is no published variant.
    let tiny =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mono/model.safetensors");
    let lone = dir.join("lone.safetensors");
    std::fs::copy(tiny, &lone).unwrap();
    let e = format!(
        "{:#}",
        da3::Da3Model::load(
            lone.to_str().unwrap(),
            &candle_core::Device::Cpu,
            candle_core::DType::F32
        )
        .unwrap_err()
    );
    assert!(
        e.contains("no published DA3 variant") && e.contains("--model-name"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// What the depth is measured in: only the name tells DA3METRIC-LARGE from DA3MONO-LARGE.
#[test]
fn depth_units_follow_the_model_name() {
    use da3::DepthUnits;
    let dir = std::env::temp_dir().join(format!("da3-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, v) in hub_configs() {
        let cfg_path = dir.join(format!("{name}.json"));
        std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
        let files = CheckpointFiles {
            weights: dir.join("model.safetensors"),
            config: Some(cfg_path),
        };
        let cfg = Da3Config::from_config_json(&v).unwrap();
        let want = match name.as_str() {
            "da3metric-large" => DepthUnits::FocalOver300,
            "da3nested-giant-large" => DepthUnits::Metres,
            _ => DepthUnits::Relative,
        };
        assert_eq!(
            weights::resolve_units(&files, None, &cfg).unwrap(),
            want,
            "{name}"
        );
    }
    // A bare file: the name given decides.
    let bare = CheckpointFiles {
        weights: dir.join("model.safetensors"),
        config: None,
    };
    let mono = Da3Config::da3mono_large();
    assert_eq!(
        weights::resolve_units(&bare, Some("DA3METRIC-LARGE"), &mono).unwrap(),
        DepthUnits::FocalOver300
    );
    assert_eq!(
        weights::resolve_units(&bare, None, &mono).unwrap(),
        DepthUnits::Relative
    );
    // The committed reduced metric checkpoint says `"metric": true` in its net_config.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-metric");
    let m = da3::Da3Model::load(
        tiny.to_str().unwrap(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    assert_eq!(m.units(), DepthUnits::FocalOver300);
    let _ = std::fs::remove_dir_all(&dir);
}
