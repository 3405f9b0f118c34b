//! Camera decoder: camera token (2C) -> pose encoding [t(3), quat(4), fov(2)].

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{linear, Linear};

#[derive(Debug, Clone)]
pub struct CameraDec {
    fc0: Linear,
    fc1: Linear,
    fc_t: Linear,
    fc_qvec: Linear,
    fc_fov: Linear,
}

impl CameraDec {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let bb = vb.pp("backbone");
        Ok(Self {
            fc0: linear(dim, dim, bb.pp(0))?,
            fc1: linear(dim, dim, bb.pp(2))?,
            fc_t: linear(dim, 3, vb.pp("fc_t"))?,
            fc_qvec: linear(dim, 4, vb.pp("fc_qvec"))?,
            fc_fov: linear(dim, 2, vb.pp("fc_fov").pp(0))?,
        })
    }
}

impl Module for CameraDec {
    /// (B, S, dim) -> (B, S, 9).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.fc1.forward(&self.fc0.forward(x)?.relu()?)?.relu()?;
        let t = self.fc_t.forward(&f)?;
        let q = self.fc_qvec.forward(&f)?;
        let fov = self.fc_fov.forward(&f)?.relu()?;
        Tensor::cat(&[&t, &q, &fov], candle_core::D::Minus1)
    }
}
