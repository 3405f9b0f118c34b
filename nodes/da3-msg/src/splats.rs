//! 3D Gaussian splats of one view (the DA3 node's `gaussians` output, models with a Gaussian
//! head): a `Struct` array with one row per pixel of the view (row-major), all `Float32`:
//! `x, y, z` (centre, world frame), `scale_0..2` (standard deviations), `rot_0..3` (world
//! rotation, the reference's quaternion order: vector part first, real part last), `opacity`
//! (0..1), `sh_0..sh_<3*d_sh-1>` (SH colour, world frame, `[channel][coefficient]`) and `depth`
//! (the view's predicted depth at that pixel, which the `gs_ply` export prunes by).
//! Metadata: `primitive: gaussians`, `width`, `height` (the pixel grid), `is_metric` and the
//! frame keys.

use std::sync::Arc;

use da3_io::gaussians::Gaussians;

use crate::arrow::array::{Array, ArrayRef, Float32Array, StructArray};
use crate::arrow::datatypes::{DataType, Field};
use crate::error::{MsgError, Result};
use crate::keys;
use crate::meta::{opt_bool, req_dim, FrameInfo};
use dora_node_api::{MetadataParameters, Parameter};

const LAYOUT: &str = "Struct{x,y,z, scale_0..2, rot_0..3, opacity, sh_0.., depth: Float32}";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Splats {
    /// One view's Gaussians (`views` 1), one per pixel.
    pub gaussians: Gaussians,
    /// Depth per pixel (`width * height`).
    pub depth: Vec<f32>,
    pub info: FrameInfo,
    pub is_metric: bool,
}

impl Splats {
    pub fn len(&self) -> usize {
        self.gaussians.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gaussians.is_empty()
    }

    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let g = &self.gaussians;
        let mut params = MetadataParameters::new();
        params.insert(
            keys::PRIMITIVE.into(),
            Parameter::String("gaussians".into()),
        );
        params.insert(keys::WIDTH.into(), Parameter::Integer(g.width as i64));
        params.insert(keys::HEIGHT.into(), Parameter::Integer(g.height as i64));
        params.insert(keys::IS_METRIC.into(), Parameter::Bool(self.is_metric));
        self.info.write(&mut params);
        let mut cols: Vec<(String, Vec<f32>)> = Vec::new();
        for (i, n) in ["x", "y", "z"].iter().enumerate() {
            cols.push((n.to_string(), g.means.iter().map(|p| p[i]).collect()));
        }
        for i in 0..3 {
            cols.push((
                format!("scale_{i}"),
                g.scales.iter().map(|p| p[i]).collect(),
            ));
        }
        for i in 0..4 {
            cols.push((
                format!("rot_{i}"),
                g.rotations.iter().map(|p| p[i]).collect(),
            ));
        }
        cols.push(("opacity".into(), g.opacities.clone()));
        let k = 3 * g.d_sh;
        for i in 0..k {
            let c = g
                .harmonics
                .iter()
                .skip(i)
                .step_by(k.max(1))
                .copied()
                .collect();
            cols.push((format!("sh_{i}"), c));
        }
        cols.push(("depth".into(), self.depth.clone()));
        let fields: Vec<(Arc<Field>, ArrayRef)> = cols
            .into_iter()
            .map(|(n, v)| {
                (
                    Arc::new(Field::new(n, DataType::Float32, false)),
                    Arc::new(Float32Array::from(v)) as ArrayRef,
                )
            })
            .collect();
        (Arc::new(StructArray::from(fields)), params)
    }

    pub fn from_message(data: &dyn Array, params: &MetadataParameters) -> Result<Self> {
        let s = data.as_any().downcast_ref::<StructArray>().ok_or_else(|| {
            MsgError::WrongArrowType {
                expected: LAYOUT,
                found: format!("{}", data.data_type()),
            }
        })?;
        let (width, height) = (
            req_dim(params, keys::WIDTH)?,
            req_dim(params, keys::HEIGHT)?,
        );
        let n = width as usize * height as usize;
        if s.len() != n {
            return Err(MsgError::LengthMismatch {
                expected: n,
                got: s.len(),
                unit: "Gaussians",
            });
        }
        let col = |name: &str| -> Result<&[f32]> {
            let c = s
                .column_by_name(name)
                .ok_or_else(|| MsgError::WrongArrowType {
                    expected: LAYOUT,
                    found: format!("{} (no field `{name}`)", data.data_type()),
                })?;
            crate::depth::f32_payload(c.as_ref())
        };
        let sh_cols = s
            .column_names()
            .iter()
            .filter(|c| c.starts_with("sh_"))
            .count();
        if sh_cols == 0 || sh_cols % 3 != 0 {
            return Err(MsgError::WrongArrowType {
                expected: LAYOUT,
                found: format!("{sh_cols} sh_ fields (3 per SH coefficient)"),
            });
        }
        let cols3 = |p: &str| -> Result<Vec<[f32; 3]>> {
            let (a, b, c) = (
                col(&format!("{p}0"))?,
                col(&format!("{p}1"))?,
                col(&format!("{p}2"))?,
            );
            Ok((0..n).map(|i| [a[i], b[i], c[i]]).collect())
        };
        let (x, y, z) = (col("x")?, col("y")?, col("z")?);
        let r: Vec<&[f32]> = (0..4)
            .map(|i| col(&format!("rot_{i}")))
            .collect::<Result<_>>()?;
        let sh: Vec<&[f32]> = (0..sh_cols)
            .map(|i| col(&format!("sh_{i}")))
            .collect::<Result<_>>()?;
        let gaussians = Gaussians {
            views: 1,
            height: height as usize,
            width: width as usize,
            means: (0..n).map(|i| [x[i], y[i], z[i]]).collect(),
            scales: cols3("scale_")?,
            rotations: (0..n)
                .map(|i| [r[0][i], r[1][i], r[2][i], r[3][i]])
                .collect(),
            harmonics: (0..n).flat_map(|i| sh.iter().map(move |c| c[i])).collect(),
            d_sh: sh_cols / 3,
            opacities: col("opacity")?.to_vec(),
        };
        Ok(Self {
            gaussians,
            depth: col("depth")?.to_vec(),
            info: FrameInfo::read(params)?,
            is_metric: opt_bool(params, keys::IS_METRIC)?.unwrap_or(false),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Splats {
        let (w, h) = (3, 2);
        let n = w * h;
        Splats {
            gaussians: Gaussians {
                views: 1,
                height: h,
                width: w,
                means: (0..n).map(|i| [i as f32, -1.0, 2.5]).collect(),
                scales: vec![[0.1, 0.2, 0.3]; n],
                rotations: vec![[0.0, 0.6, 0.0, 0.8]; n],
                harmonics: (0..n * 12).map(|i| i as f32 * 0.5).collect(),
                d_sh: 4,
                opacities: (0..n).map(|i| i as f32 / 10.0).collect(),
            },
            depth: (0..n).map(|i| 1.0 + i as f32).collect(),
            info: FrameInfo {
                frame_id: Some(3),
                ..Default::default()
            },
            is_metric: true,
        }
    }

    #[test]
    fn round_trip_splats() {
        let s = sample();
        let (arr, params) = s.to_message();
        assert_eq!(Splats::from_message(arr.as_ref(), &params).unwrap(), s);
        // a grid that disagrees with the rows
        let mut p = params.clone();
        p.insert(keys::WIDTH.into(), Parameter::Integer(4));
        assert!(matches!(
            Splats::from_message(arr.as_ref(), &p),
            Err(MsgError::LengthMismatch { .. })
        ));
        let not_struct = Float32Array::from(vec![1.0f32]);
        assert!(Splats::from_message(&not_struct, &params).is_err());
    }
}
