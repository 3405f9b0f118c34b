//! Window mode: successive windows share frames; each window's poses and
//! depth live in their own frame and scale. This chains them into one
//! trajectory with the same robust similarity fit as track mode
//! ([`align_poses`]): the shared frames' window poses onto their chained poses,
//! the scale from their depth ratios (median over pixels).

use std::collections::HashMap;

use da3_io::align::Sim3;
use da3_io::align_poses::{
    align_poses, depth_ratio, positive_median, CamPose, PoseFitOptions, PosePair,
};

use crate::engine::ViewOut;

#[derive(Debug, Clone)]
struct Chained {
    pose: CamPose,
    depth: Vec<f32>,
}

/// The trajectory of one camera across windows.
#[derive(Debug, Default)]
pub struct Chain {
    last: HashMap<u64, Chained>,
    /// Windows chained so far.
    pub windows: u64,
    /// Windows that shared no frame with the previous one (not chainable), or whose shared
    /// frames gave no fit.
    pub unanchored: u64,
}

impl Chain {
    /// Moves a window's views (all of them, in window order) into the chained
    /// frame, in place: extrinsics and depth. Views without extrinsics or
    /// frame ids are left as they are.
    pub fn apply(&mut self, views: &mut [ViewOut]) {
        // The similarity window frame -> chained frame: x_G = s R x_k + t.
        let mut m = Sim3 {
            r: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            t: [0.0; 3],
            s: 1.0,
        };
        if self.windows > 0 {
            let shared: Vec<(PosePair, f64)> = views
                .iter()
                .filter_map(|v| {
                    let prev = self.last.get(&v.info.frame_id?)?;
                    let pair = PosePair {
                        src: CamPose::from_world_to_camera(v.extrinsics.as_ref()?),
                        dst: prev.pose,
                        scale: depth_ratio(&prev.depth, &v.depth),
                    };
                    Some((pair, positive_median(&prev.depth).unwrap_or(1.0)))
                })
                .collect();
            let pairs: Vec<PosePair> = shared.iter().map(|p| p.0).collect();
            let mut depths: Vec<f64> = shared.iter().map(|p| p.1).collect();
            depths.sort_by(f64::total_cmp);
            let ref_len = depths.get(depths.len() / 2).copied().unwrap_or(1.0);
            match align_poses(&pairs, &PoseFitOptions::for_scene(ref_len)) {
                Ok(fit) => m = fit.sim,
                Err(_) => self.unanchored += 1,
            }
        }
        let mut next = HashMap::new();
        for v in views.iter_mut() {
            for d in v.depth.iter_mut() {
                *d = (*d as f64 * m.s) as f32;
            }
            if let Some(e) = v.extrinsics.as_ref() {
                let pose = CamPose::from_world_to_camera(e).transformed(&m);
                v.extrinsics = Some(pose.world_to_camera());
                if let Some(id) = v.info.frame_id {
                    next.insert(
                        id,
                        Chained {
                            pose,
                            depth: v.depth.clone(),
                        },
                    );
                }
            }
        }
        self.last = next;
        self.windows += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use da3_io::geometry::{camera_to_world, mat_vec, matmul, world_to_camera, Mat3};
    use da3_msg::FrameInfo;

    use da3_io::geometry::testing::rot_xyz as rot;

    fn view(id: u64, e: [f64; 12], depth: Vec<f32>) -> ViewOut {
        ViewOut {
            input: "image".into(),
            info: FrameInfo {
                frame_id: Some(id),
                ..Default::default()
            },
            width: 2,
            height: 2,
            depth,
            conf: None,
            sky: None,
            pose_given: false,
            intrinsics: None,
            extrinsics: Some(e),
            is_metric: false,
            rgb: vec![0; 12],
            received: std::time::Instant::now(),
            gaussians: None,
        }
    }

    #[test]
    fn round_trip_extrinsics() {
        let e = world_to_camera(&rot(0.1, 0.2, 0.3), &[1.0, 2.0, 3.0]);
        let (r, c) = camera_to_world(&e);
        let back = world_to_camera(&r, &c);
        for (a, b) in e.iter().zip(back) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    /// Ground truth trajectory; each window sees it through its own random
    /// similarity (rotation, translation, scale) and gets chained back.
    #[test]
    fn windows_chain_into_one_trajectory() {
        let n = 10u64;
        let gt: Vec<(Mat3, [f64; 3], f32)> = (0..n)
            .map(|i| {
                let a = i as f64 * 0.1;
                (
                    rot(0.02 * a, 0.3 * a, 0.01),
                    [a, 0.1 * a * a, 0.5 * a],
                    2.0 + a as f32,
                )
            })
            .collect();
        let (window, stride) = (4usize, 2usize);
        let mut chain = Chain::default();
        let mut out: HashMap<u64, [f64; 12]> = HashMap::new();
        let mut start = 0usize;
        let mut k = 0;
        while start + window <= n as usize {
            // Window k's frame: x_k = s_k * R_k x_G + t_k (an arbitrary similarity).
            let s_k = 0.5 + 0.3 * k as f64;
            let r_k = rot(0.3 * k as f64, -0.2, 0.1 * k as f64);
            let t_k = [k as f64, -2.0, 0.5];
            let mut views: Vec<ViewOut> = (start..start + window)
                .map(|i| {
                    let (r_cw, c, d) = gt[i];
                    let r_local = matmul(&r_k, &r_cw);
                    let rc = mat_vec(&r_k, &c);
                    let c_local = [
                        s_k * rc[0] + t_k[0],
                        s_k * rc[1] + t_k[1],
                        s_k * rc[2] + t_k[2],
                    ];
                    let depth = vec![d * s_k as f32; 4];
                    view(i as u64, world_to_camera(&r_local, &c_local), depth)
                })
                .collect();
            chain.apply(&mut views);
            for v in &views {
                out.insert(v.info.frame_id.unwrap(), v.extrinsics.unwrap());
                if k > 0 {
                    // Depth back in the first window's scale.
                    let want = gt[v.info.frame_id.unwrap() as usize].2 * 0.5;
                    assert!((v.depth[0] - want).abs() < 1e-4, "{} vs {want}", v.depth[0]);
                }
            }
            start += stride;
            k += 1;
        }
        assert_eq!(chain.unanchored, 0);
        // Everything must equal the first window's similarity applied to GT.
        let (s0, r0, t0) = (0.5, rot(0.0, -0.2, 0.0), [0.0, -2.0, 0.5]);
        for i in 0..n {
            let (r_cw, c, _) = gt[i as usize];
            let rc = mat_vec(&r0, &c);
            let want = world_to_camera(
                &matmul(&r0, &r_cw),
                &[s0 * rc[0] + t0[0], s0 * rc[1] + t0[1], s0 * rc[2] + t0[2]],
            );
            let got = out[&i];
            for (a, b) in got.iter().zip(want) {
                // The scale comes from f32 depth ratios: ~1e-7 relative.
                assert!((a - b).abs() < 1e-6, "frame {i}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn windows_without_shared_frames_are_counted() {
        let mut chain = Chain::default();
        let e = world_to_camera(&rot(0.0, 0.0, 0.0), &[0.0; 3]);
        chain.apply(&mut [view(0, e, vec![1.0; 4])]);
        chain.apply(&mut [view(5, e, vec![1.0; 4])]);
        assert_eq!(chain.unanchored, 1);
    }
}
