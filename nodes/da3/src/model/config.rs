//! Network configuration: one constructor per published variant, plus parsing of the hub
//! `config.json` (`{"model_name": ...}`) and of a custom `net_config` (reduced test models).

use eyre::{bail, eyre, Context, Result};
use serde_json::Value;

/// Feed-forward flavour of the ViT blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// fc1 -> GELU(erf) -> fc2.
    Mlp,
    /// Fused SwiGLU (`w12`, `w3`) with the DINOv2 hidden-size rule.
    SwiGluFused,
}

/// DINOv2 backbone with the DA3 extensions (alternating attention, QK-norm, 2-D RoPE).
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub ffn: FfnKind,
    /// Blocks whose outputs feed the head (4 of them).
    pub out_layers: Vec<usize>,
    /// First block of the local/global alternation (`None` = disabled, reference -1).
    pub alt_start: Option<usize>,
    pub qknorm_start: Option<usize>,
    pub rope_start: Option<usize>,
    /// Concatenate the last local output with the global one (2*embed_dim features).
    pub cat_token: bool,
    pub patch_size: usize,
    /// Image size the position embedding was trained for (518 -> 37x37 grid).
    pub img_size: usize,
    pub rope_freq: f32,
}

impl VitConfig {
    fn named(name: &str) -> Result<(usize, usize, usize, FfnKind)> {
        Ok(match name {
            "vits" => (384, 12, 6, FfnKind::Mlp),
            "vitb" => (768, 12, 12, FfnKind::Mlp),
            "vitl" => (1024, 24, 16, FfnKind::Mlp),
            "vitg" => (1536, 40, 24, FfnKind::SwiGluFused),
            other => bail!("unknown backbone name {other:?} (expected vits, vitb, vitl, vitg)"),
        })
    }

    /// A named DINOv2 size with the DA3 options.
    pub fn preset(
        name: &str,
        out_layers: [usize; 4],
        alt_start: Option<usize>,
        cat_token: bool,
    ) -> Result<Self> {
        let (embed_dim, depth, num_heads, ffn) = Self::named(name)?;
        Ok(Self {
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            ffn,
            out_layers: out_layers.to_vec(),
            alt_start,
            qknorm_start: alt_start,
            rope_start: alt_start,
            cat_token,
            patch_size: 14,
            img_size: 518,
            rope_freq: 100.0,
        })
    }

    /// Width of the features handed to the head.
    pub fn out_dim(&self) -> usize {
        if self.cat_token {
            2 * self.embed_dim
        } else {
            self.embed_dim
        }
    }
}

/// Which dense head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// Depth + ray (any-view models).
    DualDpt,
    /// Depth (+ sky) (mono / metric models).
    Dpt,
    /// Gaussian-splat head of the giant checkpoints (run with `infer_gs`).
    GsDpt,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub kind: HeadKind,
    pub dim_in: usize,
    pub output_dim: usize,
    pub features: usize,
    pub out_channels: [usize; 4],
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    pub vit: VitConfig,
    pub head: HeadConfig,
    /// Camera encoder width (pose-conditioned input), any-view models only.
    pub cam_enc_dim: Option<usize>,
    /// Camera decoder input width, any-view models only.
    pub cam_dec_dim: Option<usize>,
    /// Gaussian-splat head (DA3-GIANT and the nested model's any-view branch), run with
    /// `infer_gs`.
    pub gs_head: Option<HeadConfig>,
    /// How the GS head's raw output becomes Gaussians (present with `gs_head`).
    pub gs_adapter: Option<GsAdapterConfig>,
}

/// The reference's `GaussianAdapter` settings (defaults: DA3-GIANT's).
#[derive(Debug, Clone, PartialEq)]
pub struct GsAdapterConfig {
    pub sh_degree: usize,
    /// Predict a colour instead of SH coefficients.
    pub pred_color: bool,
    pub pred_offset_depth: bool,
    pub pred_offset_xy: bool,
    pub scale_min: f64,
    pub scale_max: f64,
}

impl Default for GsAdapterConfig {
    fn default() -> Self {
        Self {
            sh_degree: 2,
            pred_color: false,
            pred_offset_depth: true,
            pred_offset_xy: true,
            scale_min: 1e-5,
            scale_max: 30.0,
        }
    }
}

impl GsAdapterConfig {
    /// From a net config's `gs_adapter` object (missing keys: the reference's defaults, which
    /// differ from DA3-GIANT's: `sh_degree` 0, no depth offset).
    pub fn from_json(v: &Value) -> Result<Self> {
        // Key `k`: `default` when missing or null, else `get` of it or an error saying what
        // it must be.
        fn field<T>(
            v: &Value,
            k: &str,
            default: T,
            get: impl Fn(&Value) -> Option<T>,
            must: &str,
        ) -> Result<T> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => get(x).ok_or_else(|| eyre!("gs_adapter.{k} must be {must}")),
            }
        }
        let b = |k: &str, d: bool| field(v, k, d, Value::as_bool, "a boolean");
        let f = |k: &str, d: f64| field(v, k, d, Value::as_f64, "a number");
        let sh_degree = |x: &Value| x.as_u64().filter(|&d| d <= 4).map(|d| d as usize);
        let c = Self {
            sh_degree: field(v, "sh_degree", 0, sh_degree, "0..=4")?,
            pred_color: b("pred_color", false)?,
            pred_offset_depth: b("pred_offset_depth", false)?,
            pred_offset_xy: b("pred_offset_xy", true)?,
            scale_min: f("gaussian_scale_min", 1e-5)?,
            scale_max: f("gaussian_scale_max", 30.0)?,
        };
        if c.scale_min.partial_cmp(&c.scale_max) != Some(std::cmp::Ordering::Less) {
            bail!("gs_adapter: gaussian_scale_min must be below gaussian_scale_max");
        }
        Ok(c)
    }
}

/// A whole checkpoint: one network, or the nested any-view + metric pair.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Da3Config {
    Single(NetConfig),
    Nested {
        anyview: NetConfig,
        metric: NetConfig,
    },
}

fn anyview(
    name: &str,
    out_layers: [usize; 4],
    alt: usize,
    features: usize,
    out_channels: [usize; 4],
) -> Result<NetConfig> {
    let vit = VitConfig::preset(name, out_layers, Some(alt), true)?;
    let d = vit.out_dim();
    let e = vit.embed_dim;
    Ok(NetConfig {
        head: HeadConfig {
            kind: HeadKind::DualDpt,
            dim_in: d,
            output_dim: 2,
            features,
            out_channels,
        },
        cam_enc_dim: Some(e),
        cam_dec_dim: Some(d),
        gs_head: None,
        gs_adapter: None,
        vit,
    })
}

fn monometric() -> Result<NetConfig> {
    let vit = VitConfig::preset("vitl", [4, 11, 17, 23], None, false)?;
    Ok(NetConfig {
        head: HeadConfig {
            kind: HeadKind::Dpt,
            dim_in: 1024,
            output_dim: 1,
            features: 256,
            out_channels: [256, 512, 1024, 1024],
        },
        cam_enc_dim: None,
        cam_dec_dim: None,
        gs_head: None,
        gs_adapter: None,
        vit,
    })
}

impl NetConfig {
    pub fn da3_small() -> Self {
        anyview("vits", [5, 7, 9, 11], 4, 64, [48, 96, 192, 384]).expect("preset")
    }
    pub fn da3_base() -> Self {
        anyview("vitb", [5, 7, 9, 11], 4, 128, [96, 192, 384, 768]).expect("preset")
    }
    pub fn da3_large() -> Self {
        anyview("vitl", [11, 15, 19, 23], 8, 256, [256, 512, 1024, 1024]).expect("preset")
    }
    pub fn da3_giant() -> Self {
        let mut c =
            anyview("vitg", [19, 27, 33, 39], 13, 256, [256, 512, 1024, 1024]).expect("preset");
        c.gs_head = Some(HeadConfig {
            kind: HeadKind::GsDpt,
            dim_in: 3072,
            output_dim: 38,
            features: 256,
            out_channels: [256, 512, 1024, 1024],
        });
        c.gs_adapter = Some(GsAdapterConfig::default());
        c
    }
    pub fn da3metric_large() -> Self {
        monometric().expect("preset")
    }
    pub fn da3mono_large() -> Self {
        monometric().expect("preset")
    }

    /// Parse a reference-style net config (`{"type":"da3","net":{..},"head":{..},...}`).
    pub fn from_json(v: &Value) -> Result<Self> {
        let net = v
            .get("net")
            .ok_or_else(|| eyre!("net_config: missing \"net\""))?;
        let head = v
            .get("head")
            .ok_or_else(|| eyre!("net_config: missing \"head\""))?;
        let opt_idx = |k: &str| -> Result<Option<usize>> {
            match net.get(k).and_then(Value::as_i64) {
                None | Some(-1) => Ok(None),
                Some(x) if x >= 0 => Ok(Some(x as usize)),
                Some(x) => bail!("net_config: net.{k} = {x} is invalid"),
            }
        };
        let usize_of = |o: &Value, k: &str| -> Result<usize> {
            o.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| eyre!("net_config: missing integer {k:?}"))
        };
        let name = net.get("name").and_then(Value::as_str).unwrap_or("custom");
        let (embed_dim, depth, num_heads, ffn) = if name == "custom" {
            let ffn = match net
                .get("ffn_layer")
                .and_then(Value::as_str)
                .unwrap_or("mlp")
            {
                "mlp" => FfnKind::Mlp,
                "swiglufused" | "swiglu" => FfnKind::SwiGluFused,
                f => bail!("net_config: unknown ffn_layer {f:?}"),
            };
            (
                usize_of(net, "embed_dim")?,
                usize_of(net, "depth")?,
                usize_of(net, "num_heads")?,
                ffn,
            )
        } else {
            VitConfig::named(name)?
        };
        let out_layers: Vec<usize> = net
            .get("out_layers")
            .and_then(Value::as_array)
            .ok_or_else(|| eyre!("net_config: missing net.out_layers"))?
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| eyre!("bad out_layers entry"))
            })
            .collect::<Result<_>>()?;
        if out_layers.len() != 4 {
            bail!("net_config: out_layers must have 4 entries");
        }
        let vit = VitConfig {
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: net.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0),
            ffn,
            out_layers,
            alt_start: opt_idx("alt_start")?,
            qknorm_start: opt_idx("qknorm_start")?,
            rope_start: opt_idx("rope_start")?,
            cat_token: net
                .get("cat_token")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            patch_size: 14,
            img_size: net
                .get("img_size")
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .unwrap_or(518),
            rope_freq: 100.0,
        };
        let parse_head = |h: &Value, kind: HeadKind| -> Result<HeadConfig> {
            let oc: Vec<usize> = h
                .get("out_channels")
                .and_then(Value::as_array)
                .ok_or_else(|| eyre!("net_config: head.out_channels missing"))?
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|x| x as usize)
                        .ok_or_else(|| eyre!("bad out_channels"))
                })
                .collect::<Result<_>>()?;
            let out_channels: [usize; 4] = oc
                .try_into()
                .map_err(|_| eyre!("net_config: head.out_channels must have 4 entries"))?;
            Ok(HeadConfig {
                kind,
                dim_in: usize_of(h, "dim_in")?,
                output_dim: usize_of(h, "output_dim")?,
                features: usize_of(h, "features")?,
                out_channels,
            })
        };
        let kind = match head
            .get("type")
            .or_else(|| head.get("__object__").and_then(|o| o.get("name")))
            .and_then(Value::as_str)
            .unwrap_or("dualdpt")
        {
            "dualdpt" | "DualDPT" => HeadKind::DualDpt,
            "dpt" | "DPT" => HeadKind::Dpt,
            t => bail!("net_config: unknown head type {t:?}"),
        };
        let head = parse_head(head, kind)?;
        let cam_enc_dim = match v.get("cam_enc") {
            Some(c) if !c.is_null() => Some(usize_of(c, "dim_out")?),
            _ => None,
        };
        let cam_dec_dim = match v.get("cam_dec") {
            Some(c) if !c.is_null() => Some(usize_of(c, "dim_in")?),
            _ => None,
        };
        let gs_head = match v.get("gs_head") {
            Some(c) if !c.is_null() => Some(parse_head(c, HeadKind::GsDpt)?),
            _ => None,
        };
        let gs_adapter = match (&gs_head, v.get("gs_adapter")) {
            (None, _) => None,
            (Some(_), Some(a)) if !a.is_null() => Some(GsAdapterConfig::from_json(a)?),
            (Some(_), _) => bail!("net_config: gs_head without gs_adapter"),
        };
        if let (Some(h), Some(a)) = (&gs_head, &gs_adapter) {
            if h.output_dim != a.d_in() + 1 {
                bail!(
                    "net_config: gs_head.output_dim {} != {} (the adapter's raw channels + density)",
                    h.output_dim,
                    a.d_in() + 1
                );
            }
        }
        if head.dim_in != vit.out_dim() {
            bail!(
                "net_config: head.dim_in {} != backbone output width {}",
                head.dim_in,
                vit.out_dim()
            );
        }
        Ok(Self {
            vit,
            head,
            cam_enc_dim,
            cam_dec_dim,
            gs_head,
            gs_adapter,
        })
    }
}

impl Da3Config {
    /// The network that takes the views: the single one, or the nested pair's any-view
    /// branch (its camera encoder, backbone and Gaussian head serve the pair).
    pub fn anyview(&self) -> &NetConfig {
        match self {
            Self::Single(c) => c,
            Self::Nested { anyview, .. } => anyview,
        }
    }

    pub fn da3_small() -> Self {
        Self::Single(NetConfig::da3_small())
    }
    pub fn da3_base() -> Self {
        Self::Single(NetConfig::da3_base())
    }
    pub fn da3_large() -> Self {
        Self::Single(NetConfig::da3_large())
    }
    pub fn da3_giant() -> Self {
        Self::Single(NetConfig::da3_giant())
    }
    pub fn da3metric_large() -> Self {
        Self::Single(NetConfig::da3metric_large())
    }
    pub fn da3mono_large() -> Self {
        Self::Single(NetConfig::da3mono_large())
    }
    pub fn da3nested_giant_large() -> Self {
        Self::Nested {
            anyview: NetConfig::da3_giant(),
            metric: NetConfig::da3metric_large(),
        }
    }

    /// Published variant by its `model_name` (as in the hub `config.json`).
    /// The `model_name`s of the published variants (hub repos `depth-anything/<NAME>`, upper case).
    pub const PUBLISHED: &'static [&'static str] = &[
        "da3-small",
        "da3-base",
        "da3-large",
        "da3-giant",
        "da3metric-large",
        "da3mono-large",
        "da3nested-giant-large",
    ];

    pub fn from_model_name(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "da3-small" => Self::da3_small(),
            "da3-base" => Self::da3_base(),
            "da3-large" => Self::da3_large(),
            "da3-giant" => Self::da3_giant(),
            "da3metric-large" => Self::da3metric_large(),
            "da3mono-large" => Self::da3mono_large(),
            "da3nested-giant-large" => Self::da3nested_giant_large(),
            other => bail!(
                "unknown model_name {other:?} (expected da3-small, da3-base, da3-large, da3-giant, \
                 da3metric-large, da3mono-large, da3nested-giant-large or custom)"
            ),
        })
    }

    /// Parse a `config.json`: the hub's `{"model_name": "da3-small", "config": {...}}` (the
    /// published name decides, as in the reference; the nested `config` is the reference's
    /// resolved preset and is used only for a name we do not know), or
    /// `{"model_name": "custom", "net_config": {...}}` (reduced test models).
    pub fn from_config_json(v: &Value) -> Result<Self> {
        let name = v
            .get("model_name")
            .and_then(Value::as_str)
            .ok_or_else(|| eyre!("config.json has no \"model_name\""))?;
        if name != "custom" {
            return match (Self::from_model_name(name), v.get("config")) {
                (Err(_), Some(c)) if c.is_object() => Self::from_net_config(c)
                    .wrap_err_with(|| format!("the \"config\" of model_name {name:?}")),
                (r, _) => r,
            };
        }
        let nc = v
            .get("net_config")
            .ok_or_else(|| eyre!("custom config.json needs \"net_config\""))?;
        Self::from_net_config(nc)
    }

    pub fn from_net_config(nc: &Value) -> Result<Self> {
        // `type` in our custom configs; the hub files' resolved presets name the class.
        let kind = nc
            .get("type")
            .or_else(|| nc.get("__object__").and_then(|o| o.get("name")))
            .and_then(Value::as_str)
            .unwrap_or("da3");
        match kind {
            "da3" | "DepthAnything3Net" => Ok(Self::Single(NetConfig::from_json(nc)?)),
            "nested" | "NestedDepthAnything3Net" => {
                let a = nc
                    .get("anyview")
                    .ok_or_else(|| eyre!("nested net_config: missing anyview"))?;
                let m = nc
                    .get("metric")
                    .ok_or_else(|| eyre!("nested net_config: missing metric"))?;
                Ok(Self::Nested {
                    anyview: NetConfig::from_json(a).wrap_err("nested anyview")?,
                    metric: NetConfig::from_json(m).wrap_err("nested metric")?,
                })
            }
            t => bail!("net_config: unknown type {t:?}"),
        }
    }
}
