//! Tuning of the f32 CPU kernels, as data: one [`Tuning`] value, process-wide, set by the
//! program ([`set`]) and read by the kernels at the start of each op ([`get`]). The library
//! reads no environment variable; the binaries that want the `DA3_*` knobs (the `da3` CLI
//! and the DA3 node) call [`Tuning::from_env`] once and [`set`] the result.
//!
//! Defaults were measured on a 2-core AVX2 machine (see docs/benchmarks.md); only
//! [`Tuning::cpu_kernels`] changes what is computed (candle's generic ops instead of the
//! fused kernels, equal up to rounding), the others only how the work is split.

use std::sync::RwLock;

use eyre::{bail, Result};

/// Queries per attention block at most (the per-row softmax state is a stack array).
pub const Q_BLOCK_MAX: usize = 512;

/// How the f32 CPU kernels run. `Default` is what the project measured best; every field
/// names the environment variable [`Tuning::from_env`] reads it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Use the fused f32 CPU kernels for f32 tensors on the CPU (`DA3_CPU_KERNELS`, default
    /// on). Off: candle's generic ops everywhere, about 2x slower; the reference the kernel
    /// tests compare against.
    pub cpu_kernels: bool,
    /// Linear-layer tasks per thread (`DA3_LINEAR_TASKS`, default 1, at least 1): each task
    /// packs the whole weight, so few large tasks.
    pub linear_tasks: usize,
    /// Rows per fused sub-block of a linear layer (`DA3_LINEAR_SUB`, default 512, at least
    /// 8): the normalised input and the GELU / residual epilogue stay in cache. Fewer, larger
    /// GEMM calls than 256: one view of DA3-BASE 2% faster, 4 views and DA3-SMALL the same
    /// (AMD EPYC Zen 4, oneDNN).
    pub linear_sub_rows: usize,
    /// Queries per attention block (`DA3_Q_BLOCK`, default and largest 512, at least 8).
    pub q_block: usize,
    /// Keys per block of the attention's online softmax (`DA3_K_BLOCK`, default 512, at
    /// least 16): the score block (`q_block × k_block` floats per thread) stays in L2.
    pub k_block: usize,
    /// Target floats in one im2col band of a convolution (`DA3_COL_BAND`, default 131072),
    /// also the band of the transposed convolutions' scatter.
    pub col_band: usize,
    /// Target floats in one by-rows column band (`DA3_ROW_BAND`, default 262144).
    pub row_band: usize,
    /// Stride-1 convolutions by rows, one GEMM per kernel row (`DA3_CONV_ROWS`, default
    /// on); off: full im2col.
    pub conv_by_rows: bool,
    /// 3x3 stride-1 convolutions by Winograd where it was measured ahead: F(4x4, 3x3) on
    /// maps of 8192+ pixels with Ci + Co >= 64, F(2x2, 3x3) on smaller ones with Ci + Co >=
    /// 96 (`DA3_WINOGRAD`, default on); off: by rows.
    pub winograd: bool,
    /// Let the allocator keep freed memory between frames (`DA3_KEEP_MEMORY`, default on;
    /// glibc only): read once, when the first CPU model loads.
    pub keep_memory: bool,
    /// Use oneMKL's bf16/f16 GEMMs for half-precision weights (`DA3_MKL`, default on; only
    /// where the build linked it, see `build.rs`); off: half weights widened to f32 per call
    /// and the f32 kernels (the reference the half kernels' tests compare against).
    pub mkl: bool,
    /// The linear layers' f32 GEMMs by oneMKL's `cblas_sgemm` instead of the `gemm` crate
    /// (`DA3_MKL_F32`, default on; applies only on AVX-512 CPUs and where the build linked
    /// oneMKL: measured faster there, not measured on AVX2-only CPUs).
    pub mkl_f32: bool,
    /// The linear layers' GEMMs by oneDNN's matmul where the library loads (`DA3_DNNL`,
    /// default on; `model/cpu/onednn/`): bf16 weights on every CPU, f32 on AVX-512 CPUs
    /// (measured faster there; AVX2-only CPUs not measured, they keep the `gemm` crate).
    pub dnnl: bool,
    /// Mixed precision's attention products (q·kᵀ and p·v) in bf16/f16 too, by oneDNN
    /// where it runs the type, softmax in f32 (`DA3_HALF_ATTENTION`, default on): DA3-SMALL
    /// bf16 20% faster at 4 views (AMD EPYC Zen 4). A forward that infers Gaussians keeps
    /// its attention f32 either way (their rotations are the one output it moves past 2e-2:
    /// [`crate::model::net`]).
    pub half_attention: bool,
    /// `da3 bench --profile`: one row per convolution shape instead of per kernel kind
    /// (`DA3_PROFILE_SHAPES`, default off).
    pub profile_shapes: bool,
}

impl Tuning {
    /// The defaults (also [`Default::default`]).
    pub const DEFAULT: Tuning = Tuning {
        cpu_kernels: true,
        linear_tasks: 1,
        linear_sub_rows: 512,
        q_block: Q_BLOCK_MAX,
        k_block: 512,
        col_band: 1 << 17,
        row_band: 1 << 18,
        conv_by_rows: true,
        winograd: true,
        keep_memory: true,
        mkl: true,
        mkl_f32: true,
        dnnl: true,
        half_attention: true,
        profile_shapes: false,
    };

    /// The defaults with the `DA3_*` variables that are set (and not empty) applied.
    /// Switches take `1/true/on/yes` or `0/false/off/no`; sizes a whole number in range.
    pub fn from_env() -> Result<Tuning> {
        Self::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`Tuning::from_env`] over any lookup of the variables (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Tuning> {
        let d = Self::DEFAULT;
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let switch = |name: &str, default: bool| -> Result<bool> {
            let Some(v) = var(name) else {
                return Ok(default);
            };
            Ok(match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => bail!("{name}={v:?}: expected 1/true/on/yes or 0/false/off/no"),
            })
        };
        let size = |name: &str, default: usize, min: usize, max: usize| -> Result<usize> {
            let Some(v) = var(name) else {
                return Ok(default);
            };
            match v.trim().parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                Ok(n) if max == usize::MAX => bail!("{name}={n}: must be at least {min}"),
                Ok(n) => bail!("{name}={n}: must be between {min} and {max}"),
                Err(_) => bail!("{name}={v:?}: expected a whole number"),
            }
        };
        Ok(Tuning {
            cpu_kernels: switch("DA3_CPU_KERNELS", d.cpu_kernels)?,
            linear_tasks: size("DA3_LINEAR_TASKS", d.linear_tasks, 1, usize::MAX)?,
            linear_sub_rows: size("DA3_LINEAR_SUB", d.linear_sub_rows, 8, usize::MAX)?,
            q_block: size("DA3_Q_BLOCK", d.q_block, 8, Q_BLOCK_MAX)?,
            k_block: size("DA3_K_BLOCK", d.k_block, 16, usize::MAX)?,
            col_band: size("DA3_COL_BAND", d.col_band, 1, usize::MAX)?,
            row_band: size("DA3_ROW_BAND", d.row_band, 1, usize::MAX)?,
            conv_by_rows: switch("DA3_CONV_ROWS", d.conv_by_rows)?,
            winograd: switch("DA3_WINOGRAD", d.winograd)?,
            keep_memory: switch("DA3_KEEP_MEMORY", d.keep_memory)?,
            mkl: switch("DA3_MKL", d.mkl)?,
            mkl_f32: switch("DA3_MKL_F32", d.mkl_f32)?,
            dnnl: switch("DA3_DNNL", d.dnnl)?,
            half_attention: switch("DA3_HALF_ATTENTION", d.half_attention)?,
            profile_shapes: switch("DA3_PROFILE_SHAPES", d.profile_shapes)?,
        })
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static CURRENT: RwLock<Tuning> = RwLock::new(Tuning::DEFAULT);

/// Make `t` the tuning of every op started from now on (process-wide).
pub fn set(t: Tuning) {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = t;
}

/// The tuning in effect ([`Tuning::DEFAULT`] until [`set`] is called).
pub fn get() -> Tuning {
    *CURRENT.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Tuning> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Tuning::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn no_variables_give_the_defaults() {
        assert_eq!(parse(&[]).unwrap(), Tuning::default());
        assert_eq!(parse(&[("DA3_WINOGRAD", "")]).unwrap(), Tuning::default());
    }

    #[test]
    fn variables_are_parsed() {
        let t = parse(&[
            ("DA3_CPU_KERNELS", "off"),
            ("DA3_LINEAR_TASKS", "2"),
            ("DA3_LINEAR_SUB", "64"),
            ("DA3_Q_BLOCK", "128"),
            ("DA3_K_BLOCK", "1024"),
            ("DA3_COL_BAND", "4096"),
            ("DA3_ROW_BAND", "8192"),
            ("DA3_CONV_ROWS", "0"),
            ("DA3_WINOGRAD", "false"),
            ("DA3_KEEP_MEMORY", "0"),
            ("DA3_MKL", "off"),
            ("DA3_MKL_F32", "off"),
            ("DA3_DNNL", "off"),
            ("DA3_HALF_ATTENTION", "off"),
            ("DA3_PROFILE_SHAPES", "1"),
        ])
        .unwrap();
        let want = Tuning {
            cpu_kernels: false,
            linear_tasks: 2,
            linear_sub_rows: 64,
            q_block: 128,
            k_block: 1024,
            col_band: 4096,
            row_band: 8192,
            conv_by_rows: false,
            winograd: false,
            keep_memory: false,
            mkl: false,
            mkl_f32: false,
            dnnl: false,
            half_attention: false,
            profile_shapes: true,
        };
        assert_eq!(t, want);
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        for (name, v, says) in [
            ("DA3_CPU_KERNELS", "maybe", "expected 1/true"),
            ("DA3_Q_BLOCK", "1024", "between 8 and 512"),
            ("DA3_K_BLOCK", "8", "at least 16"),
            ("DA3_LINEAR_TASKS", "two", "whole number"),
            ("DA3_COL_BAND", "-1", "whole number"),
        ] {
            let e = format!("{:#}", parse(&[(name, v)]).unwrap_err());
            assert!(e.contains(name) && e.contains(says), "{e}");
        }
    }
}
