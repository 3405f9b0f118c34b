//! Binary glTF 2.0 (`.glb`) of one frame (the format is [`da3_io::glb`]): the
//! point cloud and the camera frustum.

use std::path::Path;

use da3_io::export::FRUSTUM_FRACTION;
use da3_io::geometry::{frustum_in_depth, Vec3};
use da3_io::{atomic, glb};
use eyre::Result;

use crate::frame::FrameResult;

/// The frustum of a frame: the camera centre and the four image corners at
/// a fifth of the median depth, in world coordinates (OpenCV axes), as the
/// `da3` CLI draws its cameras.
pub fn frustum(f: &FrameResult) -> Option<[Vec3; 5]> {
    let g = f.geometry();
    let (w, h) = (g.width as f64, g.height as f64);
    g.intrinsics
        .map(|k| frustum_in_depth(&k, &g.extrinsics, w, h, &f.depth.values, FRUSTUM_FRACTION))
}

pub fn write_glb(path: &Path, f: &FrameResult, xyz: &[[f32; 3]], rgb: &[[u8; 3]]) -> Result<()> {
    let frusta: Vec<_> = frustum(f).into_iter().collect();
    atomic::write_bytes(path, &glb::glb_bytes(xyz, rgb, &frusta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::sample_frame;
    use da3_io::glb::{glb_bytes, parse_glb};

    #[test]
    fn glb_reads_back() {
        let f = sample_frame();
        let (xyz, rgb) = f.world_points(0.0);
        let fr = frustum(&f).unwrap();
        // The frustum starts at the camera centre.
        for (a, b) in fr[0].iter().zip([1.0, 2.0, 3.0]) {
            assert!((a - b).abs() < 1e-12);
        }
        let bytes = glb_bytes(&xyz, &rgb, &[fr]);
        assert_eq!(bytes.len() % 4, 0);
        let (doc, pos) = parse_glb(&bytes).unwrap();
        assert_eq!(doc["meshes"][0]["primitives"][0]["mode"], 0);
        assert_eq!(doc["meshes"][1]["primitives"][0]["mode"], 1);
        assert_eq!(pos.len(), 2);
        assert_eq!(pos[0].len(), 12);
        assert_eq!(pos[0][3], [xyz[3][0], -xyz[3][1], -xyz[3][2]]);
        assert_eq!(pos[1].len(), 5);
        for (a, b) in pos[1][0].iter().zip([1.0, -2.0, -3.0]) {
            assert!((a - b).abs() < 1e-6);
        }
        let col = &doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]
            .as_u64()
            .unwrap() as usize];
        assert_eq!(col["count"], 12);
        // No points, no camera: a valid empty scene.
        let (doc, pos) = parse_glb(&glb_bytes(&[], &[], &[])).unwrap();
        assert!(pos.is_empty());
        assert_eq!(doc["asset"]["version"], "2.0");
    }
}
