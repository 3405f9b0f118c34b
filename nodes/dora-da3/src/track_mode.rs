//! Track mode in the node: the freshest frame of a camera runs with that camera's
//! keyframes ([`crate::track::Tracker`]) as one inference; the result's new frame is put in
//! the camera's world (pose, depth scale) before it is sent. Status: a `track` object in
//! the stats and `type: track` records on anchors and re-anchors.

use std::collections::{BTreeMap, HashMap, VecDeque};

use da3_io::align_poses::{rotation_angle, CamPose};
use da3_io::geometry::{matmul, rotation_of, transpose};
use da3_msg::Intrinsics;
use serde_json::{json, Value};

use crate::engine::{UnitOut, ViewIn, WorkUnit};
use crate::sched::Scheduler;
use crate::track::{percentiles, Decision, Observation, TrackConfig, Tracker};

/// A `camera_info` whose intrinsics move by more than this (relative) jumps.
pub const JUMP_INTRINSICS: f64 = 0.01;
/// A `camera_info` whose rotation turns by more than this from the last one jumps.
pub const JUMP_ROTATION_DEG: f64 = 45.0;

/// What a dispatched unit needs back when its result comes.
struct Pending {
    camera: String,
    used: Vec<u64>,
    view: ViewIn,
}

/// The last `camera_info` of a camera: `[fx, fy, cx, cy]`, size, extrinsics.
type KnownCamera = ([f64; 4], (u32, u32), [f64; 12]);

pub struct TrackMode {
    cfg: TrackConfig,
    trackers: BTreeMap<String, Tracker<ViewIn>>,
    pending: HashMap<u64, Pending>,
    cameras: HashMap<String, KnownCamera>,
    /// `camera_info` messages that jumped (each re-anchors its camera).
    pub camera_info_jumps: u64,
    /// Units that could not be tracked (no predicted poses: a model without a camera head).
    pub untracked: u64,
    /// Inference times by views per unit (the last 200 of each), ms.
    infer_ms: BTreeMap<usize, VecDeque<f64>>,
    /// Time to send a unit's outputs (post-processing included), ms.
    send_ms: VecDeque<f64>,
}

impl TrackMode {
    pub fn new(cfg: TrackConfig) -> Self {
        Self {
            cfg,
            trackers: BTreeMap::new(),
            pending: HashMap::new(),
            cameras: HashMap::new(),
            camera_info_jumps: 0,
            untracked: 0,
            infer_ms: BTreeMap::new(),
            send_ms: VecDeque::new(),
        }
    }

    /// The unit of a freshest frame (the scheduler's one-view unit, `seq` set) with its
    /// camera's keyframes in front; only the frame is sent.
    pub fn unit(&mut self, mut u: WorkUnit) -> WorkUnit {
        if u.views.len() != 1 {
            return u;
        }
        let Some(view) = u.views.pop() else {
            return u;
        };
        let camera = Scheduler::camera_key(&view);
        let cfg = self.cfg;
        let tracker = self
            .trackers
            .entry(camera.clone())
            .or_insert_with(|| Tracker::new(cfg));
        let used: Vec<u64> = tracker.keyframes().iter().map(|k| k.key).collect();
        let mut views: Vec<ViewIn> = tracker
            .keyframes()
            .iter()
            .map(|k| k.payload.clone())
            .collect();
        views.push(view.clone());
        let mut emit = vec![false; views.len() - 1];
        emit.push(true);
        self.pending.insert(u.seq, Pending { camera, used, view });
        WorkUnit {
            views,
            emit,
            chain_key: None,
            ..u
        }
    }

    /// How long sending a unit's outputs took (the node's own work after the inference).
    pub fn record_send_ms(&mut self, ms: f64) {
        self.send_ms.push_back(ms);
        if self.send_ms.len() > 200 {
            self.send_ms.pop_front();
        }
    }

    /// A unit failed: nothing to place.
    pub fn forget(&mut self, seq: u64) {
        self.pending.remove(&seq);
    }

    /// Places the unit's new frame in its camera's world, in place (world-to-camera
    /// extrinsics of the world pose, depth times the world scale); the status records to
    /// send.
    pub fn apply(&mut self, unit: &mut UnitOut) -> Vec<Value> {
        let Some(p) = self.pending.remove(&unit.seq) else {
            return vec![];
        };
        let n = p.used.len();
        let poses: Option<Vec<CamPose>> = unit
            .views
            .iter()
            .map(|v| v.extrinsics.as_ref().map(CamPose::from_world_to_camera))
            .collect();
        let (Some(poses), true) = (poses, unit.views.len() == n + 1) else {
            self.untracked += 1;
            return vec![];
        };
        let times = self.infer_ms.entry(n + 1).or_default();
        times.push_back(unit.infer_ms);
        if times.len() > 200 {
            times.pop_front();
        }
        // A pose-conditioned unit reports the given camera of the frame.
        let given = p.view.extrinsics.is_some() && unit.views[n].extrinsics == p.view.extrinsics;
        let Some(tracker) = self.trackers.get_mut(&p.camera) else {
            return vec![];
        };
        let info = unit.views[n].info.clone();
        let out = {
            let obs: Vec<Observation> = unit
                .views
                .iter()
                .zip(&poses)
                .enumerate()
                .map(|(i, (v, pose))| Observation {
                    pose: *pose,
                    depth: &v.depth,
                    given: i == n && given,
                })
                .collect();
            tracker.update(
                &p.used,
                &obs[..n],
                obs[n],
                (info.frame_id, info.stamp_ns),
                p.view,
            )
        };
        let v = &mut unit.views[n];
        if out.scale != 1.0 {
            v.depth
                .iter_mut()
                .for_each(|d| *d = (*d as f64 * out.scale) as f32);
        }
        v.extrinsics = Some(out.pose.world_to_camera());
        let event = |what: &str, reason: Option<String>| {
            json!({
                "type": "track",
                "event": what,
                "camera": p.camera,
                "frame_id": info.frame_id,
                "world": out.world,
                "reason": reason,
            })
        };
        match &out.decision {
            Decision::Anchored => vec![event("anchor", None)],
            Decision::Tracked => vec![],
            Decision::Reanchored(why) => {
                tracing::warn!(
                    "track `{}` frame {:?}: re-anchored (world {}): {}",
                    p.camera,
                    info.frame_id,
                    out.world,
                    why.describe()
                );
                vec![event("reanchor", Some(why.describe()))]
            }
        }
    }

    /// A `camera_info` for camera `name`: when it jumps from the last one (size, intrinsics
    /// by more than [`JUMP_INTRINSICS`], rotation by more than [`JUMP_ROTATION_DEG`]) it
    /// is counted and the camera's tracker re-anchors at its next frame; the reason.
    pub fn camera_info(
        &mut self,
        name: &str,
        k: &Intrinsics,
        extrinsics: &[f64; 12],
        size: (u32, u32),
    ) -> Option<String> {
        let now: KnownCamera = ([k.fx, k.fy, k.cx, k.cy], size, *extrinsics);
        let before = self.cameras.insert(name.to_string(), now)?;
        let reason = if before.1 != size {
            format!("camera_info size {:?} -> {size:?}", before.1)
        } else if before
            .0
            .iter()
            .zip(&now.0)
            .any(|(a, b)| (a - b).abs() > JUMP_INTRINSICS * a.abs().max(b.abs()).max(1.0))
        {
            format!("camera_info intrinsics {:?} -> {:?}", before.0, now.0)
        } else {
            let turn = rotation_angle(&matmul(
                &transpose(&rotation_of(&before.2)),
                &rotation_of(extrinsics),
            ))
            .to_degrees();
            if turn <= JUMP_ROTATION_DEG {
                return None;
            }
            format!("camera_info turned {turn:.0} deg")
        };
        self.camera_info_jumps += 1;
        if let Some(t) = self.trackers.get_mut(name) {
            t.request_reanchor(reason.clone());
        }
        tracing::warn!("`{name}`: {reason}: re-anchoring");
        Some(reason)
    }

    /// The `track` object of the stats record.
    pub fn report(&self, out_of_order: u64, duplicate_stamps: u64) -> Value {
        let mut keyframes = serde_json::Map::new();
        let (mut frames, mut tracked, mut reanchors, mut added, mut outliers, mut max_res) =
            (0, 0, 0, 0, 0, 0f64);
        for (cam, t) in &self.trackers {
            keyframes.insert(cam.clone(), json!(t.keyframes().len()));
            frames += t.stats.frames;
            tracked += t.stats.tracked;
            reanchors += t.stats.reanchors;
            added += t.stats.keyframes_added;
            outliers += t.stats.outlier_keyframes;
            max_res = max_res.max(t.stats.max_residual);
        }
        let mut residual = percentiles(
            self.trackers
                .values()
                .flat_map(|t| t.stats.recent_residuals()),
        );
        residual["max"] = json!(max_res);
        json!({
            "keyframes_max": self.cfg.keyframes,
            "keyframes": keyframes,
            "frames": frames,
            "tracked": tracked,
            "reanchors": reanchors,
            "worlds": self.trackers.values().map(|t| t.world() + 1).sum::<u64>(),
            "keyframes_added": added,
            "outlier_keyframes": outliers,
            "residual": residual,
            "untracked": self.untracked,
            "out_of_order": out_of_order,
            "duplicate_stamps": duplicate_stamps,
            "camera_info_jumps": self.camera_info_jumps,
            "infer_ms_full": percentiles(
                self.infer_ms
                    .get(&(self.cfg.keyframes + 1))
                    .into_iter()
                    .flatten()
                    .copied()
            ),
            "send_ms": percentiles(self.send_ms.iter().copied()),
            "infer_ms_by_views": self
                .infer_ms
                .iter()
                .map(|(n, v)| (n.to_string(), percentiles(v.iter().copied())))
                .collect::<serde_json::Map<String, Value>>(),
        })
    }
}
