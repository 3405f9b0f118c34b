//! 16-bit depth PNG and its JSON sidecar.
//!
//! The PNG is grey 16-bit, `H×W`, value = `round(depth × 1000)` (millimetres when the
//! depth is metric), clamped to 1..=65535, 0 = invalid. The sidecar carries the size,
//! the intrinsics at that size, the pose both ways and the units.

use std::io::Cursor;

use eyre::{Result, WrapErr};
use serde_json::json;

use crate::geometry::{camera_to_world, CameraGeometry};

/// Value × `DEPTH_SCALE` = depth (metres when metric, else model units).
pub const DEPTH_SCALE: f64 = 0.001;

/// 16-bit depth: `round(depth × 1000)` (millimetres when metric), clamped to
/// 65535; 0 for invalid (non-finite or non-positive) depth.
pub fn depth_to_u16(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&d| {
            if d.is_finite() && d > 0.0 {
                ((d as f64 / DEPTH_SCALE).round()).clamp(1.0, 65535.0) as u16
            } else {
                0
            }
        })
        .collect()
}

/// The PNG bytes of a `width x height` row-major depth map.
pub fn png16_bytes(width: u32, height: u32, depth: &[f32]) -> Result<Vec<u8>> {
    let buf = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(
        width,
        height,
        depth_to_u16(depth),
    )
    .ok_or_else(|| eyre::eyre!("depth size mismatch"))?;
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma16(buf)
        .write_to(&mut out, image::ImageFormat::Png)
        .wrap_err("cannot encode the 16-bit PNG")?;
    Ok(out.into_inner())
}

/// The JSON sidecar of the 16-bit PNG of frame `frame_id` of `camera`.
pub fn sidecar_json(
    g: &CameraGeometry,
    frame_id: u64,
    stamp_ns: Option<u64>,
    camera: &str,
) -> serde_json::Value {
    let e = g.extrinsics;
    let (r, c) = camera_to_world(&e);
    let c2w = [
        [r[0][0], r[0][1], r[0][2], c[0]],
        [r[1][0], r[1][1], r[1][2], c[1]],
        [r[2][0], r[2][1], r[2][2], c[2]],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let k = g
        .intrinsics
        .map(|k| json!([[k[0], k[1], k[2]], [k[3], k[4], k[5]], [k[6], k[7], k[8]]]));
    json!({
        "width": g.width,
        "height": g.height,
        "intrinsics": k,
        "extrinsics": [[e[0], e[1], e[2], e[3]], [e[4], e[5], e[6], e[7]], [e[8], e[9], e[10], e[11]]],
        "camera_to_world": c2w,
        "has_pose": g.has_pose,
        "is_metric": g.is_metric,
        "depth_scale": DEPTH_SCALE,
        "depth_unit": if g.is_metric { "mm" } else { "relative/1000" },
        "invalid_value": 0,
        "max_value": 65535,
        "frame_id": frame_id,
        "stamp_ns": stamp_ns,
        "camera": camera,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::IDENTITY_3X4;

    #[test]
    fn millimetres_clamped_and_invalid_zero() {
        let v = depth_to_u16(&[f32::NAN, -1.0, 70.0, 1.2344, 0.0001, 2.0]);
        assert_eq!(v, [0, 0, 65535, 1234, 1, 2000]);
        let png = png16_bytes(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!(img.color(), image::ColorType::L16);
        assert_eq!(
            img.into_luma16().into_raw(),
            [1000, 2000, 3000, 4000, 5000, 6000]
        );
        assert!(png16_bytes(3, 3, &[1.0]).is_err());
    }

    #[test]
    fn sidecar_has_both_poses_and_the_units() {
        let g = CameraGeometry {
            width: 4,
            height: 3,
            intrinsics: None,
            extrinsics: [
                1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0, -2.0, 0.0, 0.0, 1.0, -3.0,
            ],
            has_pose: true,
            is_metric: false,
        };
        let j = sidecar_json(&g, 7, None, "cam");
        assert_eq!(j["intrinsics"], serde_json::Value::Null);
        assert_eq!(j["camera_to_world"][2][3], 3.0);
        assert_eq!(j["depth_unit"], "relative/1000");
        assert_eq!(j["stamp_ns"], serde_json::Value::Null);
        let j = sidecar_json(
            &CameraGeometry {
                extrinsics: IDENTITY_3X4,
                ..g
            },
            7,
            Some(5),
            "cam",
        );
        assert_eq!(j["extrinsics"][0], json!([1.0, 0.0, 0.0, 0.0]));
        assert_eq!(j["stamp_ns"], 5);
    }
}
