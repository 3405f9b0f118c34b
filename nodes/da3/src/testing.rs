//! Helpers shared by the crate's tests (unit and integration); not part of the API.

use candle_core::{DType, Device, Tensor};

/// `t` rounded to bf16 and back to f32: the values a bf16 kernel reads.
pub fn bf16_rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .and_then(|r| r.to_dtype(DType::F32))
        .expect("bf16 round trip")
}

/// Largest absolute difference `max |a - b|`, computed in f64 (any dtypes; `a` and `b` must
/// have the same shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    values_max_abs_diff(&host_f64(a), &host_f64(b))
}

/// Relative error of `a` against the reference `b`: `max |a - b| / max |b|` (in f64; the
/// scale floored at 1e-12). The figure every parity and kernel test reports.
pub fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    values_max_rel_err(&host_f64(a), &host_f64(b))
}

/// [`max_abs_diff`] of two value lists of the same length.
pub fn values_max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// [`max_rel_err`] of two value lists of the same length.
pub fn values_max_rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    values_max_abs_diff(a, b) / scale.max(1e-12)
}

fn host_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor to host f64")
}

/// A deterministic f32 tensor on the CPU with values in [-1, 1) (xorshift from `seed`).
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor from vec")
}
