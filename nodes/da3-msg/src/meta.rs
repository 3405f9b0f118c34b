//! Typed access to metadata parameters, and the pieces of metadata that
//! several messages share (stream identity, intrinsics, pose).

use da3_io::geometry::{camera_to_world, matrix_from_quat, quat_from_matrix};

use crate::error::{MsgError, Result};
use crate::keys;
use dora_node_api::{MetadataParameters, Parameter};

pub(crate) fn type_name(p: &Parameter) -> String {
    match p {
        Parameter::Bool(_) => "Bool",
        Parameter::Integer(_) => "Integer",
        Parameter::String(_) => "String",
        Parameter::ListInt(_) => "ListInt",
        Parameter::Float(_) => "Float",
        Parameter::ListFloat(_) => "ListFloat",
        Parameter::ListString(_) => "ListString",
        Parameter::Timestamp(_) => "Timestamp",
        #[allow(unreachable_patterns)]
        _ => "unknown",
    }
    .to_string()
}

/// An optional integer; a present key of another type is an error.
pub fn opt_int(params: &MetadataParameters, key: &'static str) -> Result<Option<i64>> {
    match params.get(key) {
        None => Ok(None),
        Some(Parameter::Integer(v)) => Ok(Some(*v)),
        // Some producers (Python, JSON) send whole numbers as floats.
        Some(Parameter::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(*f as i64)),
        Some(other) => Err(MsgError::WrongType {
            key,
            expected: "Integer",
            found: type_name(other),
        }),
    }
}

/// An optional non-negative integer.
pub fn opt_u64(params: &MetadataParameters, key: &'static str) -> Result<Option<u64>> {
    match opt_int(params, key)? {
        None => Ok(None),
        Some(v) if v >= 0 => Ok(Some(v as u64)),
        Some(v) => Err(MsgError::InvalidValue {
            key,
            reason: format!("{v} is negative"),
        }),
    }
}

/// A required positive dimension (width/height).
pub fn req_dim(params: &MetadataParameters, key: &'static str) -> Result<u32> {
    let v = opt_int(params, key)?.ok_or(MsgError::MissingKey { key })?;
    if v <= 0 || v > u32::MAX as i64 {
        return Err(MsgError::InvalidValue {
            key,
            reason: format!("{v} is not a positive size"),
        });
    }
    Ok(v as u32)
}

/// An optional string.
pub fn opt_str<'a>(params: &'a MetadataParameters, key: &'static str) -> Result<Option<&'a str>> {
    match params.get(key) {
        None => Ok(None),
        Some(Parameter::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(MsgError::WrongType {
            key,
            expected: "String",
            found: type_name(other),
        }),
    }
}

/// An optional boolean.
pub fn opt_bool(params: &MetadataParameters, key: &'static str) -> Result<Option<bool>> {
    match params.get(key) {
        None => Ok(None),
        Some(Parameter::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(MsgError::WrongType {
            key,
            expected: "Bool",
            found: type_name(other),
        }),
    }
}

/// An optional list of exactly `N` finite floats (ListFloat, or ListInt).
pub fn opt_floats<const N: usize>(
    params: &MetadataParameters,
    key: &'static str,
) -> Result<Option<[f64; N]>> {
    let values: Vec<f64> = match params.get(key) {
        None => return Ok(None),
        Some(Parameter::ListFloat(v)) => v.clone(),
        Some(Parameter::ListInt(v)) => v.iter().map(|&x| x as f64).collect(),
        Some(other) => {
            return Err(MsgError::WrongType {
                key,
                expected: "ListFloat",
                found: type_name(other),
            })
        }
    };
    if values.len() != N {
        return Err(MsgError::InvalidValue {
            key,
            reason: format!("expected {N} values, found {}", values.len()),
        });
    }
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(MsgError::InvalidValue {
            key,
            reason: format!("{bad} is not finite"),
        });
    }
    let mut out = [0.0; N];
    out.copy_from_slice(&values);
    Ok(Some(out))
}

/// Which stream a message belongs to and when it was captured.
///
/// Every output of the DA3 node copies this from the frame it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// Monotonic frame number within the stream (`frame_id`, or `seq` on input).
    pub frame_id: Option<u64>,
    /// Capture time, nanoseconds since the UNIX epoch.
    pub stamp_ns: Option<u64>,
    /// Camera / stream name.
    pub camera: Option<String>,
    /// `true` on the last frame of a finite stream.
    pub last: bool,
}

impl FrameInfo {
    pub fn read(params: &MetadataParameters) -> Result<Self> {
        let frame_id = match opt_u64(params, keys::FRAME_ID)? {
            Some(v) => Some(v),
            None => opt_u64(params, keys::SEQ)?,
        };
        Ok(Self {
            frame_id,
            stamp_ns: opt_u64(params, keys::STAMP_NS)?,
            camera: opt_str(params, keys::CAMERA)?.map(str::to_owned),
            last: opt_bool(params, keys::LAST)?.unwrap_or(false),
        })
    }

    pub fn write(&self, params: &mut MetadataParameters) {
        if let Some(v) = self.frame_id {
            params.insert(keys::FRAME_ID.into(), Parameter::Integer(v as i64));
        }
        if let Some(v) = self.stamp_ns {
            params.insert(keys::STAMP_NS.into(), Parameter::Integer(v as i64));
        }
        if let Some(c) = &self.camera {
            params.insert(keys::CAMERA.into(), Parameter::String(c.clone()));
        }
        if self.last {
            params.insert(keys::LAST.into(), Parameter::Bool(true));
        }
    }
}

/// Pinhole intrinsics in pixels of the image they travel with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intrinsics {
    pub fx: f64,
    pub fy: f64,
    pub cx: f64,
    pub cy: f64,
}

impl Intrinsics {
    /// Reads `focal` + `principal_point`; both or neither must be present.
    pub fn read(params: &MetadataParameters) -> Result<Option<Self>> {
        let focal = opt_floats::<2>(params, keys::FOCAL)?;
        let pp = opt_floats::<2>(params, keys::PRINCIPAL_POINT)?;
        match (focal, pp) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(MsgError::MissingKey {
                key: keys::PRINCIPAL_POINT,
            }),
            (None, Some(_)) => Err(MsgError::MissingKey { key: keys::FOCAL }),
            (Some([fx, fy]), Some([cx, cy])) => {
                if fx <= 0.0 || fy <= 0.0 {
                    return Err(MsgError::InvalidValue {
                        key: keys::FOCAL,
                        reason: format!("focal lengths must be positive, got [{fx}, {fy}]"),
                    });
                }
                Ok(Some(Self { fx, fy, cx, cy }))
            }
        }
    }

    pub fn write(&self, params: &mut MetadataParameters) {
        params.insert(
            keys::FOCAL.into(),
            Parameter::ListFloat(vec![self.fx, self.fy]),
        );
        params.insert(
            keys::PRINCIPAL_POINT.into(),
            Parameter::ListFloat(vec![self.cx, self.cy]),
        );
    }

    /// From a row-major 3x3 `K` (`fx` at 0, `cx` at 2, `fy` at 4, `cy` at 5;
    /// skew and the last row are not read): the one place a matrix becomes
    /// [`Intrinsics`].
    pub fn from_matrix(k: &[f64; 9]) -> Self {
        Self {
            fx: k[0],
            fy: k[4],
            cx: k[2],
            cy: k[5],
        }
    }

    /// Row-major 3x3 matrix.
    pub fn matrix(&self) -> [f64; 9] {
        [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]
    }

    /// The same camera seen in an image scaled by `(sx, sy)` (pixel centres kept).
    pub fn scaled(&self, sx: f64, sy: f64) -> Self {
        Self {
            fx: self.fx * sx,
            fy: self.fy * sy,
            cx: self.cx * sx,
            cy: self.cy * sy,
        }
    }
}

/// Camera pose, camera-to-world: the camera centre and orientation in the world frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    /// Camera centre `[x, y, z]` in the world frame.
    pub position: [f64; 3],
    /// Camera-to-world rotation, unit quaternion `[x, y, z, w]`.
    pub orientation: [f64; 4],
}

impl Pose {
    pub fn read(params: &MetadataParameters) -> Result<Option<Self>> {
        let p = opt_floats::<3>(params, keys::CAMERA_POSITION)?;
        let q = opt_floats::<4>(params, keys::CAMERA_ORIENTATION)?;
        match (p, q) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(MsgError::MissingKey {
                key: keys::CAMERA_ORIENTATION,
            }),
            (None, Some(_)) => Err(MsgError::MissingKey {
                key: keys::CAMERA_POSITION,
            }),
            (Some(position), Some(orientation)) => {
                let n = orientation.iter().map(|v| v * v).sum::<f64>().sqrt();
                if (n - 1.0).abs() > 1e-3 {
                    return Err(MsgError::InvalidValue {
                        key: keys::CAMERA_ORIENTATION,
                        reason: format!("quaternion norm is {n}, expected 1"),
                    });
                }
                Ok(Some(Self {
                    position,
                    orientation,
                }))
            }
        }
    }

    pub fn write(&self, params: &mut MetadataParameters) {
        params.insert(
            keys::CAMERA_POSITION.into(),
            Parameter::ListFloat(self.position.to_vec()),
        );
        params.insert(
            keys::CAMERA_ORIENTATION.into(),
            Parameter::ListFloat(self.orientation.to_vec()),
        );
    }

    /// Camera-to-world pose from a world-to-camera `[R | t]` (row-major 3x4, OpenCV).
    ///
    /// The centre is `-Rᵀ t` and the orientation is the quaternion of `Rᵀ`.
    pub fn from_world_to_camera(e: &[f64; 12]) -> Self {
        let (rt, c) = camera_to_world(e);
        Self {
            position: c,
            orientation: quat_from_matrix(&rt),
        }
    }

    /// Row-major 3x3 camera-to-world rotation of the quaternion.
    pub fn rotation(&self) -> [[f64; 3]; 3] {
        matrix_from_quat(&self.orientation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_info_round_trip_and_seq_alias() {
        let info = FrameInfo {
            frame_id: Some(12),
            stamp_ns: Some(1_000_000_007),
            camera: Some("rear".into()),
            last: true,
        };
        let mut p = MetadataParameters::new();
        info.write(&mut p);
        assert_eq!(FrameInfo::read(&p).unwrap(), info);
        let mut p = MetadataParameters::new();
        p.insert(keys::SEQ.into(), Parameter::Integer(4));
        assert_eq!(FrameInfo::read(&p).unwrap().frame_id, Some(4));
        assert_eq!(
            FrameInfo::read(&MetadataParameters::new()).unwrap(),
            FrameInfo::default()
        );
    }

    #[test]
    fn every_key_rejects_wrong_types() {
        let cases: Vec<(&str, Parameter)> = vec![
            (keys::FRAME_ID, Parameter::String("1".into())),
            (keys::SEQ, Parameter::Bool(true)),
            (keys::STAMP_NS, Parameter::ListInt(vec![1])),
            (keys::CAMERA, Parameter::Integer(3)),
            (keys::LAST, Parameter::String("yes".into())),
        ];
        for (key, value) in cases {
            let mut p = MetadataParameters::new();
            p.insert(key.into(), value);
            let err = FrameInfo::read(&p).unwrap_err();
            assert!(
                matches!(err, MsgError::WrongType { key: k, .. } if k == key),
                "{key}: {err}"
            );
        }
        let mut p = MetadataParameters::new();
        p.insert(keys::FRAME_ID.into(), Parameter::Integer(-1));
        assert!(matches!(
            FrameInfo::read(&p),
            Err(MsgError::InvalidValue {
                key: "frame_id",
                ..
            })
        ));
        // Whole floats are accepted for integers (Python/JSON producers), fractions are not.
        let mut p = MetadataParameters::new();
        p.insert(keys::FRAME_ID.into(), Parameter::Float(3.0));
        assert_eq!(FrameInfo::read(&p).unwrap().frame_id, Some(3));
        p.insert(keys::FRAME_ID.into(), Parameter::Float(3.5));
        assert!(FrameInfo::read(&p).is_err());
    }

    #[test]
    fn intrinsics_and_pose_keys() {
        let k = Intrinsics {
            fx: 1.0,
            fy: 2.0,
            cx: 3.0,
            cy: 4.0,
        };
        let mut p = MetadataParameters::new();
        k.write(&mut p);
        assert_eq!(Intrinsics::read(&p).unwrap(), Some(k));
        assert_eq!(k.matrix(), [1.0, 0.0, 3.0, 0.0, 2.0, 4.0, 0.0, 0.0, 1.0]);
        assert_eq!(Intrinsics::from_matrix(&k.matrix()), k);
        assert_eq!(
            k.scaled(2.0, 0.5),
            Intrinsics {
                fx: 2.0,
                fy: 1.0,
                cx: 6.0,
                cy: 2.0
            }
        );
        let mut q = p.clone();
        q.remove(keys::PRINCIPAL_POINT);
        assert_eq!(
            Intrinsics::read(&q),
            Err(MsgError::MissingKey {
                key: "principal_point"
            })
        );
        let mut q = p.clone();
        q.insert(keys::FOCAL.into(), Parameter::ListFloat(vec![1.0]));
        assert!(matches!(
            Intrinsics::read(&q),
            Err(MsgError::InvalidValue { key: "focal", .. })
        ));
        let mut q = p.clone();
        q.insert(
            keys::FOCAL.into(),
            Parameter::ListFloat(vec![f64::NAN, 1.0]),
        );
        assert!(matches!(
            Intrinsics::read(&q),
            Err(MsgError::InvalidValue { key: "focal", .. })
        ));
        let mut q = p.clone();
        q.insert(keys::FOCAL.into(), Parameter::ListFloat(vec![-1.0, 1.0]));
        assert!(matches!(
            Intrinsics::read(&q),
            Err(MsgError::InvalidValue { key: "focal", .. })
        ));
        let mut q = p.clone();
        q.insert(
            keys::PRINCIPAL_POINT.into(),
            Parameter::String("0,0".into()),
        );
        assert!(matches!(
            Intrinsics::read(&q),
            Err(MsgError::WrongType {
                key: "principal_point",
                ..
            })
        ));
        let mut q = p;
        q.insert(keys::FOCAL.into(), Parameter::ListInt(vec![5, 6]));
        assert_eq!(Intrinsics::read(&q).unwrap().unwrap().fy, 6.0);

        let pose = Pose {
            position: [1.0, 2.0, 3.0],
            orientation: [0.0, 0.0, 0.0, 1.0],
        };
        let mut p = MetadataParameters::new();
        pose.write(&mut p);
        assert_eq!(Pose::read(&p).unwrap(), Some(pose));
        let mut q = p.clone();
        q.remove(keys::CAMERA_POSITION);
        assert_eq!(
            Pose::read(&q),
            Err(MsgError::MissingKey {
                key: "camera_position"
            })
        );
        let mut q = p;
        q.insert(keys::CAMERA_POSITION.into(), Parameter::Bool(false));
        assert!(matches!(
            Pose::read(&q),
            Err(MsgError::WrongType {
                key: "camera_position",
                ..
            })
        ));
    }
}
