//! Coloured point clouds: a `Struct` array with one row per point and the
//! fields `x, y, z` (Float32, world frame) and `r, g, b` (UInt8).

use std::sync::Arc;

use crate::arrow::array::{Array, ArrayRef, Float32Array, StructArray, UInt8Array};
use crate::arrow::datatypes::{DataType, Field};
use crate::error::{MsgError, Result};
use crate::keys;
use crate::meta::{opt_bool, FrameInfo};
use dora_node_api::{MetadataParameters, Parameter};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PointCloud {
    /// `[x, y, z]` per point, world frame.
    pub xyz: Vec<[f32; 3]>,
    /// `[r, g, b]` per point.
    pub rgb: Vec<[u8; 3]>,
    pub info: FrameInfo,
    pub is_metric: bool,
}

impl PointCloud {
    pub fn len(&self) -> usize {
        self.xyz.len()
    }

    pub fn is_empty(&self) -> bool {
        self.xyz.is_empty()
    }

    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let mut params = MetadataParameters::new();
        params.insert(keys::PRIMITIVE.into(), Parameter::String("points".into()));
        params.insert(keys::IS_METRIC.into(), Parameter::Bool(self.is_metric));
        self.info.write(&mut params);
        let f = |i: usize| -> ArrayRef {
            Arc::new(Float32Array::from(
                self.xyz.iter().map(|p| p[i]).collect::<Vec<_>>(),
            ))
        };
        let c = |i: usize| -> ArrayRef {
            Arc::new(UInt8Array::from(
                self.rgb.iter().map(|p| p[i]).collect::<Vec<_>>(),
            ))
        };
        let fields: Vec<(Arc<Field>, ArrayRef)> = vec![
            (Arc::new(Field::new("x", DataType::Float32, false)), f(0)),
            (Arc::new(Field::new("y", DataType::Float32, false)), f(1)),
            (Arc::new(Field::new("z", DataType::Float32, false)), f(2)),
            (Arc::new(Field::new("r", DataType::UInt8, false)), c(0)),
            (Arc::new(Field::new("g", DataType::UInt8, false)), c(1)),
            (Arc::new(Field::new("b", DataType::UInt8, false)), c(2)),
        ];
        (Arc::new(StructArray::from(fields)), params)
    }

    pub fn from_message(data: &dyn Array, params: &MetadataParameters) -> Result<Self> {
        let s = data.as_any().downcast_ref::<StructArray>().ok_or_else(|| {
            MsgError::WrongArrowType {
                expected: "Struct{x,y,z: Float32, r,g,b: UInt8}",
                found: format!("{}", data.data_type()),
            }
        })?;
        let col_f = |name: &str| -> Result<&[f32]> {
            let c = s
                .column_by_name(name)
                .ok_or_else(|| MsgError::WrongArrowType {
                    expected: "Struct{x,y,z: Float32, r,g,b: UInt8}",
                    found: format!("{} (no field `{name}`)", data.data_type()),
                })?;
            crate::depth::f32_payload(c.as_ref())
        };
        let col_u = |name: &str| -> Result<&[u8]> {
            let c = s
                .column_by_name(name)
                .ok_or_else(|| MsgError::WrongArrowType {
                    expected: "Struct{x,y,z: Float32, r,g,b: UInt8}",
                    found: format!("{} (no field `{name}`)", data.data_type()),
                })?;
            let a = c.as_any().downcast_ref::<UInt8Array>().ok_or_else(|| {
                MsgError::WrongArrowType {
                    expected: "UInt8",
                    found: format!("{}", c.data_type()),
                }
            })?;
            Ok(a.values())
        };
        let (x, y, z) = (col_f("x")?, col_f("y")?, col_f("z")?);
        let (r, g, b) = (col_u("r")?, col_u("g")?, col_u("b")?);
        let xyz = (0..s.len()).map(|i| [x[i], y[i], z[i]]).collect();
        let rgb = (0..s.len()).map(|i| [r[i], g[i], b[i]]).collect();
        Ok(Self {
            xyz,
            rgb,
            info: FrameInfo::read(params)?,
            is_metric: opt_bool(params, keys::IS_METRIC)?.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_points() {
        let p = PointCloud {
            xyz: vec![[1.0, 2.0, 3.0], [-1.0, 0.5, 7.0]],
            rgb: vec![[255, 0, 10], [1, 2, 3]],
            info: FrameInfo {
                frame_id: Some(9),
                stamp_ns: None,
                camera: Some("c".into()),
                last: false,
            },
            is_metric: false,
        };
        let (arr, params) = p.to_message();
        assert_eq!(PointCloud::from_message(arr.as_ref(), &params).unwrap(), p);
        let not_struct = Float32Array::from(vec![1.0f32]);
        assert!(matches!(
            PointCloud::from_message(&not_struct, &params),
            Err(MsgError::WrongArrowType { .. })
        ));
    }
}
