//! Camera messages: world-to-camera extrinsics (3x4) and intrinsics (3x3),
//! OpenCV convention, as one `Float64` array of 21 values (row-major
//! extrinsics, then row-major intrinsics), `layout = extrinsics3x4+intrinsics3x3`.

use std::sync::Arc;

use da3_io::geometry::{det3, dot, rotation_of};

use crate::arrow::array::{Array, ArrayRef, Float64Array};
use crate::arrow::datatypes::DataType;
use crate::error::{MsgError, Result};
use crate::keys;
use crate::meta::{opt_bool, opt_str, req_dim, FrameInfo, Intrinsics, Pose};
use dora_node_api::{MetadataParameters, Parameter};

pub const LAYOUT: &str = "extrinsics3x4+intrinsics3x3";

/// The estimated (or given) camera of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraMsg {
    /// World-to-camera `[R | t]`, row-major.
    pub extrinsics: [f64; 12],
    /// `K`, row-major, for an image of `width x height`.
    pub intrinsics: [f64; 9],
    pub width: u32,
    pub height: u32,
    pub info: FrameInfo,
    pub is_metric: bool,
}

/// Checks a world-to-camera `[R | t]` (row-major 3x4): finite, `R` orthonormal
/// with determinant +1 (a rigid motion, so the pose can be inverted).
pub fn check_extrinsics(e: &[f64; 12]) -> std::result::Result<(), String> {
    if e.iter().any(|v| !v.is_finite()) {
        return Err("pose has NaN or infinite values".into());
    }
    let r = rotation_of(e);
    for i in 0..3 {
        for j in 0..3 {
            let want = if i == j { 1.0 } else { 0.0 };
            if (dot(&r[i], &r[j]) - want).abs() > 1e-3 {
                return Err(
                    "pose rotation is not orthonormal (not invertible as a rigid motion)".into(),
                );
            }
        }
    }
    let det = det3(&r);
    if (det - 1.0).abs() > 1e-3 {
        return Err(format!(
            "pose rotation has determinant {det:.3}, expected 1"
        ));
    }
    Ok(())
}

impl CameraMsg {
    /// The geometry every user of a camera relies on, checked once by
    /// [`from_message`](Self::from_message): the pose is a rigid motion
    /// ([`check_extrinsics`]) and the focal lengths are positive.
    fn check_geometry(&self) -> Result<()> {
        check_extrinsics(&self.extrinsics).map_err(|reason| MsgError::InvalidValue {
            key: keys::CAMERA_ORIENTATION,
            reason,
        })?;
        let (fx, fy) = (self.intrinsics[0], self.intrinsics[4]);
        if !(fx > 0.0 && fy > 0.0) {
            return Err(MsgError::InvalidValue {
                key: keys::FOCAL,
                reason: format!("intrinsics have non-positive focal lengths [{fx}, {fy}]"),
            });
        }
        Ok(())
    }

    /// The intrinsics `K` as [`Intrinsics`] (at `width x height`).
    pub fn k(&self) -> Intrinsics {
        Intrinsics::from_matrix(&self.intrinsics)
    }

    /// Camera-to-world pose (the inverse of the extrinsics).
    pub fn pose(&self) -> Pose {
        Pose::from_world_to_camera(&self.extrinsics)
    }

    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let mut params = MetadataParameters::new();
        params.insert(keys::PRIMITIVE.into(), Parameter::String("camera".into()));
        params.insert(keys::LAYOUT.into(), Parameter::String(LAYOUT.into()));
        params.insert(keys::WIDTH.into(), Parameter::Integer(self.width as i64));
        params.insert(keys::HEIGHT.into(), Parameter::Integer(self.height as i64));
        params.insert(keys::IS_METRIC.into(), Parameter::Bool(self.is_metric));
        self.info.write(&mut params);
        self.pose().write(&mut params);
        let mut v = self.extrinsics.to_vec();
        v.extend_from_slice(&self.intrinsics);
        let arr: ArrayRef = Arc::new(Float64Array::from(v));
        (arr, params)
    }

    /// Decodes a camera message and checks its geometry: 21 finite values, a
    /// rigid-motion pose and positive focal lengths (a camera that decodes
    /// can be inverted and projected with; no node checks it again).
    pub fn from_message(data: &dyn Array, params: &MetadataParameters) -> Result<Self> {
        match opt_str(params, keys::LAYOUT)? {
            None | Some(LAYOUT) => {}
            Some(other) => {
                return Err(MsgError::InvalidValue {
                    key: keys::LAYOUT,
                    reason: format!("expected `{LAYOUT}`, found `{other}`"),
                })
            }
        }
        if data.data_type() != &DataType::Float64 {
            return Err(MsgError::WrongArrowType {
                expected: "Float64",
                found: format!("{}", data.data_type()),
            });
        }
        let arr = data
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or(MsgError::WrongArrowType {
                expected: "Float64",
                found: "an unknown Float64 array type".into(),
            })?;
        if arr.null_count() > 0 {
            return Err(MsgError::Nulls);
        }
        let v = arr.values();
        if v.len() != 21 {
            return Err(MsgError::LengthMismatch {
                expected: 21,
                got: v.len(),
                unit: "values",
            });
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(MsgError::InvalidValue {
                key: keys::LAYOUT,
                reason: "camera matrices contain NaN or infinity".into(),
            });
        }
        let mut extrinsics = [0.0; 12];
        extrinsics.copy_from_slice(&v[..12]);
        let mut intrinsics = [0.0; 9];
        intrinsics.copy_from_slice(&v[12..]);
        let cam = Self {
            extrinsics,
            intrinsics,
            width: req_dim(params, keys::WIDTH)?,
            height: req_dim(params, keys::HEIGHT)?,
            info: FrameInfo::read(params)?,
            is_metric: opt_bool(params, keys::IS_METRIC)?.unwrap_or(false),
        };
        cam.check_geometry()?;
        Ok(cam)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid camera: identity pose, unit focal lengths, 2x2 pixels.
    pub(crate) fn identity_camera() -> CameraMsg {
        CameraMsg {
            extrinsics: [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            intrinsics: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            width: 2,
            height: 2,
            info: FrameInfo::default(),
            is_metric: true,
        }
    }

    fn rot_y(a: f64) -> [[f64; 3]; 3] {
        let (s, c) = a.sin_cos();
        [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    }

    #[test]
    fn round_trip_and_pose_inversion() {
        let r = rot_y(0.3);
        let t = [0.5, -0.25, 2.0];
        let mut e = [0.0; 12];
        for i in 0..3 {
            for j in 0..3 {
                e[i * 4 + j] = r[i][j];
            }
            e[i * 4 + 3] = t[i];
        }
        let cam = CameraMsg {
            extrinsics: e,
            intrinsics: [100.0, 0.0, 32.0, 0.0, 101.0, 24.0, 0.0, 0.0, 1.0],
            width: 64,
            height: 48,
            info: FrameInfo {
                frame_id: Some(1),
                stamp_ns: Some(5),
                camera: Some("cam".into()),
                last: false,
            },
            is_metric: false,
        };
        let (arr, params) = cam.to_message();
        assert_eq!(CameraMsg::from_message(arr.as_ref(), &params).unwrap(), cam);
        // The pose in the metadata is camera-to-world: x_world = R^T (x_cam - t).
        let pose = Pose::read(&params).unwrap().unwrap();
        let rw = pose.rotation();
        for i in 0..3 {
            for j in 0..3 {
                assert!((rw[i][j] - r[j][i]).abs() < 1e-12);
            }
        }
        // The camera centre maps to the camera origin.
        let c = pose.position;
        for i in 0..3 {
            let xc = r[i][0] * c[0] + r[i][1] * c[1] + r[i][2] * c[2] + t[i];
            assert!(xc.abs() < 1e-12);
        }
    }

    #[test]
    fn rejects_bad_camera_messages() {
        let cam = identity_camera();
        let (_, params) = cam.to_message();
        let short = Float64Array::from(vec![0.0; 20]);
        assert!(matches!(
            CameraMsg::from_message(&short, &params),
            Err(MsgError::LengthMismatch { .. })
        ));
        let mut nan = vec![0.0; 21];
        nan[3] = f64::NAN;
        assert!(matches!(
            CameraMsg::from_message(&Float64Array::from(nan), &params),
            Err(MsgError::InvalidValue { .. })
        ));
        // Geometry: not a rigid motion, or a non-positive focal length.
        for (i, v) in [(0, 2.0), (0, 0.0), (12, -1.0), (16, 0.0)] {
            let mut c = cam.clone();
            if i < 12 {
                c.extrinsics[i] = v;
            } else {
                c.intrinsics[i - 12] = v;
            }
            let (arr, params) = c.to_message();
            assert!(matches!(
                CameraMsg::from_message(arr.as_ref(), &params),
                Err(MsgError::InvalidValue { .. })
            ));
        }
        let f32s = crate::arrow::array::Float32Array::from(vec![0.0f32; 21]);
        assert!(matches!(
            CameraMsg::from_message(&f32s, &params),
            Err(MsgError::WrongArrowType { .. })
        ));
    }

    /// Moved from the DA3 node (`check_pose`), which now relies on the decode.
    #[test]
    fn pose_checks() {
        let id = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert!(check_extrinsics(&id).is_ok());
        let mut nan = id;
        nan[3] = f64::NAN;
        assert!(check_extrinsics(&nan).is_err());
        let mut sing = id;
        sing[0] = 0.0;
        assert!(check_extrinsics(&sing).is_err());
        let mut mirror = id;
        mirror[0] = -1.0;
        assert!(check_extrinsics(&mirror)
            .unwrap_err()
            .contains("determinant"));
    }
}
