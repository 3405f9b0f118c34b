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

/// Requested numeric precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// bf16 where the device supports it, else f16 on a GPU; f32 on the CPU.
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
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto if device.supports_bf16() => DType::BF16,
            Self::Auto => DType::F16,
        }
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
        assert_eq!(Precision::Auto.dtype(&Device::Cpu), DType::F32);
        assert_eq!(Precision::F16.dtype(&Device::Cpu), DType::F16);
    }
}
