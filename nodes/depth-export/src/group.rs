//! Groups the messages of one frame, keyed by `(camera, frame_id)`.
//!
//! A frame is released once its depth has arrived and every wired input has
//! delivered for it; or, incomplete, when a later frame's depth of the same
//! camera arrives, when an input closes, or at the end of the stream. A frame
//! is never lost because a companion (say a small `camera` message that dora
//! dropped) is missing; frames without depth are dropped with a warning.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use da3_msg::{CameraMsg, DepthMap, FrameInfo, ImageFrame, PointCloud, Splats};

use crate::frame::FrameResult;

/// An image message decoded to packed RGB8 when it arrived (an image that does
/// not decode is rejected at the door, with the other bad messages).
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub info: FrameInfo,
    /// `(width, height, pixels)`.
    pub rgb: (u32, u32, Vec<u8>),
}

/// A decoded input message.
#[derive(Debug, Clone)]
pub enum Item {
    Depth(DepthMap),
    Confidence(DepthMap),
    Camera(CameraMsg),
    Points(PointCloud),
    /// The source image (colours).
    Image(DecodedImage),
    /// The colour-mapped depth (`depth_vis`).
    Vis(DecodedImage),
    /// A mask (the DA3 node's `sky`): its name and its `mono8` frame.
    Mask(String, ImageFrame),
    /// 3D Gaussians of the frame (the DA3 node's `gaussians`).
    Gaussians(Splats),
}

impl Item {
    fn info(&self) -> &FrameInfo {
        match self {
            Item::Depth(d) | Item::Confidence(d) => &d.info,
            Item::Camera(c) => &c.info,
            Item::Points(p) => &p.info,
            Item::Image(i) | Item::Vis(i) => &i.info,
            Item::Mask(_, f) => &f.info,
            Item::Gaussians(g) => &g.info,
        }
    }
}

#[derive(Default)]
struct Pending {
    stamp_ns: Option<u64>,
    depth: Option<DepthMap>,
    confidence: Option<DepthMap>,
    camera_msg: Option<CameraMsg>,
    points: Option<PointCloud>,
    image: Option<DecodedImage>,
    vis: Option<DecodedImage>,
    mask: Option<(String, ImageFrame)>,
    gaussians: Option<Splats>,
    seen: BTreeSet<String>,
}

impl Pending {
    fn into_result(self, camera: String, frame_id: u64) -> Option<FrameResult> {
        let depth = self.depth?;
        Some(FrameResult {
            camera,
            frame_id,
            stamp_ns: self.stamp_ns.or(depth.info.stamp_ns),
            depth,
            confidence: self.confidence,
            camera_msg: self.camera_msg,
            points: self.points,
            image: self.image.map(|i| i.rgb),
            vis: self.vis.map(|i| i.rgb),
            mask: self.mask,
            gaussians: self.gaussians,
        })
    }
}

/// The frames in flight.
pub struct Grouper {
    expected: BTreeSet<String>,
    default_camera: String,
    pending: BTreeMap<(String, u64), Pending>,
    /// Frame numbers given to messages without `frame_id`, per (camera, input).
    counters: HashMap<(String, String), u64>,
    /// Frames dropped because their depth never came.
    pub dropped_without_depth: u64,
}

impl Grouper {
    /// `expected`: the wired input ids (a frame is complete when each delivered).
    pub fn new(expected: impl IntoIterator<Item = String>, default_camera: &str) -> Self {
        Self {
            expected: expected.into_iter().collect(),
            default_camera: default_camera.to_string(),
            pending: BTreeMap::new(),
            counters: HashMap::new(),
            dropped_without_depth: 0,
        }
    }

    /// Adds one message from input `input`; returns the frames now ready, in order.
    pub fn push(&mut self, input: &str, item: Item) -> Vec<FrameResult> {
        let info = item.info().clone();
        let camera = info
            .camera
            .clone()
            .unwrap_or_else(|| self.default_camera.clone());
        let frame_id = match info.frame_id {
            Some(id) => id,
            None => {
                let c = self
                    .counters
                    .entry((camera.clone(), input.to_string()))
                    .or_insert(0);
                *c += 1;
                *c - 1
            }
        };
        let is_depth = matches!(item, Item::Depth(_));
        let key = (camera.clone(), frame_id);
        let p = self.pending.entry(key.clone()).or_default();
        p.seen.insert(input.to_string());
        if p.stamp_ns.is_none() {
            p.stamp_ns = info.stamp_ns;
        }
        match item {
            Item::Depth(d) => p.depth = Some(d),
            Item::Confidence(d) => p.confidence = Some(d),
            Item::Camera(c) => p.camera_msg = Some(c),
            Item::Points(x) => p.points = Some(x),
            Item::Image(i) => p.image = Some(i),
            Item::Vis(i) => p.vis = Some(i),
            Item::Mask(name, f) => p.mask = Some((name, f)),
            Item::Gaussians(g) => p.gaussians = Some(g),
        }
        let mut ready: Vec<(String, u64)> = Vec::new();
        if is_depth {
            // Earlier frames of this camera: their depth came, so they are
            // released as they are; without depth they never will be.
            for (k, q) in self
                .pending
                .range((camera.clone(), 0)..(camera.clone(), frame_id))
            {
                if q.depth.is_some() {
                    ready.push(k.clone());
                }
            }
        }
        if self.is_complete(&key) {
            ready.push(key);
        }
        let mut out = self.release(ready);
        if is_depth {
            let stale: Vec<(String, u64)> = self
                .pending
                .range((camera.clone(), 0)..(camera, frame_id))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.pending.remove(&k);
                self.dropped_without_depth += 1;
                tracing::warn!("frame {} of `{}` has no depth: not exported", k.1, k.0);
            }
        }
        out.sort_by(|a, b| (&a.camera, a.frame_id).cmp(&(&b.camera, b.frame_id)));
        out
    }

    /// An input closed: it is no longer waited for.
    pub fn input_closed(&mut self, input: &str) -> Vec<FrameResult> {
        self.expected.remove(input);
        let ready: Vec<_> = self
            .pending
            .keys()
            .filter(|k| self.is_complete(k))
            .cloned()
            .collect();
        self.release(ready)
    }

    /// End of the stream: every frame with depth, in order.
    pub fn finish(&mut self) -> Vec<FrameResult> {
        let all: Vec<_> = self.pending.keys().cloned().collect();
        let before = all.len();
        let out = self.release(all);
        let lost = before - out.len();
        if lost > 0 {
            self.dropped_without_depth += lost as u64;
            tracing::warn!("{lost} frames had no depth at the end: not exported");
        }
        out
    }

    /// Frames waiting for companions.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn is_complete(&self, key: &(String, u64)) -> bool {
        self.pending
            .get(key)
            .is_some_and(|p| p.depth.is_some() && self.expected.iter().all(|e| p.seen.contains(e)))
    }

    fn release(&mut self, keys: Vec<(String, u64)>) -> Vec<FrameResult> {
        keys.into_iter()
            .filter_map(|k| {
                let p = self.pending.remove(&k)?;
                p.into_result(k.0, k.1)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::sample_frame;
    use da3_msg::DepthKind;

    fn depth(id: u64) -> Item {
        let mut d = sample_frame().depth;
        d.info.frame_id = Some(id);
        Item::Depth(d)
    }

    fn conf(id: u64) -> Item {
        let mut d = sample_frame().depth;
        d.kind = DepthKind::Confidence;
        d.info.frame_id = Some(id);
        Item::Confidence(d)
    }

    fn ids(v: &[FrameResult]) -> Vec<u64> {
        v.iter().map(|f| f.frame_id).collect()
    }

    #[test]
    fn waits_for_every_wired_input() {
        let mut g = Grouper::new(["depth".to_string(), "confidence".to_string()], "x");
        assert!(g.push("depth", depth(0)).is_empty());
        let out = g.push("confidence", conf(0));
        assert_eq!(ids(&out), [0]);
        assert!(out[0].confidence.is_some());
        assert_eq!(out[0].camera, "cam/a");
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn a_missing_companion_never_loses_the_frame() {
        let mut g = Grouper::new(["depth".to_string(), "confidence".to_string()], "x");
        // Confidence of frame 0 lost: frame 0 goes out when frame 1's depth comes.
        assert!(g.push("depth", depth(0)).is_empty());
        let out = g.push("depth", depth(1));
        assert_eq!(ids(&out), [0]);
        assert!(out[0].confidence.is_none());
        // Companion first, then depth.
        assert!(g.push("confidence", conf(2)).is_empty());
        let out = g.push("depth", depth(2));
        assert_eq!(ids(&out), [1, 2]);
        assert!(out[1].confidence.is_some());
        // A last frame whose companion never comes goes out at the end.
        assert!(g.push("depth", depth(3)).is_empty());
        assert_eq!(ids(&g.finish()), [3]);
    }

    #[test]
    fn frames_without_depth_are_dropped_and_closing_releases() {
        let mut g = Grouper::new(["depth".to_string(), "confidence".to_string()], "x");
        assert!(g.push("confidence", conf(0)).is_empty());
        assert!(g.push("depth", depth(1)).is_empty());
        assert_eq!(g.dropped_without_depth, 1);
        assert_eq!(ids(&g.input_closed("confidence")), [1]);
        assert!(g.push("confidence", conf(5)).is_empty());
        assert!(g.finish().is_empty());
        assert_eq!(g.dropped_without_depth, 2);
    }
}
