//! Devices and precisions by name, the same words for the `da3` CLI (`--device`,
//! `--precision`) and the DA3 node (`DEVICE`, `PRECISION`).
//!
//! - Device: `cpu`, `cuda:N` (`cuda` alone is `cuda:0`; the node's `DEVICE` lists add `auto`,
//!   `cpu*N` and `cuda:all`, see `nodes/dora-da3/README.md`).
//! - Precision: `auto` (bf16 where the device supports it, else f16 on a GPU; f32 on the CPU),
//!   `f32` (also `fp32`, `float32`, `no`: no reduced precision), `bf16` (`bfloat16`), `f16`
//!   (`fp16`, `float16`).

use std::str::FromStr;

use candle_core::{DType, Device};
use eyre::{bail, eyre, Result, WrapErr};

/// One compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = eyre::Report;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        if lower == "cpu" {
            return Ok(Self::Cpu);
        }
        if lower == "cuda" {
            return Ok(Self::Cuda(0));
        }
        match lower.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Self::Cuda(i)),
            _ => bail!("`{s}`: expected cpu or cuda:N"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => Device::new_cuda(i).wrap_err_with(|| {
                format!("cannot open the CUDA device {self} (a build without the `cuda` feature has none)")
            }),
        }
    }
}

/// How many CUDA devices can be opened (0 in a build without the `cuda` feature).
pub fn cuda_device_count() -> usize {
    if !candle_core::utils::cuda_is_available() {
        return 0;
    }
    (0..16).take_while(|&i| Device::new_cuda(i).is_ok()).count()
}

/// The CPU's bf16 hardware, as the mixed precision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuBf16 {
    /// AMX-BF16 tiles (Intel Sapphire Rapids and later), enabled by the OS.
    Amx,
    /// AVX512-BF16 dot products only (Intel Cooper Lake; AMD Zen 4+; Intel machines whose
    /// hypervisor hides AMX).
    Avx512,
    /// Neither: bf16 is computed by widening to f32 (correct, slower than f32).
    None,
}

impl std::fmt::Display for CpuBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Amx => "amx-bf16",
            Self::Avx512 => "avx512-bf16",
            Self::None => "none",
        })
    }
}

/// What bf16 hardware this CPU has (CPUID, and for AMX the OS's XCR0 tile state).
pub fn cpu_bf16() -> CpuBf16 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // Leaf 7 is read only when the CPU reports it.
        if __cpuid(0).eax < 7 {
            return CpuBf16::None;
        }
        let (l7, l7_1) = (__cpuid_count(7, 0), __cpuid_count(7, 1));
        let amx_bf16 = l7.edx & (1 << 22) != 0 && l7.edx & (1 << 24) != 0;
        if amx_bf16 && std::is_x86_feature_detected!("xsave") && os_enables_amx() {
            return CpuBf16::Amx;
        }
        if l7_1.eax & (1 << 5) != 0 && std::is_x86_feature_detected!("avx512f") {
            return CpuBf16::Avx512;
        }
    }
    CpuBf16::None
}

/// Whether the CPU is an AMD one (CPUID vendor `AuthenticAMD`).
pub fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let l0 = std::arch::x86_64::__cpuid(0);
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&l0.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        v[8..].copy_from_slice(&l0.ecx.to_le_bytes());
        return &v == b"AuthenticAMD";
    }
    #[allow(unreachable_code)]
    false
}

/// Whether the OS saves the AMX tile state (XCR0 bits 17 and 18).
#[cfg(target_arch = "x86_64")]
fn os_enables_amx() -> bool {
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        std::arch::x86_64::_xgetbv(0)
    }
    // SAFETY: called only when XSAVE (and so XGETBV) is available.
    let x = unsafe { xcr0() };
    x & (0b11 << 17) == (0b11 << 17)
}

/// Requested numeric precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// GPU: bf16 where the device supports it, else f16. CPU: bf16 where the CPU has AMX-BF16
    /// and oneMKL is linked, or AVX512-BF16 on AMD (see [`cpu_auto_dtype`]), else f32.
    Auto,
    F32,
    Bf16,
    F16,
}

/// The accepted precision words, for messages and docs.
pub const PRECISION_WORDS: &str = "auto, no, f32 (fp32), bf16, f16 (fp16)";

impl FromStr for Precision {
    type Err = eyre::Report;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "no" | "f32" | "fp32" | "float32" => Self::F32,
            "bf16" | "bfloat16" => Self::Bf16,
            "f16" | "fp16" | "float16" => Self::F16,
            _ => return Err(eyre!("`{s}`: expected {PRECISION_WORDS}")),
        })
    }
}

impl Precision {
    /// The dtype to run with on `device`.
    pub fn dtype(self, device: &Device) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
            Self::Auto if device.is_cpu() => cpu_auto_dtype(cpu_bf16(), cpu_is_amd()),
            Self::Auto if device.supports_bf16() => DType::BF16,
            Self::Auto => DType::F16,
        }
    }
}

/// `auto` on the CPU: bf16 (half-precision GEMM weights, f32 activations) where it was
/// measured faster than f32 (docs/benchmarks.md): AMX-BF16 with a bf16 kernel library
/// (oneDNN or oneMKL), and AVX512-BF16 on AMD with oneDNN (Zen 4: `vdpbf16ps` retires twice
/// the flops of its double-pumped f32 FMAs; oneDNN's bf16 GEMMs run 1.8-2x its f32 ones,
/// DA3-SMALL about 0.65x f32 overall; oneMKL runs generic code on AMD). f32 elsewhere: on
/// Intel without AMX the dot product retires the same flops per cycle as its two FMA ports
/// (oneMKL's bf16 GEMM measured 1.14x f32 there).
pub fn cpu_auto_dtype(hw: CpuBf16, amd: bool) -> DType {
    let onednn = crate::model::ops::onednn_runs_bf16();
    let mkl = crate::model::ops::mkl_linked();
    match hw {
        CpuBf16::Amx if onednn || mkl => DType::BF16,
        CpuBf16::Avx512 if amd && onednn => DType::BF16,
        _ => DType::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_words() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["gpu", "cuda:x", "cuda:", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
    }

    #[test]
    fn precision_words() {
        for (w, p) in [
            ("auto", Precision::Auto),
            ("no", Precision::F32),
            ("f32", Precision::F32),
            ("FP32", Precision::F32),
            ("bf16", Precision::Bf16),
            ("f16", Precision::F16),
            ("fp16", Precision::F16),
        ] {
            assert_eq!(w.parse::<Precision>().unwrap(), p, "{w}");
        }
        let e = "int8".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("int8") && e.contains("bf16"), "{e}");
        assert_eq!(
            Precision::Auto.dtype(&Device::Cpu),
            cpu_auto_dtype(cpu_bf16(), cpu_is_amd())
        );
        for amd in [false, true] {
            assert_eq!(cpu_auto_dtype(CpuBf16::None, amd), DType::F32);
        }
        assert_eq!(cpu_auto_dtype(CpuBf16::Avx512, false), DType::F32);
        let dtype = |kernels: bool| if kernels { DType::BF16 } else { DType::F32 };
        let onednn = crate::model::ops::onednn_runs_bf16();
        let mkl = crate::model::ops::mkl_linked();
        assert_eq!(cpu_auto_dtype(CpuBf16::Amx, false), dtype(onednn || mkl));
        assert_eq!(cpu_auto_dtype(CpuBf16::Avx512, true), dtype(onednn));
        assert_eq!(Precision::F16.dtype(&Device::Cpu), DType::F16);
    }
}
