//! Checkpoint resolution and strict weight loading.
//!
//! Sources: a hub id (`depth-anything/DA3-SMALL`, optionally `@revision`), a local directory
//! (`config.json` + `model.safetensors`) or a `.safetensors` file (with `config.json` beside
//! it). Every key the network asks for must be in the file with the right shape, and every key
//! in the file must be used; the tied DualDPT aux LayerNorm
//! (`head.scratch.output_conv2_aux.{1,2,3}.2.*`, stored once as `...aux.0.2.*`) is resolved.
//! Tensors are converted to the run dtype whatever their stored dtype (f32/f16/bf16).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use eyre::{bail, eyre, Context, Result};

use crate::model::config::Da3Config;

/// Files of a checkpoint on disk.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub config: Option<PathBuf>,
    pub weights: PathBuf,
}

/// Resolve a model source to local files (downloading hub files into the standard HF cache).
pub fn resolve(source: &str) -> Result<CheckpointFiles> {
    let p = Path::new(source);
    if p.is_dir() {
        let weights = p.join("model.safetensors");
        if !weights.is_file() {
            bail!("{} has no model.safetensors", p.display());
        }
        let cfg = p.join("config.json");
        return Ok(CheckpointFiles {
            config: cfg.is_file().then_some(cfg),
            weights,
        });
    }
    if p.is_file() {
        let cfg = p
            .parent()
            .map(|d| d.join("config.json"))
            .filter(|c| c.is_file());
        return Ok(CheckpointFiles {
            config: cfg,
            weights: p.to_path_buf(),
        });
    }
    if source.contains('/') && !source.starts_with('.') && !source.starts_with('/') {
        let (repo, rev) = match source.split_once('@') {
            Some((r, v)) => (r, Some(v)),
            None => (source, None),
        };
        let hub = crate::hub::HubEnv::from_env()?;
        let config = hub.file(repo, rev, "config.json")?;
        let weights = hub.file(repo, rev, "model.safetensors")?;
        return Ok(CheckpointFiles {
            config: Some(config),
            weights,
        });
    }
    bail!("model source {source:?} is neither a directory, a file nor a hub id (owner/name)")
}

/// Read the `config.json` of a checkpoint.
pub fn read_config(files: &CheckpointFiles) -> Result<Da3Config> {
    resolve_config(files, None)
}

/// The configuration of a checkpoint: the published variant `model_name` when given (for a bare
/// `.safetensors` without `config.json`, as ComfyUI stores them; it wins over a `config.json`),
/// else its `config.json`, else the one published variant whose tensors the file holds
/// (DA3METRIC-LARGE and DA3MONO-LARGE hold the same tensors: those need the name).
pub fn resolve_config(files: &CheckpointFiles, model_name: Option<&str>) -> Result<Da3Config> {
    if let Some(name) = model_name.filter(|n| !n.is_empty()) {
        return Da3Config::from_model_name(name);
    }
    let Some(path) = files.config.as_ref() else {
        return detect_variant(&files.weights);
    };
    let text =
        std::fs::read_to_string(path).wrap_err_with(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).wrap_err_with(|| format!("parsing {}", path.display()))?;
    Da3Config::from_config_json(&v).wrap_err_with(|| format!("model config in {}", path.display()))
}

/// What a checkpoint's depth is measured in: metres for nested models; focal · depth / 300 for
/// DA3METRIC-LARGE (named by `model_name`, or by the `model_name` of its `config.json`; a custom
/// test config says `"metric": true` in its `net_config`); relative otherwise. DA3METRIC-LARGE
/// and DA3MONO-LARGE hold the same tensors and the same resolved config: only the name tells.
pub fn resolve_units(
    files: &CheckpointFiles,
    model_name: Option<&str>,
    cfg: &Da3Config,
) -> Result<crate::DepthUnits> {
    use crate::DepthUnits;
    if matches!(cfg, Da3Config::Nested { .. }) {
        return Ok(DepthUnits::Metres);
    }
    let metric = |name: &str| name.eq_ignore_ascii_case("da3metric-large");
    if let Some(name) = model_name.filter(|n| !n.is_empty()) {
        return Ok(if metric(name) {
            DepthUnits::FocalOver300
        } else {
            DepthUnits::Relative
        });
    }
    let Some(path) = files.config.as_ref() else {
        return Ok(DepthUnits::Relative);
    };
    let text =
        std::fs::read_to_string(path).wrap_err_with(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).wrap_err_with(|| format!("parsing {}", path.display()))?;
    let name = v.get("model_name").and_then(serde_json::Value::as_str);
    let custom_metric = v
        .get("net_config")
        .and_then(|n| n.get("metric"))
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    Ok(if name.is_some_and(metric) || custom_metric {
        DepthUnits::FocalOver300
    } else {
        DepthUnits::Relative
    })
}

fn stored_shapes(path: &Path) -> Result<(MmapedSafetensors, BTreeMap<String, Vec<usize>>)> {
    // SAFETY: the file is memory-mapped read-only; it must not be modified while loaded.
    let st = unsafe { MmapedSafetensors::new(path) }
        .wrap_err_with(|| format!("opening {}", path.display()))?;
    let shapes = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    Ok((st, shapes))
}

/// The published variant whose tensors (names and shapes) `weights` holds, when exactly one does.
pub fn detect_variant(weights: &Path) -> Result<Da3Config> {
    let (_, stored) = stored_shapes(weights)?;
    let mut found = Vec::new();
    for name in Da3Config::PUBLISHED {
        let cfg = Da3Config::from_model_name(name)?;
        if match_keys(&stored, &expected_keys(&cfg)?).is_ok() {
            found.push((*name, cfg));
        }
    }
    match found.len() {
        1 => {
            let (name, cfg) = found.remove(0);
            tracing::info!(
                "{}: no config.json; the tensors are those of {name}",
                weights.display()
            );
            Ok(cfg)
        }
        0 => bail!(
            "{}: no config.json beside it and its tensors match no published DA3 variant: put the \
             checkpoint's config.json beside it or name the variant (MODEL_NAME / --model-name)",
            weights.display()
        ),
        _ => bail!(
            "{}: no config.json beside it and its tensors fit {} alike: name the variant \
             (MODEL_NAME / --model-name)",
            weights.display(),
            found
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

/// Backend that records the requested names and shapes and hands out zero-stride views
/// (no allocation), used to list the keys of a configuration.
struct Recorder {
    keys: Mutex<Vec<(String, Vec<usize>)>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.keys
            .lock()
            .expect("recorder lock")
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recorder: unchecked access to {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Every state-dict key (with the hub `model.` prefix) and shape the network loads for `cfg`,
/// tied aliases included, in request order. Allocates nothing.
pub fn expected_keys(cfg: &Da3Config) -> Result<Vec<(String, Vec<usize>)>> {
    let shared = std::sync::Arc::new(Recorder {
        keys: Mutex::new(Vec::new()),
    });
    let vb = VarBuilder::from_backend(
        Box::new(ArcBackend(shared.clone())),
        DType::F32,
        Device::Cpu,
    );
    crate::Da3Model::build(cfg, vb.pp("model"))
        .map(|_| ())
        .wrap_err("building the network with the key recorder")?;
    let keys = shared.keys.lock().expect("recorder lock").clone();
    Ok(keys)
}

struct ArcBackend(std::sync::Arc<Recorder>);
impl SimpleBackend for ArcBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// The stored name of a tied tensor, if `name` is one of the aux LayerNorm aliases.
pub fn alias_target(name: &str) -> Option<String> {
    for lvl in 1..4 {
        let pat = format!("head.scratch.output_conv2_aux.{lvl}.2.");
        if let Some(pos) = name.find(&pat) {
            return Some(format!(
                "{}head.scratch.output_conv2_aux.0.2.{}",
                &name[..pos],
                &name[pos + pat.len()..]
            ));
        }
    }
    None
}

/// Safetensors backend with alias resolution and dtype conversion.
struct CheckpointBackend {
    st: MmapedSafetensors,
    aliases: HashMap<String, String>,
}

impl CheckpointBackend {
    fn stored<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map(String::as_str).unwrap_or(name)
    }

    /// The stored tensor `name` as an owned tensor; the file's pages it was copied from
    /// are then handed back to the kernel, so that loading does not hold the whole
    /// mapped file resident beside the copies (peak RSS: the model once, not twice).
    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let view = self.st.get(self.stored(name))?;
        let t = candle_core::safetensors::Load::load(&view, dev)?;
        release_pages(view.data());
        Ok(t)
    }
}

/// Drops the resident pages behind `data`, a read-only file mapping: a later read faults
/// them in again from the file, so this changes memory use, never contents.
#[cfg(unix)]
fn release_pages(data: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let start = data.as_ptr() as usize / page * page;
    let end = (data.as_ptr() as usize + data.len()).div_ceil(page) * page;
    if end > start {
        // SAFETY: [start, end) lies within the mapping `data` borrows from (mappings are
        // page-aligned); MADV_DONTNEED on a file mapping only drops pages, never writes.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(not(unix))]
fn release_pages(_: &[u8]) {}

impl SimpleBackend for CheckpointBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "shape mismatch for {name}: checkpoint {:?}, expected {:?}",
                t.dims(),
                s.dims()
            );
        }
        t.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.st.get(self.stored(name)).is_ok()
    }
}

/// Check stored tensors against the expected ones (tied aliases resolved): every expected key
/// stored with its shape, no stored key unused. Returns the aliases used.
fn match_keys(
    stored: &BTreeMap<String, Vec<usize>>,
    expected: &[(String, Vec<usize>)],
) -> std::result::Result<HashMap<String, String>, String> {
    let mut aliases = HashMap::new();
    let mut used = HashSet::new();
    for (key, shape) in expected {
        let name = if stored.contains_key(key) {
            key.clone()
        } else if let Some(t) = alias_target(key).filter(|t| stored.contains_key(t)) {
            aliases.insert(key.clone(), t.clone());
            t
        } else {
            return Err(format!(
                "missing tensor {key} (shape {shape:?}) for this model config"
            ));
        };
        let got = &stored[&name];
        if got != shape {
            return Err(format!(
                "tensor {name} has shape {got:?}, the model config expects {shape:?}"
            ));
        }
        used.insert(name);
    }
    if let Some(extra) = stored.keys().find(|k| !used.contains(*k)) {
        return Err(format!(
            "unexpected tensor {extra} ({} extra in all): checkpoint and model config disagree",
            stored.keys().filter(|k| !used.contains(*k)).count()
        ));
    }
    Ok(aliases)
}

/// Check the checkpoint's keys and shapes against the configuration and return a VarBuilder
/// over it (rooted at the file's top level: keys start with `model.`).
pub fn checked_var_builder(
    path: &Path,
    cfg: &Da3Config,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let (st, stored) = stored_shapes(path)?;
    let aliases =
        match_keys(&stored, &expected_keys(cfg)?).map_err(|e| eyre!("{}: {e}", path.display()))?;
    let backend: Box<dyn SimpleBackend> = Box::new(CheckpointBackend { st, aliases });
    Ok(VarBuilder::from_backend(backend, dtype, device.clone()))
}
