//! Reference-view selection for multi-view inputs (3+ views): pick one view from the
//! class tokens, move it first (others keep their order), and restore the order afterwards.

use candle_core::{DType, Result, Tensor};

/// Strategy for choosing the reference view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefViewStrategy {
    First,
    Middle,
    /// View closest to the middle of the range of (mean similarity, token norm, variance).
    #[default]
    SaddleBalanced,
    /// View with the widest range of similarities to the others.
    SaddleSimRange,
}

impl std::str::FromStr for RefViewStrategy {
    type Err = eyre::Report;
    fn from_str(s: &str) -> eyre::Result<Self> {
        Ok(match s {
            "first" => Self::First,
            "middle" => Self::Middle,
            "saddle_balanced" => Self::SaddleBalanced,
            "saddle_sim_range" => Self::SaddleSimRange,
            o => eyre::bail!(
                "unknown reference view strategy {o:?} (first, middle, saddle_balanced, saddle_sim_range)"
            ),
        })
    }
}

/// Minimum number of views for which the selection runs.
pub const MIN_VIEWS_FOR_SELECTION: usize = 3;

/// Select the reference view of each batch element. `x`: (B, S, N, C); uses token 0 of each view.
pub fn select_reference_view(x: &Tensor, strategy: RefViewStrategy) -> Result<Vec<usize>> {
    let (b, s, _, _) = x.dims4()?;
    if s <= 1 {
        return Ok(vec![0; b]);
    }
    match strategy {
        RefViewStrategy::First => return Ok(vec![0; b]),
        RefViewStrategy::Middle => return Ok(vec![s / 2; b]),
        _ => {}
    }
    let tok: Vec<Vec<Vec<f32>>> = x
        .narrow(2, 0, 1)?
        .squeeze(2)?
        .to_dtype(DType::F32)?
        .to_vec3()?;
    let mut out = Vec::with_capacity(b);
    for views in tok {
        let norms: Vec<f64> = views
            .iter()
            .map(|v| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt())
            .collect();
        let unit: Vec<Vec<f64>> = views
            .iter()
            .zip(&norms)
            .map(|(v, n)| v.iter().map(|&a| a as f64 / n).collect())
            .collect();
        let sim = |i: usize, j: usize| -> f64 {
            let d: f64 = unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum();
            if i == j {
                d - 1.0
            } else {
                d
            }
        };
        let idx = match strategy {
            RefViewStrategy::SaddleBalanced => {
                let sim_score: Vec<f64> = (0..s)
                    .map(|i| (0..s).map(|j| sim(i, j)).sum::<f64>() / (s - 1) as f64)
                    .collect();
                let var: Vec<f64> = unit
                    .iter()
                    .map(|u| {
                        let c = u.len() as f64;
                        let m = u.iter().sum::<f64>() / c;
                        u.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (c - 1.0)
                    })
                    .collect();
                let normalize = |m: &[f64]| -> Vec<f64> {
                    let lo = m.iter().cloned().fold(f64::INFINITY, f64::min);
                    let hi = m.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    m.iter().map(|v| (v - lo) / (hi - lo + 1e-8)).collect()
                };
                let (a, bn, c) = (normalize(&sim_score), normalize(&norms), normalize(&var));
                let score: Vec<f64> = (0..s)
                    .map(|i| (a[i] - 0.5).abs() + (bn[i] - 0.5).abs() + (c[i] - 0.5).abs())
                    .collect();
                argmin(&score)
            }
            RefViewStrategy::SaddleSimRange => {
                let range: Vec<f64> = (0..s)
                    .map(|i| {
                        let row: Vec<f64> = (0..s).map(|j| sim(i, j)).collect();
                        let hi = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let lo = row.iter().cloned().fold(f64::INFINITY, f64::min);
                        hi - lo
                    })
                    .collect();
                let neg: Vec<f64> = range.iter().map(|v| -v).collect();
                argmin(&neg)
            }
            _ => unreachable!(),
        };
        out.push(idx);
    }
    Ok(out)
}

fn argmin(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x < v[best] {
            best = i;
        }
    }
    best
}

/// Order of the views with `r` first: [r, 0, 1, .., r-1, r+1, ..].
pub fn reorder_indices(s: usize, r: usize) -> Vec<u32> {
    let mut v = vec![r as u32];
    v.extend((0..s).filter(|&i| i != r).map(|i| i as u32));
    v
}

/// Inverse permutation of [`reorder_indices`].
pub fn restore_indices(s: usize, r: usize) -> Vec<u32> {
    (0..s)
        .map(|t| {
            if t < r {
                t as u32 + 1
            } else if t == r {
                0
            } else {
                t as u32
            }
        })
        .collect()
}

/// Gather views along dim 1 per batch element. `x`: (B, S, ...).
pub fn gather_views(x: &Tensor, per_batch: &[Vec<u32>]) -> Result<Tensor> {
    let dev = x.device();
    let parts = per_batch
        .iter()
        .enumerate()
        .map(|(bi, idx)| {
            let ids = Tensor::new(idx.as_slice(), dev)?;
            x.narrow(0, bi, 1)?.index_select(&ids, 1)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn reorder_restore_roundtrip() {
        for s in 1..6 {
            for r in 0..s {
                let f = reorder_indices(s, r);
                let g = restore_indices(s, r);
                let composed: Vec<u32> = g.iter().map(|&i| f[i as usize]).collect();
                assert_eq!(composed, (0..s as u32).collect::<Vec<_>>(), "s={s} r={r}");
            }
        }
    }
}
