//! The DA3 network, one file per component, built from a `VarBuilder` with the checkpoint's
//! own key names (`model.backbone.pretrained.*`, `model.head.*`, `model.cam_enc.*`,
//! `model.cam_dec.*`; nested: `model.da3.*` / `model.da3_metric.*`).
//!
//! | file | component |
//! |---|---|
//! | `config.rs` | variant presets, `config.json` / custom `net_config` parsing |
//! | `vit.rs` | DINOv2 backbone: patch embed, bicubic pos-embed (scale-factor rule), alternating local/global attention, camera token, `cat_token` outputs |
//! | `attention.rs` | attention with QK-norm (eps 1e-5) and 2-D RoPE (row/column halves) |
//! | `block.rs`, `ffn.rs` | pre-norm block with LayerScale (eps 1e-6 backbone, 1e-5 camera encoder); MLP (erf GELU) / fused SwiGLU |
//! | `ref_view.rs` | reference-view strategies (3+ views), reorder / restore |
//! | `dpt.rs` | DPT head (depth + ReLU sky), shared neck/fusion blocks, UV sin-cos pos-embed |
//! | `dual_dpt.rs` | DualDPT head (depth + conf, ray + conf at 8/14 resolution; only the last aux level) |
//! | `gs_dpt.rs` | GSDPT, the Gaussian-splat head of the giant checkpoints (DPT + image merger; raw parameters + density) |
//! | `gs_adapter.rs` | raw Gaussian parameters -> world-space Gaussians (centres on the rays, scales, rotations, SH rotated with Wigner D) |
//! | `cam_enc.rs`, `cam_dec.rs`, `transform.rs` | cameras <-> pose encoding `[t, quat xyzw, fov_h, fov_w]` |
//! | `ray_pose.rs` | rays -> pose: weighted RANSAC homography + QL, injectable sample indices |
//! | `net.rs` | `DepthAnything3Net` forward incl. the mono sky step |
//! | `nested.rs` | metric scaling (focal * depth / 300), least-squares alignment, sky |
//! | `layers.rs` | LayerNorm (reduced in f32), linear / conv layers with the checkpoint names (f32 compute for bf16 convs on CPU) |
//! | `ops/` | one op per concept (`linear`, `layer_norm`, `attention`, `conv2d`, ...): the fused CPU kernel where it applies, candle's ops otherwise (the `*_candle` reference beside each) |
//! | `cpu/` | the f32 CPU kernels behind the ops, one file per concern (GEMM/buffers, SIMD, linear, attention, conv, Winograd, transposed conv, DPT token ops, resize, norm + RoPE, profile, memory) |
//!
//! Conventions: extrinsics are world-to-camera (B, S, 3, 4); intrinsics in pixels of the
//! network input (B, S, 3, 3); maps (B, S, H, W). Small per-view camera math runs on the host
//! in f64.

pub mod attention;
pub mod block;
pub mod cam_dec;
pub mod cam_enc;
pub mod config;
pub mod cpu;
pub mod dpt;
pub mod dual_dpt;
pub mod ffn;
pub mod gs_adapter;
pub mod gs_dpt;
pub mod layers;
pub mod nested;
pub mod net;
pub mod ops;
pub mod ray_pose;
pub mod ref_view;
pub mod transform;
pub mod vit;

/// Per-kernel timing of `da3 bench --profile`.
pub use ops::profile;
