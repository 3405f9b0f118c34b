//! f32 CPU kernels for the hot paths of the network, written for the shapes DA3 runs:
//! linear layers (pre-norm, bias, exact GELU, LayerScale + residual fused), blocked
//! attention that never holds more than one block of scores per thread, convolutions as
//! band-wise im2col + GEMM (stride 1: by rows, one GEMM per kernel row; 3x3 with enough
//! channels: Winograd F(2x2, 3x3) or F(4x4, 3x3)), transposed convolutions with kernel =
//! stride as one GEMM + scatter, the DPT's token-side ops and an `align_corners` bilinear
//! resize. The element-wise loops (LayerNorm, RoPE, GELU, softmax) are compiled for AVX2 +
//! FMA where the CPU has them (the build targets baseline x86-64). The
//! GEMMs go through the `gemm` crate (the one candle uses), the linear layers' through
//! oneDNN (or oneMKL) where loaded, all single-threaded per task, with the work split over
//! rayon's pool: one level of threading, no nesting.
//!
//! The model does not call these directly: [`super::ops`] picks them for f32 tensors on the
//! CPU (unless [`Tuning::cpu_kernels`] is off) and runs candle's ops otherwise. How the work
//! is split is [`Tuning`] (read by each kernel call from [`crate::tuning::get`]);
//! `da3 bench --profile` shows the time and GFLOP/s of each kernel kind ([`profile`]).
//!
//! | file | concern |
//! |---|---|
//! | `buffers.rs` | host views, output / scratch buffers, the typed `sgemm` call, task split |
//! | `simd.rs` | AVX2 2^x, max and exact-erf GELU |
//! | `linear.rs` | fused linear layers (f32 or bf16/f16 weights), the f32 weights' layout, the matmul peak |
//! | `half.rs` | mixed precision: bf16/f16 weights, activations rounded per block |
//! | `mkl.rs` | oneMKL's GEMMs (bf16/f16 -> f32; f32 where `Tuning::mkl_f32` asks) |
//! | `onednn/` | oneDNN's matmul (loaded at run time): linear layers, bf16 and f32; `pack.rs`: weights reordered once into its layout; `conv.rs`: its bf16 channels-last convolution |
//! | `attention.rs` | blocked online-softmax attention |
//! | `conv.rs` | im2col / by-rows convolutions and their fusions |
//! | `winograd.rs` | Winograd F(2x2, 3x3) and F(4x4, 3x3) |
//! | `conv_transpose.rs` | kernel = stride transposed convolutions |
//! | `tokens.rs` | DPT token ops: 1x1 projection of token-major features, UV embedding add |
//! | `resize.rs` | bilinear resize (align corners) |
//! | `head.rs` | the DPT's full-resolution output heads in bf16 (upsample + oneDNN's channels-last convolution) |
//! | `decoder.rs` | the any-view DPT's depth decoder in bf16, channels last from the adapted maps to the heads |
//! | `norm.rs` | LayerNorm (also the linear layers' pre-norm), fused QK-norm + 2-D RoPE |
//! | `profile.rs` | per-kernel timers, process CPU time |
//! | `memory.rs` | allocator settings between frames |
//!
//! [`Tuning`]: crate::tuning::Tuning
//! [`Tuning::cpu_kernels`]: crate::tuning::Tuning::cpu_kernels

mod attention;
mod buffers;
mod conv;
mod conv_transpose;
mod decoder;
mod half;
mod head;
mod linear;
mod memory;
mod mkl;
mod norm;
mod onednn;
pub mod profile;
mod resize;
mod simd;
mod tokens;
mod winograd;

pub use attention::attention;
pub use conv::{conv2d, ConvExt};
pub use conv_transpose::conv_transpose2d_k_eq_s;
pub use decoder::{fusion_heads, FusionLayers, HalfLayer};
pub use half::{use_half_kernels, Half};
pub use head::{upsampled_heads, ConvHead, HalfConv};
pub use linear::{
    linear, pack_weight as pack_linear_weight, weight_layout as linear_weight_layout, LinearExt,
    PackedWeight,
};
pub use memory::keep_freed_memory;
pub use mkl::{mkl_linked, mkl_version};
pub use norm::{layer_norm, norm_rope, Norm};
pub use onednn::{
    describe as onednn_describe, runs_bf16 as onednn_runs_bf16, version as onednn_version,
};
pub use resize::resize_bilinear_ac;
pub use simd::gelu_inplace;
pub use tokens::{add_uv_embed, conv1x1_tokens};
