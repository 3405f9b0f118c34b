//! One frame's results, gathered from the inputs, and the geometry every
//! writer shares (intrinsics at the depth size, world-to-camera pose,
//! back-projected points, colours).

use da3_io::geometry::{
    back_project, coloured_points, scale_intrinsics, world_to_camera, IDENTITY_3X4,
};
use da3_msg::{CameraMsg, DepthMap, PointCloud};

/// Camera of a frame at the depth map's size.
pub use da3_io::geometry::CameraGeometry as Geometry;

/// The results of one frame of one camera, ready to write.
#[derive(Debug, Clone)]
pub struct FrameResult {
    pub camera: String,
    pub frame_id: u64,
    pub stamp_ns: Option<u64>,
    pub depth: DepthMap,
    pub confidence: Option<DepthMap>,
    pub camera_msg: Option<CameraMsg>,
    pub points: Option<PointCloud>,
    /// The source image, decoded to packed RGB8 `(width, height, pixels)`.
    pub image: Option<(u32, u32, Vec<u8>)>,
    /// The colour-mapped depth (`depth_vis`), decoded to packed RGB8.
    pub vis: Option<(u32, u32, Vec<u8>)>,
    /// A mask of the frame (name, `mono8` frame), written as `<stem>_<name>.png`.
    pub mask: Option<(String, da3_msg::ImageFrame)>,
    /// 3D Gaussians of the frame, written as `<stem>_gs.ply` (the reference's `gs_ply`).
    pub gaussians: Option<da3_msg::Splats>,
}

/// `rgb` resized to `w x h` (bilinear), or as is when it already has that size.
/// `None` when the aspect ratios differ by more than 2 % (a cropped image).
pub fn rgb_at_size(img: &(u32, u32, Vec<u8>), w: u32, h: u32) -> Option<Vec<u8>> {
    let (iw, ih, data) = img;
    if (*iw, *ih) == (w, h) {
        return Some(data.clone());
    }
    let a = *iw as f64 / *ih as f64;
    let b = w as f64 / h as f64;
    if ((a - b) / b).abs() > 0.02 {
        return None;
    }
    let buf = image::RgbImage::from_raw(*iw, *ih, data.clone())?;
    Some(image::imageops::resize(&buf, w, h, image::imageops::FilterType::Triangle).into_raw())
}

impl FrameResult {
    /// `<camera>_<frame_id:06>`, the stem of every file of this frame.
    pub fn stem(&self) -> String {
        format!("{}_{:06}", sanitize(&self.camera), self.frame_id)
    }

    /// The frame's camera at the depth size: the `camera` message when there is
    /// one (intrinsics rescaled to the depth size), else the depth's metadata.
    pub fn geometry(&self) -> Geometry {
        let d = &self.depth;
        let (intrinsics, extrinsics, has_pose) = match &self.camera_msg {
            Some(c) => {
                let sx = d.width as f64 / c.width as f64;
                let sy = d.height as f64 / c.height as f64;
                let k = scale_intrinsics(&c.intrinsics, sx, sy);
                (Some(k), c.extrinsics, true)
            }
            None => {
                let k = d.intrinsics.map(|k| k.matrix());
                match &d.pose {
                    Some(p) => (k, world_to_camera(&p.rotation(), &p.position), true),
                    None => (k, IDENTITY_3X4, false),
                }
            }
        };
        Geometry {
            width: d.width,
            height: d.height,
            intrinsics,
            extrinsics,
            has_pose,
            is_metric: d.is_metric,
        }
    }

    /// The source image at the depth size (see [`rgb_at_size`]).
    pub fn image_at_depth_size(&self) -> Option<Vec<u8>> {
        self.image
            .as_ref()
            .and_then(|i| rgb_at_size(i, self.depth.width, self.depth.height))
    }

    /// The colour of every depth pixel: the source image, else `depth_vis`, else grey.
    pub fn pixel_colours(&self) -> Vec<u8> {
        let (w, h) = (self.depth.width, self.depth.height);
        self.image_at_depth_size()
            .or_else(|| self.vis.as_ref().and_then(|v| rgb_at_size(v, w, h)))
            .unwrap_or_else(|| vec![200; w as usize * h as usize * 3])
    }

    /// World points with colours: the `points` input when wired, else the
    /// depth back-projected with the intrinsics and pose, keeping pixels with
    /// finite positive depth and confidence at or above the `conf_percentile`
    /// percentile. Empty when there are neither points nor intrinsics.
    pub fn world_points(&self, conf_percentile: f64) -> (Vec<[f32; 3]>, Vec<[u8; 3]>) {
        if let Some(p) = &self.points {
            return (p.xyz.clone(), p.rgb.clone());
        }
        let g = self.geometry();
        let Some(k) = g.intrinsics else {
            return (Vec::new(), Vec::new());
        };
        let conf = self.confidence.as_ref().map(|c| c.values.as_slice());
        let colours = self.pixel_colours();
        let kept = back_project(
            &self.depth.values,
            g.width as usize,
            conf.filter(|_| conf_percentile > 0.0),
            conf_percentile,
            &k,
            &g.extrinsics,
        );
        coloured_points(&kept, &colours)
    }
}

/// A camera name made safe for a file name (`[A-Za-z0-9._-]`, others `_`).
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use da3_io::geometry::camera_to_world;
    use da3_msg::{DepthKind, FrameInfo, Intrinsics, Pose};

    /// A small frame: 4x3 depth with a pose (camera at (1, 2, 3), rotated 90° about z).
    pub fn sample_frame() -> FrameResult {
        let (w, h) = (4u32, 3u32);
        let values: Vec<f32> = (0..w * h).map(|i| 1.0 + i as f32 * 0.25).collect();
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let info = FrameInfo {
            frame_id: Some(7),
            stamp_ns: Some(123),
            camera: Some("cam/a".into()),
            last: false,
        };
        let depth = DepthMap {
            kind: DepthKind::Depth,
            width: w,
            height: h,
            values,
            info: info.clone(),
            intrinsics: Some(Intrinsics {
                fx: 2.0,
                fy: 2.5,
                cx: 1.5,
                cy: 1.0,
            }),
            pose: Some(Pose {
                position: [1.0, 2.0, 3.0],
                orientation: [0.0, 0.0, s, s],
            }),
            is_metric: true,
        };
        let mut conf = depth.clone();
        conf.kind = DepthKind::Confidence;
        conf.values = (0..w * h).map(|i| i as f32).collect();
        FrameResult {
            camera: "cam/a".into(),
            frame_id: 7,
            stamp_ns: Some(123),
            depth,
            confidence: Some(conf),
            camera_msg: None,
            points: None,
            image: Some((w, h, (0..w * h * 3).map(|i| i as u8).collect())),
            vis: None,
            mask: None,
            gaussians: None,
        }
    }

    #[test]
    fn pose_and_extrinsics_invert_each_other() {
        let f = sample_frame();
        let g = f.geometry();
        assert!(g.has_pose);
        let (r, c) = camera_to_world(&g.extrinsics);
        for (a, b) in c.iter().zip([1.0, 2.0, 3.0]) {
            assert!((a - b).abs() < 1e-12);
        }
        let want = f.depth.pose.unwrap().rotation();
        for i in 0..3 {
            for j in 0..3 {
                assert!((r[i][j] - want[i][j]).abs() < 1e-12);
            }
        }
        // Same as da3-msg's inversion.
        let p = Pose::from_world_to_camera(&g.extrinsics);
        for (a, b) in p.position.iter().zip([1.0, 2.0, 3.0]) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn camera_message_wins_and_is_rescaled_to_the_depth_size() {
        let mut f = sample_frame();
        f.camera_msg = Some(CameraMsg {
            extrinsics: IDENTITY_3X4,
            intrinsics: [8.0, 0.0, 6.0, 0.0, 10.0, 4.0, 0.0, 0.0, 1.0],
            width: 8,
            height: 6,
            info: FrameInfo::default(),
            is_metric: true,
        });
        let g = f.geometry();
        assert_eq!(g.extrinsics, IDENTITY_3X4);
        assert_eq!(
            g.intrinsics.unwrap(),
            [4.0, 0.0, 3.0, 0.0, 5.0, 2.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn back_projection_lands_on_the_depth() {
        let mut f = sample_frame();
        f.confidence = None;
        let (xyz, rgb) = f.world_points(40.0);
        assert_eq!(xyz.len(), 12);
        assert_eq!(rgb[5], [15, 16, 17]);
        let g = f.geometry();
        // Back to camera coordinates: z equals the depth, u/v re-project.
        let e = g.extrinsics;
        for (i, p) in xyz.iter().enumerate() {
            let pc: Vec<f64> = (0..3)
                .map(|a| {
                    e[a * 4] * p[0] as f64
                        + e[a * 4 + 1] * p[1] as f64
                        + e[a * 4 + 2] * p[2] as f64
                        + e[a * 4 + 3]
                })
                .collect();
            assert!((pc[2] - f.depth.values[i] as f64).abs() < 1e-5);
            let u = 2.0 * pc[0] / pc[2] + 1.5;
            assert!((u - (i % 4) as f64).abs() < 1e-4);
        }
        // The confidence filter drops the lowest 40 % of pixels.
        let f = sample_frame();
        let (xyz, _) = f.world_points(40.0);
        assert_eq!(xyz.len(), 7);
    }

    #[test]
    fn names_are_sanitised_and_images_resized() {
        assert_eq!(sample_frame().stem(), "cam_a_000007");
        assert_eq!(sanitize(".."), "_..");
        let img = (4, 2, vec![9u8; 24]);
        assert_eq!(rgb_at_size(&img, 2, 1).unwrap(), vec![9u8; 6]);
        assert!(rgb_at_size(&img, 2, 2).is_none());
    }
}
