//! Track mode's maths: a keyframe tracker that places each multi-view inference (the
//! freshest frame plus up to `K` keyframes) in one world frame and scale.
//!
//! Pure: no dora, no tensors. Each [`Tracker::update`] takes the inference's predicted
//! poses of the keyframes it was given and of the new frame, **camera-to-world in the
//! inference's own frame** ([`CamPose`]; `CamPose::from_world_to_camera` converts the
//! network's world-to-camera extrinsics), and their depth maps. The keyframes' predicted
//! poses are fitted onto their stored world poses by a robust similarity
//! ([`align_poses`]: rotation, translation, scale, the scale from each keyframe's depth
//! ratio), which puts the new frame's pose in the world and its depth in the world's scale.
//!
//! - The first frame anchors the world (its predicted pose, scale 1).
//! - A new keyframe is taken when the new frame is far enough from the nearest keyframe
//!   (baseline as a fraction of the scene depth, or rotation) or the newest keyframe is old;
//!   the oldest keyframe leaves beyond `K`.
//! - A failure (fewer than a majority of the keyframes align within `max_residual`,
//!   `max_rotation_deg` and `max_scale_change`, no scale, or too little overlap: the new
//!   frame more than `overlap_baseline` scene depths or `overlap_rotation_deg` from every
//!   keyframe) re-anchors: a new world
//!   whose only keyframe is the new frame, placed at the last good pose with its depth
//!   scaled to the last good depth, so the trajectory stays continuous.
//!
//! The payload `T` travels with each keyframe (the node keeps the frame's image there).

use std::collections::VecDeque;

use da3_io::align_poses::{align_poses, depth_ratio, positive_median, CamPose, PosePair};
use da3_io::align_poses::{PoseFit, PoseFitOptions};
use serde_json::{json, Value};

/// The tracker's knobs (`TRACK_*` of the node).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackConfig {
    /// Keyframes per inference (and kept), `K`.
    pub keyframes: usize,
    /// New keyframe beyond this baseline to the nearest one, a fraction of the scene depth.
    pub kf_baseline: f64,
    /// New keyframe beyond this rotation to the nearest one, degrees.
    pub kf_rotation_deg: f64,
    /// New keyframe when the newest one is older than this (capture time), nanoseconds.
    pub kf_interval_ns: u64,
    /// Largest position residual of an aligned keyframe, a fraction of the scene depth.
    pub max_residual: f64,
    /// Largest rotation error of an aligned keyframe, degrees.
    pub max_rotation_deg: f64,
    /// Largest depth-ratio error of an aligned keyframe (`|ln|` of its ratio to the
    /// fitted scale).
    pub max_scale_change: f64,
    /// A frame farther than this many scene depths from every keyframe shares too little
    /// with them.
    pub overlap_baseline: f64,
    /// A frame turned more than this (degrees) from every keyframe shares too little
    /// with them.
    pub overlap_rotation_deg: f64,
}

impl Default for TrackConfig {
    fn default() -> Self {
        Self {
            keyframes: 3,
            kf_baseline: 0.1,
            kf_rotation_deg: 10.0,
            kf_interval_ns: 2_000_000_000,
            max_residual: 0.05,
            max_rotation_deg: 10.0,
            max_scale_change: 0.15,
            overlap_baseline: 1.0,
            overlap_rotation_deg: 75.0,
        }
    }
}

/// A keyframe: its world pose and world-scale depth.
#[derive(Debug, Clone)]
pub struct Keyframe<T> {
    /// The tracker's serial number of this keyframe (unique across worlds).
    pub key: u64,
    pub frame_id: Option<u64>,
    pub stamp_ns: Option<u64>,
    /// World pose, camera-to-world.
    pub pose: CamPose,
    /// Depth in the world's scale.
    pub depth: Vec<f32>,
    /// Median of `depth`.
    pub median_depth: f64,
    pub payload: T,
}

/// One view of an inference: its predicted pose (camera-to-world, inference frame) and depth.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub pose: CamPose,
    pub depth: &'a [f32],
    /// The pose is a known camera's (a pose-conditioned inference reports the given
    /// cameras, depth in their scale): a re-anchor keeps it as the new world's pose.
    pub given: bool,
}

/// Why a frame re-anchored the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Fewer than a majority of the keyframes aligned within the residual threshold.
    Residual { inliers: usize, keyframes: usize },
    /// The fit found no scale (no usable depth ratio, too short baselines).
    NoScale,
    /// The new frame is too far (or turned too far) from every keyframe.
    NoOverlap { baseline: f64, rotation_deg: f64 },
    /// None of the inference's keyframes is still known.
    NoKeyframes,
    /// The caller asked for it (e.g. the camera's intrinsics changed).
    Requested(String),
}

impl Failure {
    pub fn describe(&self) -> String {
        match self {
            Self::Residual {
                inliers,
                keyframes,
            } => format!("{inliers} of {keyframes} keyframes aligned within the residual"),
            Self::NoScale => "no scale (no depth ratio, too short baselines)".into(),
            Self::NoOverlap {
                baseline,
                rotation_deg,
            } => format!(
                "too little overlap: {baseline:.2} scene depths, {rotation_deg:.0} deg from the nearest keyframe"
            ),
            Self::NoKeyframes => "no keyframe of the inference is known any more".into(),
            Self::Requested(r) => r.clone(),
        }
    }
}

/// What [`Tracker::update`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The first frame: it anchors the world.
    Anchored,
    /// Aligned to the keyframes.
    Tracked,
    /// Failed: a new world starts at this frame.
    Reanchored(Failure),
}

/// The new frame in the world.
#[derive(Debug, Clone)]
pub struct TrackOut {
    /// World pose, camera-to-world.
    pub pose: CamPose,
    /// Multiply the inference's depth by this for the world's scale.
    pub scale: f64,
    /// RMS position residual of the aligned keyframes (fraction of the scene depth).
    pub residual: Option<f64>,
    /// Keyframes aligned / keyframes used.
    pub inliers: usize,
    pub used: usize,
    pub decision: Decision,
    pub keyframe_added: bool,
    /// Which world (0 the first; +1 per re-anchor).
    pub world: u64,
}

/// Counters of a tracker.
#[derive(Debug, Clone, Default)]
pub struct TrackStats {
    pub frames: u64,
    pub tracked: u64,
    pub reanchors: u64,
    pub keyframes_added: u64,
    pub outlier_keyframes: u64,
    residuals: VecDeque<f64>,
    pub max_residual: f64,
}

impl TrackStats {
    fn residual(&mut self, r: f64) {
        self.residuals.push_back(r);
        if self.residuals.len() > 200 {
            self.residuals.pop_front();
        }
        self.max_residual = self.max_residual.max(r);
    }

    /// The last 200 residuals of tracked frames.
    pub fn recent_residuals(&self) -> impl Iterator<Item = f64> + '_ {
        self.residuals.iter().copied()
    }
}

/// `{"p50", "p95"}` of some values (`null` when none).
pub fn percentiles(values: impl Iterator<Item = f64>) -> Value {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Option<f64> {
        (!v.is_empty()).then(|| v[((p / 100.0) * (v.len() - 1) as f64).round() as usize])
    };
    json!({"p50": pct(50.0), "p95": pct(95.0)})
}

/// The keyframe tracker of one camera.
#[derive(Debug)]
pub struct Tracker<T> {
    cfg: TrackConfig,
    keyframes: Vec<Keyframe<T>>,
    next_key: u64,
    world: u64,
    /// The last frame's world pose and median world depth.
    last: Option<(CamPose, f64)>,
    pending_reset: Option<String>,
    pub stats: TrackStats,
}

impl<T> Tracker<T> {
    pub fn new(cfg: TrackConfig) -> Self {
        Self {
            cfg: TrackConfig {
                keyframes: cfg.keyframes.max(1),
                ..cfg
            },
            keyframes: Vec::new(),
            next_key: 0,
            world: 0,
            last: None,
            pending_reset: None,
            stats: TrackStats::default(),
        }
    }

    /// The keyframes, oldest first: the views to run with the next frame.
    pub fn keyframes(&self) -> &[Keyframe<T>] {
        &self.keyframes
    }

    /// The current world.
    pub fn world(&self) -> u64 {
        self.world
    }

    /// Re-anchor at the next frame (reason for the status event).
    pub fn request_reanchor(&mut self, reason: impl Into<String>) {
        self.pending_reset = Some(reason.into());
    }

    fn push_keyframe(
        &mut self,
        pose: CamPose,
        depth: Vec<f32>,
        frame: (Option<u64>, Option<u64>),
        payload: T,
    ) {
        let median_depth = positive_median(&depth).unwrap_or(1.0);
        self.keyframes.push(Keyframe {
            key: self.next_key,
            frame_id: frame.0,
            stamp_ns: frame.1,
            pose,
            depth,
            median_depth,
            payload,
        });
        self.next_key += 1;
        self.stats.keyframes_added += 1;
        while self.keyframes.len() > self.cfg.keyframes {
            self.keyframes.remove(0);
        }
    }

    /// Places the new frame of an inference in the world.
    ///
    /// `used` are the keys of the keyframes the inference ran with and `kf_obs` their
    /// predicted views, in the same order; `new` is the new frame's view, `frame` its
    /// `(frame_id, stamp_ns)`, `payload` what to keep should it become a keyframe.
    pub fn update(
        &mut self,
        used: &[u64],
        kf_obs: &[Observation],
        new: Observation,
        frame: (Option<u64>, Option<u64>),
        payload: T,
    ) -> TrackOut {
        self.stats.frames += 1;
        let scaled =
            |s: f64| -> Vec<f32> { new.depth.iter().map(|d| (*d as f64 * s) as f32).collect() };
        // The first frame anchors the world.
        let Some((last_pose, last_depth)) = self.last else {
            self.pending_reset = None;
            let depth = new.depth.to_vec();
            let med = positive_median(&depth).unwrap_or(1.0);
            self.push_keyframe(new.pose, depth, frame, payload);
            self.last = Some((new.pose, med));
            return TrackOut {
                pose: new.pose,
                scale: 1.0,
                residual: None,
                inliers: 0,
                used: 0,
                decision: Decision::Anchored,
                keyframe_added: true,
                world: self.world,
            };
        };
        let attempt = match self.pending_reset.take() {
            Some(r) => Err((Failure::Requested(r), 0, 0)),
            None => self.align(used, kf_obs, &new),
        };
        match attempt {
            Ok((fit, pose, n)) => {
                let s = fit.sim.s;
                self.stats.tracked += 1;
                self.stats.residual(fit.residual);
                self.stats.outlier_keyframes += (n - fit.inlier_count()) as u64;
                let depth = scaled(s);
                let med = positive_median(&depth).unwrap_or(last_depth);
                let add = self.wants_keyframe(&pose, med, frame.1);
                if add {
                    self.push_keyframe(pose, depth, frame, payload);
                }
                self.last = Some((pose, med));
                TrackOut {
                    pose,
                    scale: s,
                    residual: Some(fit.residual),
                    inliers: fit.inlier_count(),
                    used: n,
                    decision: Decision::Tracked,
                    keyframe_added: add,
                    world: self.world,
                }
            }
            Err((why, inliers, n)) => {
                // A new world at the last good pose, in the last good depth's scale (a
                // known camera: as given).
                self.world += 1;
                self.stats.reanchors += 1;
                self.keyframes.clear();
                let (pose, s) = if new.given {
                    (new.pose, 1.0)
                } else {
                    let s = positive_median(new.depth).map_or(1.0, |m| last_depth / m);
                    (last_pose, s)
                };
                let depth = scaled(s);
                let med = positive_median(&depth).unwrap_or(last_depth);
                self.push_keyframe(pose, depth, frame, payload);
                self.last = Some((pose, med));
                TrackOut {
                    pose,
                    scale: s,
                    residual: None,
                    inliers,
                    used: n,
                    decision: Decision::Reanchored(why),
                    keyframe_added: true,
                    world: self.world,
                }
            }
        }
    }

    /// The fit of the inference's keyframes onto the world and the new frame's world pose;
    /// or why not, with the inliers and keyframes counted.
    #[allow(clippy::type_complexity)]
    fn align(
        &self,
        used: &[u64],
        kf_obs: &[Observation],
        new: &Observation,
    ) -> Result<(PoseFit, CamPose, usize), (Failure, usize, usize)> {
        let pairs: Vec<PosePair> = used
            .iter()
            .zip(kf_obs)
            .filter_map(|(key, o)| {
                let kf = self.keyframes.iter().find(|k| k.key == *key)?;
                Some(PosePair {
                    src: o.pose,
                    dst: kf.pose,
                    scale: depth_ratio(&kf.depth, o.depth),
                })
            })
            .collect();
        let n = pairs.len();
        if n == 0 {
            return Err((Failure::NoKeyframes, 0, 0));
        }
        let ref_len = self.scene_depth();
        let opts = PoseFitOptions {
            pos_tol: self.cfg.max_residual,
            rot_tol: self.cfg.max_rotation_deg.to_radians(),
            scale_tol: self.cfg.max_scale_change,
            ..PoseFitOptions::for_scene(ref_len)
        };
        let fit = align_poses(&pairs, &opts).map_err(|_| (Failure::NoScale, 0, n))?;
        let k = fit.inlier_count();
        if k < n / 2 + 1 {
            return Err((
                Failure::Residual {
                    inliers: k,
                    keyframes: n,
                },
                k,
                n,
            ));
        }
        let pose = new.pose.transformed(&fit.sim);
        let (baseline, rotation) = self.nearest(&pose);
        let rotation_deg = rotation.to_degrees();
        if baseline / ref_len > self.cfg.overlap_baseline
            || rotation_deg > self.cfg.overlap_rotation_deg
        {
            return Err((
                Failure::NoOverlap {
                    baseline: baseline / ref_len,
                    rotation_deg,
                },
                k,
                n,
            ));
        }
        Ok((fit, pose, n))
    }

    /// The scene's depth in the world: the median of the keyframes' median depths.
    fn scene_depth(&self) -> f64 {
        let mut m: Vec<f64> = self.keyframes.iter().map(|k| k.median_depth).collect();
        m.sort_by(f64::total_cmp);
        m.get(m.len() / 2)
            .copied()
            .filter(|v| *v > 0.0)
            .unwrap_or(1.0)
    }

    /// Distance to the nearest keyframe and the smallest rotation to any keyframe.
    fn nearest(&self, pose: &CamPose) -> (f64, f64) {
        let d = self
            .keyframes
            .iter()
            .map(|k| k.pose.distance(pose))
            .fold(f64::INFINITY, f64::min);
        let a = self
            .keyframes
            .iter()
            .map(|k| k.pose.angle_to(pose))
            .fold(f64::INFINITY, f64::min);
        (d, a)
    }

    fn wants_keyframe(&self, pose: &CamPose, median_depth: f64, stamp: Option<u64>) -> bool {
        let Some(near) = self
            .keyframes
            .iter()
            .min_by(|a, b| a.pose.distance(pose).total_cmp(&b.pose.distance(pose)))
        else {
            return true;
        };
        let depth = if median_depth > 0.0 {
            median_depth
        } else {
            self.scene_depth()
        };
        let newest = self.keyframes.iter().filter_map(|k| k.stamp_ns).max();
        near.pose.distance(pose) / depth >= self.cfg.kf_baseline
            || near.pose.angle_to(pose).to_degrees() >= self.cfg.kf_rotation_deg
            || matches!((stamp, newest), (Some(s), Some(n)) if s.saturating_sub(n) >= self.cfg.kf_interval_ns)
    }
}
