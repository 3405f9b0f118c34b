//! Nested model: the any-view network plus a metric network; the any-view depth and camera
//! translations are rescaled to metres by least squares against the metric depth
//! (metric = raw * focal / 300), and sky pixels are set to a far depth.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::NetConfig;
use super::net::{quantile, Da3Net, SKY_THRESHOLD};
use crate::{Da3Output, ForwardOptions};

/// Depth of the metric model in metres: raw * focal / 300, focal = (fx + fy) / 2 per view.
pub fn apply_metric_scaling(depth: &Tensor, intrinsics: &Tensor) -> Result<Tensor> {
    let fx = intrinsics.narrow(2, 0, 1)?.narrow(3, 0, 1)?;
    let fy = intrinsics.narrow(2, 1, 1)?.narrow(3, 1, 1)?;
    let f = ((fx + fy)? / 2.0)?; // (B, S, 1, 1)
    depth.broadcast_mul(&(f / 300.0)?.to_dtype(depth.dtype())?)
}

const SKY_DEPTH_CAP: f32 = 200.0;

#[derive(Debug, Clone)]
pub struct NestedDa3 {
    anyview: Da3Net,
    metric: Da3Net,
}

impl NestedDa3 {
    /// `vb` points at `model` (branches under `da3` and `da3_metric`).
    pub fn new(anyview: &NetConfig, metric: &NetConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            anyview: Da3Net::new(anyview, vb.pp("da3"))?,
            metric: Da3Net::new(metric, vb.pp("da3_metric"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, opts: &ForwardOptions) -> eyre::Result<Da3Output> {
        let mut out = self.anyview.forward(x, opts)?;
        let m = self.metric.forward(x, &ForwardOptions::default())?;
        let intr = out
            .intrinsics
            .as_ref()
            .ok_or_else(|| eyre::eyre!("nested: any-view branch gave no intrinsics"))?;
        let metric_depth = apply_metric_scaling(&m.depth, intr)?;
        let sky = m
            .sky
            .as_ref()
            .ok_or_else(|| eyre::eyre!("nested: metric branch gave no sky map"))?;
        let conf_t = out
            .depth_conf
            .as_ref()
            .ok_or_else(|| eyre::eyre!("nested: no depth confidence"))?;

        let shape = out.depth.dims().to_vec();
        let dev = out.depth.device().clone();
        let to_vec =
            |t: &Tensor| -> Result<Vec<f32>> { t.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
        let mut d = to_vec(&out.depth)?;
        let mut conf = to_vec(conf_t)?;
        let md = to_vec(&metric_depth)?;
        let sk = to_vec(sky)?;
        let non_sky: Vec<bool> = sk.iter().map(|&s| s < SKY_THRESHOLD).collect();
        let n_ns = non_sky.iter().filter(|&&v| v).count();
        if n_ns <= 10 {
            eyre::bail!(
                "nested: only {n_ns} non-sky pixels, cannot align the depth to metric scale"
            );
        }
        let mut conf_ns: Vec<f32> = conf
            .iter()
            .zip(&non_sky)
            .filter(|(_, &k)| k)
            .map(|(&c, _)| c)
            .collect();
        let median_conf = quantile(&mut conf_ns, 0.5);
        let (mut num, mut den) = (0f64, 0f64);
        for i in 0..d.len() {
            if conf[i] >= median_conf && non_sky[i] && md[i] > 1e-2 && d[i] > 1e-3 {
                num += md[i] as f64 * d[i] as f64;
                den += d[i] as f64 * d[i] as f64;
            }
        }
        let scale = (num / den.max(1e-12)) as f32;
        for v in d.iter_mut() {
            *v *= scale;
        }
        if let Some(e) = &out.extrinsics {
            let (b, s, r, c) = e.dims4()?;
            let mut ev = to_vec(e)?;
            for m in ev.chunks_mut(r * c) {
                for row in 0..3 {
                    m[row * c + 3] *= scale;
                }
            }
            out.extrinsics = Some(Tensor::from_vec(ev, (b, s, r, c), &dev)?.to_dtype(e.dtype())?);
        }
        let mut d_ns: Vec<f32> = d
            .iter()
            .zip(&non_sky)
            .filter(|(_, &k)| k)
            .map(|(&v, _)| v)
            .collect();
        let far = quantile(&mut d_ns, 0.99).min(SKY_DEPTH_CAP);
        for i in 0..d.len() {
            if !non_sky[i] {
                d[i] = far;
                conf[i] = 1.0;
            }
        }
        let dt = out.depth.dtype();
        out.depth = Tensor::from_vec(d, shape.clone(), &dev)?.to_dtype(dt)?;
        out.depth_conf = Some(Tensor::from_vec(conf, shape, &dev)?.to_dtype(conf_t.dtype())?);
        out.sky = m.sky;
        out.is_metric = true;
        out.scale_factor = Some(scale);
        Ok(out)
    }
}
