//! From per-view results to the messages of the conventions: depth,
//! confidence, camera, coloured points and a colour-mapped depth image.

use da3_io::colormap::colorize_depth;
use da3_io::geometry::{back_project, coloured_points, subsample_step, IDENTITY_3X4};
use da3_msg::message::{COLORMAP_TURBO, MASK_SKY};
use da3_msg::{
    CameraMsg, DepthKind, DepthMap, DepthVis, Encoding, ImageFrame, Intrinsics, Mask, PointCloud,
    Pose, Splats,
};

use crate::engine::ViewOut;

/// The depth or confidence map of a view, with its camera in the metadata.
fn map_msg(v: &ViewOut, kind: DepthKind, values: Vec<f32>) -> DepthMap {
    DepthMap {
        kind,
        width: v.width,
        height: v.height,
        values,
        info: v.info.clone(),
        intrinsics: v.intrinsics.as_ref().map(Intrinsics::from_matrix),
        pose: v.extrinsics.as_ref().map(Pose::from_world_to_camera),
        is_metric: v.is_metric,
    }
}

pub fn depth_msg(v: &ViewOut) -> DepthMap {
    map_msg(v, DepthKind::Depth, v.depth.clone())
}

pub fn conf_msg(v: &ViewOut) -> Option<DepthMap> {
    Some(map_msg(v, DepthKind::Confidence, v.conf.clone()?))
}

pub fn camera_msg(v: &ViewOut) -> Option<CameraMsg> {
    Some(CameraMsg {
        extrinsics: v.extrinsics?,
        intrinsics: v.intrinsics?,
        width: v.width,
        height: v.height,
        info: v.info.clone(),
        is_metric: v.is_metric,
    })
}

/// Back-projects the depth map to a coloured point cloud in the world frame.
///
/// Pixels whose confidence is below the `conf_percentile` percentile are
/// dropped (like the reference's GLB export), as are non-finite or
/// non-positive depths; then at most `max_points` are kept, evenly spaced.
/// Without extrinsics the camera frame is the world frame. `None` when the
/// view has no intrinsics.
pub fn points_msg(v: &ViewOut, conf_percentile: f64, max_points: usize) -> Option<PointCloud> {
    let k = v.intrinsics?;
    let e = v.extrinsics.unwrap_or(IDENTITY_3X4);
    let kept = back_project(
        &v.depth,
        v.width as usize,
        v.conf.as_deref(),
        conf_percentile,
        &k,
        &e,
    );
    let step = subsample_step(kept.len(), max_points);
    let kept: Vec<_> = kept.into_iter().step_by(step).collect();
    let (xyz, rgb) = coloured_points(&kept, &v.rgb);
    Some(PointCloud {
        xyz,
        rgb,
        info: v.info.clone(),
        is_metric: v.is_metric,
    })
}

/// The sky mask of a view (models with a sky head): 255 where the sky probability is at least
/// [`da3::inference::SKY_THRESHOLD`] (0.3: where the network filled depth in); depth is 0 there.
pub fn sky_msg(v: &ViewOut) -> Option<Mask> {
    let sky = v.sky.as_ref()?;
    Some(Mask::from_flags(
        MASK_SKY,
        v.width,
        v.height,
        sky,
        v.info.clone(),
    ))
}

/// The view's 3D Gaussians (the `gaussians` output, models with a Gaussian head), one per
/// pixel of the processed view, with its depth.
pub fn gaussians_msg(v: &ViewOut) -> Option<&Splats> {
    v.gaussians.as_ref()
}

/// Colour-mapped depth (turbo of inverse depth, near = warm), marked as such.
pub fn depth_vis(v: &ViewOut) -> DepthVis {
    DepthVis {
        frame: ImageFrame {
            encoding: Encoding::Rgb8,
            width: v.width,
            height: v.height,
            data: colorize_depth(&v.depth),
            info: v.info.clone(),
            intrinsics: v.intrinsics.as_ref().map(Intrinsics::from_matrix),
        },
        colormap: COLORMAP_TURBO.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use da3_msg::FrameInfo;

    fn view(w: u32, h: u32, depth: Vec<f32>, conf: Option<Vec<f32>>) -> ViewOut {
        ViewOut {
            input: "image".into(),
            info: FrameInfo {
                frame_id: Some(1),
                ..Default::default()
            },
            width: w,
            height: h,
            rgb: vec![10; (w * h * 3) as usize],
            depth,
            conf,
            sky: None,
            pose_given: false,
            intrinsics: Some([2.0, 0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0]),
            extrinsics: Some([1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0]),
            is_metric: false,
            received: std::time::Instant::now(),
            gaussians: None,
        }
    }

    #[test]
    fn points_are_back_projected_into_the_world() {
        let v = view(2, 2, vec![2.0, 2.0, 2.0, 4.0], None);
        let p = points_msg(&v, 0.0, 100).unwrap();
        assert_eq!(p.len(), 4);
        // Pixel (1,1) at depth 4: camera (0,0,4); world = R^T (x - t) = (-0.5, 0, 5).
        assert_eq!(p.xyz[3], [-0.5, 0.0, 5.0]);
        // Pixel (0,0) at depth 2: camera (-1,-1,2); world (-1.5, -1, 3).
        assert_eq!(p.xyz[0], [-1.5, -1.0, 3.0]);
        assert_eq!(p.rgb[0], [10, 10, 10]);
    }

    #[test]
    fn points_are_confidence_filtered_and_capped() {
        let n = 100;
        let depth = vec![1.0; n];
        let conf: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let v = view(10, 10, depth, Some(conf));
        let p = points_msg(&v, 40.0, 1000).unwrap();
        assert_eq!(p.len(), 60, "the lowest 40% are dropped");
        let p = points_msg(&v, 0.0, 10).unwrap();
        assert_eq!(p.len(), 10);
        let mut bad = view(2, 1, vec![f32::NAN, -1.0], None);
        bad.rgb = vec![0; 6];
        assert!(points_msg(&bad, 0.0, 10).unwrap().is_empty());
    }

    #[test]
    fn messages_carry_pose_and_intrinsics() {
        let v = view(2, 2, vec![1.0; 4], Some(vec![1.0; 4]));
        let d = depth_msg(&v);
        assert_eq!(d.intrinsics.unwrap().fx, 2.0);
        assert_eq!(d.pose.unwrap().position, [-0.5, 0.0, 1.0]);
        let c = conf_msg(&v).unwrap();
        assert_eq!(c.kind, DepthKind::Confidence);
        assert_eq!(camera_msg(&v).unwrap().extrinsics[3], 0.5);
        let vis = depth_vis(&v);
        assert_eq!(vis.frame.data.len(), 12);
        assert_eq!(vis.colormap, COLORMAP_TURBO);
    }
}
