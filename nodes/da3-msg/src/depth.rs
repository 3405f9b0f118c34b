//! Depth and confidence maps: `Float32`, row-major `height x width`.

use std::sync::Arc;

use crate::arrow::array::{Array, ArrayRef, Float32Array};
use crate::arrow::datatypes::DataType;
use crate::error::{MsgError, Result};
use crate::image_frame::ImageFrame;
use crate::keys;
use crate::meta::{opt_bool, opt_str, req_dim, FrameInfo, Intrinsics, Pose};
use dora_node_api::{MetadataParameters, Parameter};

/// What a [`DepthMap`] holds (`primitive` metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthKind {
    /// Depth along the optical axis: metres when `is_metric`, else relative units.
    Depth,
    /// Per-pixel confidence of the depth (higher is better).
    Confidence,
}

impl DepthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Depth => "depth",
            Self::Confidence => "confidence",
        }
    }
}

/// A depth or confidence map with the camera that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthMap {
    pub kind: DepthKind,
    pub width: u32,
    pub height: u32,
    pub values: Vec<f32>,
    pub info: FrameInfo,
    /// Intrinsics at `width x height`.
    pub intrinsics: Option<Intrinsics>,
    /// Camera-to-world pose.
    pub pose: Option<Pose>,
    /// Metres (`true`) or relative depth (`false`).
    pub is_metric: bool,
}

impl DepthMap {
    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let mut params = MetadataParameters::new();
        params.insert(
            keys::PRIMITIVE.into(),
            Parameter::String(self.kind.as_str().into()),
        );
        params.insert(keys::WIDTH.into(), Parameter::Integer(self.width as i64));
        params.insert(keys::HEIGHT.into(), Parameter::Integer(self.height as i64));
        params.insert(keys::IS_METRIC.into(), Parameter::Bool(self.is_metric));
        self.info.write(&mut params);
        if let Some(k) = &self.intrinsics {
            k.write(&mut params);
        }
        if let Some(p) = &self.pose {
            p.write(&mut params);
        }
        let arr: ArrayRef = Arc::new(Float32Array::from(self.values.clone()));
        (arr, params)
    }

    pub fn from_message(data: &dyn Array, params: &MetadataParameters) -> Result<Self> {
        let kind = match opt_str(params, keys::PRIMITIVE)? {
            Some("depth") => DepthKind::Depth,
            Some("confidence") => DepthKind::Confidence,
            Some(other) => {
                return Err(MsgError::InvalidValue {
                    key: keys::PRIMITIVE,
                    reason: format!("expected `depth` or `confidence`, found `{other}`"),
                })
            }
            None => {
                return Err(MsgError::MissingKey {
                    key: keys::PRIMITIVE,
                })
            }
        };
        let width = req_dim(params, keys::WIDTH)?;
        let height = req_dim(params, keys::HEIGHT)?;
        let values = f32_payload(data)?;
        let expected = width as usize * height as usize;
        if values.len() != expected {
            return Err(MsgError::LengthMismatch {
                expected,
                got: values.len(),
                unit: "values",
            });
        }
        Ok(Self {
            kind,
            width,
            height,
            values: values.to_vec(),
            info: FrameInfo::read(params)?,
            intrinsics: Intrinsics::read(params)?,
            pose: Pose::read(params)?,
            is_metric: opt_bool(params, keys::IS_METRIC)?.unwrap_or(false),
        })
    }
}

impl DepthMap {
    /// The depth map of a `mono16` image frame: millimetres to metres
    /// (`is_metric`), 0 (no reading) kept as 0, which every sink takes as
    /// invalid depth. Intrinsics and the common keys come from the frame.
    pub fn from_mono16(frame: &ImageFrame) -> Result<Self> {
        let values = frame
            .mono16_values()?
            .into_iter()
            .map(|mm| mm as f32 / 1000.0)
            .collect();
        Ok(Self {
            kind: DepthKind::Depth,
            width: frame.width,
            height: frame.height,
            values,
            info: frame.info.clone(),
            intrinsics: frame.intrinsics,
            pose: None,
            is_metric: true,
        })
    }
}

pub(crate) fn f32_payload(data: &dyn Array) -> Result<&[f32]> {
    if data.data_type() != &DataType::Float32 {
        return Err(MsgError::WrongArrowType {
            expected: "Float32",
            found: format!("{}", data.data_type()),
        });
    }
    let arr = data
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or(MsgError::WrongArrowType {
            expected: "Float32",
            found: "an unknown Float32 array type".into(),
        })?;
    if arr.null_count() > 0 {
        return Err(MsgError::Nulls);
    }
    Ok(arr.values())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::array::UInt8Array;

    fn sample(kind: DepthKind) -> DepthMap {
        DepthMap {
            kind,
            width: 3,
            height: 2,
            values: vec![1.0, 2.0, 3.5, 4.0, 0.25, 9.0],
            info: FrameInfo {
                frame_id: Some(3),
                stamp_ns: Some(42),
                camera: Some("left".into()),
                last: false,
            },
            intrinsics: Some(Intrinsics {
                fx: 10.0,
                fy: 11.0,
                cx: 1.5,
                cy: 1.0,
            }),
            pose: Some(Pose {
                position: [1.0, -2.0, 0.5],
                orientation: [0.0, 0.0, 0.0, 1.0],
            }),
            is_metric: true,
        }
    }

    #[test]
    fn round_trip_depth_and_confidence() {
        for kind in [DepthKind::Depth, DepthKind::Confidence] {
            let d = sample(kind);
            let (arr, params) = d.to_message();
            assert_eq!(DepthMap::from_message(arr.as_ref(), &params).unwrap(), d);
        }
    }

    #[test]
    fn rejects_bad_depth_messages() {
        let d = sample(DepthKind::Depth);
        let (arr, params) = d.to_message();
        let mut p = params.clone();
        p.insert(keys::PRIMITIVE.into(), Parameter::String("image".into()));
        assert!(matches!(
            DepthMap::from_message(arr.as_ref(), &p),
            Err(MsgError::InvalidValue {
                key: "primitive",
                ..
            })
        ));
        let mut p = params.clone();
        p.insert(keys::WIDTH.into(), Parameter::Integer(4));
        assert!(matches!(
            DepthMap::from_message(arr.as_ref(), &p),
            Err(MsgError::LengthMismatch { .. })
        ));
        let bytes = UInt8Array::from(vec![0u8; 6]);
        assert!(matches!(
            DepthMap::from_message(&bytes, &params),
            Err(MsgError::WrongArrowType { .. })
        ));
        let mut p = params.clone();
        p.insert(keys::IS_METRIC.into(), Parameter::Integer(1));
        assert!(matches!(
            DepthMap::from_message(arr.as_ref(), &p),
            Err(MsgError::WrongType {
                key: "is_metric",
                ..
            })
        ));
        let mut p = params;
        p.insert(
            keys::CAMERA_ORIENTATION.into(),
            Parameter::ListFloat(vec![0.0, 0.0, 0.0, 2.0]),
        );
        assert!(matches!(
            DepthMap::from_message(arr.as_ref(), &p),
            Err(MsgError::InvalidValue {
                key: "camera_orientation",
                ..
            })
        ));
    }
}
