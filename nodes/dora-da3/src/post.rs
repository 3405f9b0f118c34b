//! From per-view results to the messages of the conventions: depth,
//! confidence, camera, coloured points and a colour-mapped depth image.

use da3_msg::{CameraMsg, DepthKind, DepthMap, Encoding, ImageFrame, Intrinsics, PointCloud, Pose};

use crate::engine::ViewOut;

fn intr(k: &[f64; 9]) -> Intrinsics {
    Intrinsics {
        fx: k[0],
        fy: k[4],
        cx: k[2],
        cy: k[5],
    }
}

/// The depth or confidence map of a view, with its camera in the metadata.
fn map_msg(v: &ViewOut, kind: DepthKind, values: Vec<f32>) -> DepthMap {
    DepthMap {
        kind,
        width: v.width,
        height: v.height,
        values,
        info: v.info.clone(),
        intrinsics: v.intrinsics.as_ref().map(intr),
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

/// Value at `p` percent of `values` (nearest rank on the sorted finite values).
pub fn percentile(values: &[f32], p: f64) -> Option<f32> {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    Some(v[idx.min(v.len() - 1)])
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
    let (fx, fy, cx, cy) = (k[0], k[4], k[2], k[5]);
    let e = v
        .extrinsics
        .unwrap_or([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let thr = v
        .conf
        .as_ref()
        .and_then(|c| percentile(c, conf_percentile))
        .unwrap_or(f32::NEG_INFINITY);
    let w = v.width as usize;
    let keep: Vec<usize> = (0..v.depth.len())
        .filter(|&i| {
            let d = v.depth[i];
            d.is_finite() && d > 0.0 && v.conf.as_ref().is_none_or(|c| c[i] >= thr)
        })
        .collect();
    let step = keep.len().div_ceil(max_points.max(1)).max(1);
    let mut xyz = Vec::with_capacity(keep.len() / step + 1);
    let mut rgb = Vec::with_capacity(keep.len() / step + 1);
    for &i in keep.iter().step_by(step) {
        let (u, vv) = ((i % w) as f64, (i / w) as f64);
        let d = v.depth[i] as f64;
        let pc = [(u - cx) / fx * d, (vv - cy) / fy * d, d];
        // x_world = R^T (x_cam - t)
        let q = [pc[0] - e[3], pc[1] - e[7], pc[2] - e[11]];
        let pw = [
            e[0] * q[0] + e[4] * q[1] + e[8] * q[2],
            e[1] * q[0] + e[5] * q[1] + e[9] * q[2],
            e[2] * q[0] + e[6] * q[1] + e[10] * q[2],
        ];
        xyz.push([pw[0] as f32, pw[1] as f32, pw[2] as f32]);
        let c = v.rgb.get(i * 3..i * 3 + 3).unwrap_or(&[0, 0, 0]);
        rgb.push([c[0], c[1], c[2]]);
    }
    Some(PointCloud {
        xyz,
        rgb,
        info: v.info.clone(),
        is_metric: v.is_metric,
    })
}

/// Turbo colour map (polynomial fit), `t` in [0, 1].
pub fn turbo(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) as f64;
    let r = 0.13572138
        + t * (4.61539260
            + t * (-42.66032258 + t * (132.13108234 + t * (-152.94239396 + t * 59.28637943))));
    let g = 0.09140261
        + t * (2.19418839
            + t * (4.84296658 + t * (-14.18503333 + t * (4.27729857 + t * 2.82956604))));
    let b = 0.10667330
        + t * (12.64194608
            + t * (-60.58204836 + t * (110.36276771 + t * (-89.90310912 + t * 27.34824973))));
    let c = |x: f64| (x.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
    [c(r), c(g), c(b)]
}

/// Colour-mapped depth (near = warm), range from the 2nd-98th percentiles of
/// inverse depth so one outlier does not flatten the picture.
pub fn depth_vis(v: &ViewOut) -> ImageFrame {
    let inv: Vec<f32> = v
        .depth
        .iter()
        .map(|&d| {
            if d > 0.0 && d.is_finite() {
                1.0 / d
            } else {
                f32::NAN
            }
        })
        .collect();
    let lo = percentile(&inv, 2.0).unwrap_or(0.0);
    let hi = percentile(&inv, 98.0).unwrap_or(1.0);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let data: Vec<u8> = inv
        .iter()
        .flat_map(|&x| {
            if x.is_finite() {
                turbo((x - lo) / span)
            } else {
                [0, 0, 0]
            }
        })
        .collect();
    ImageFrame {
        encoding: Encoding::Rgb8,
        width: v.width,
        height: v.height,
        data,
        info: v.info.clone(),
        intrinsics: v.intrinsics.as_ref().map(intr),
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
            intrinsics: Some([2.0, 0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 0.0, 1.0]),
            extrinsics: Some([1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0]),
            is_metric: false,
            received: std::time::Instant::now(),
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
        assert_eq!(vis.data.len(), 12);
    }

    #[test]
    fn turbo_ends() {
        assert_eq!(turbo(0.0), [35, 23, 27]);
        let hot = turbo(1.0);
        assert!(hot[0] > 100 && hot[2] < 60, "{hot:?}");
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[f32::NAN], 50.0), None);
    }
}
