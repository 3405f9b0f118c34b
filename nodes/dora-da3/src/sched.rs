//! Turns incoming views into work units according to the mode.
//!
//! - `live`: one slot per input holding its freshest frame; a newer frame
//!   replaces an unprocessed older one (counted in `dropped`). Memory and
//!   latency stay bounded whatever the camera rate.
//! - `batch`: a FIFO of every frame; nothing is dropped.
//! - `window`: per camera, a buffer of `window` frames is run as one unit,
//!   then the oldest `stride` frames leave it; frames are sent once, when they
//!   first appear in a unit.
//! - `rig`: the latest frame of each rig input; once every input has one and
//!   their capture times are within `sync`, they form one unit.
//! - `track`: as `live` (the node adds the keyframes to each unit), and a frame
//!   whose capture time (`stamp_ns`, else `frame_id`) is not newer than its
//!   camera's last accepted one is dropped and counted (`out_of_order`,
//!   `duplicate_stamps`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::config::Mode;
use crate::engine::{ViewIn, WorkUnit};

pub struct Scheduler {
    mode: Mode,
    window: usize,
    stride: usize,
    sync: Duration,
    rig_inputs: Vec<String>,
    live: BTreeMap<String, ViewIn>,
    fifo: VecDeque<ViewIn>,
    windows: HashMap<String, Vec<(ViewIn, bool)>>,
    rig: BTreeMap<String, ViewIn>,
    ready: VecDeque<WorkUnit>,
    /// Frames replaced before they were processed (live) or out of sync (rig).
    pub dropped: u64,
    /// Track mode: the newest capture time accepted per camera.
    newest: HashMap<String, u64>,
    /// Track mode: frames older than their camera's newest (also in `dropped`).
    pub out_of_order: u64,
    /// Track mode: frames with their camera's newest capture time again (also in `dropped`).
    pub duplicate_stamps: u64,
}

fn stamp(v: &ViewIn) -> u64 {
    v.info.stamp_ns.unwrap_or(0)
}

impl Scheduler {
    pub fn new(
        mode: Mode,
        window: usize,
        stride: usize,
        sync: Duration,
        rig_inputs: Vec<String>,
    ) -> Self {
        Self {
            mode,
            window: window.max(1),
            stride: stride.clamp(1, window.max(1)),
            sync,
            rig_inputs,
            live: BTreeMap::new(),
            fifo: VecDeque::new(),
            windows: HashMap::new(),
            rig: BTreeMap::new(),
            ready: VecDeque::new(),
            dropped: 0,
            newest: HashMap::new(),
            out_of_order: 0,
            duplicate_stamps: 0,
        }
    }

    /// A unit; its `seq` is set by the dispatcher when it actually runs, so
    /// units replaced before running leave no gap in the result order.
    fn unit(&mut self, views: Vec<ViewIn>, emit: Vec<bool>, chain_key: Option<String>) -> WorkUnit {
        WorkUnit {
            seq: 0,
            views,
            emit,
            chain_key,
        }
    }

    /// The camera a view belongs to (its `camera` metadata, else its input).
    pub fn camera_key(v: &ViewIn) -> String {
        v.info.camera.clone().unwrap_or_else(|| v.input.clone())
    }

    pub fn push(&mut self, v: ViewIn) {
        match self.mode {
            Mode::Live => {
                if self.live.insert(v.input.clone(), v).is_some() {
                    self.dropped += 1;
                }
            }
            Mode::Track => {
                if let Some(t) = v.info.stamp_ns.or(v.info.frame_id) {
                    let key = Self::camera_key(&v);
                    match self.newest.get(&key) {
                        Some(&n) if t < n => {
                            self.out_of_order += 1;
                            self.dropped += 1;
                            tracing::warn!(
                                "`{key}` frame {:?} is older than the last one: dropped",
                                v.info.frame_id
                            );
                            return;
                        }
                        Some(&n) if t == n => {
                            self.duplicate_stamps += 1;
                            self.dropped += 1;
                            tracing::warn!(
                                "`{key}` frame {:?} repeats the last capture time: dropped",
                                v.info.frame_id
                            );
                            return;
                        }
                        _ => {
                            self.newest.insert(key, t);
                        }
                    }
                }
                if self.live.insert(v.input.clone(), v).is_some() {
                    self.dropped += 1;
                }
            }
            Mode::Batch => self.fifo.push_back(v),
            Mode::Window => {
                let key = Self::camera_key(&v);
                let buf = self.windows.entry(key.clone()).or_default();
                buf.push((v, false));
                if buf.len() >= self.window {
                    let views: Vec<ViewIn> = buf.iter().map(|(v, _)| v.clone()).collect();
                    let emit: Vec<bool> = buf.iter().map(|(_, sent)| !sent).collect();
                    for (_, sent) in buf.iter_mut() {
                        *sent = true;
                    }
                    let n = self.stride.min(buf.len());
                    buf.drain(..n);
                    let u = self.unit(views, emit, Some(key));
                    self.ready.push_back(u);
                }
            }
            Mode::Rig => {
                if self.rig.insert(v.input.clone(), v).is_some() {
                    self.dropped += 1;
                }
                self.try_rig();
            }
        }
    }

    fn try_rig(&mut self) {
        loop {
            if self.rig_inputs.is_empty()
                || !self.rig_inputs.iter().all(|i| self.rig.contains_key(i))
            {
                return;
            }
            let stamps: Vec<u64> = self
                .rig_inputs
                .iter()
                .map(|i| stamp(&self.rig[i]))
                .collect();
            let (lo, hi) = (
                *stamps.iter().min().unwrap_or(&0),
                *stamps.iter().max().unwrap_or(&0),
            );
            if hi - lo <= self.sync.as_nanos() as u64 {
                let views: Vec<ViewIn> = self
                    .rig_inputs
                    .clone()
                    .iter()
                    .filter_map(|i| self.rig.remove(i))
                    .collect();
                let emit = vec![true; views.len()];
                // Only the freshest set matters in a rig: replace an unstarted one.
                if let Some(old) = self.ready.pop_back() {
                    self.dropped += old.views.len() as u64;
                }
                let u = self.unit(views, emit, None);
                self.ready.push_back(u);
                return;
            }
            // Out of sync: the oldest frame cannot pair with the others any more.
            let oldest = self
                .rig_inputs
                .iter()
                .min_by_key(|i| stamp(&self.rig[*i]))
                .cloned();
            if let Some(o) = oldest {
                self.rig.remove(&o);
                self.dropped += 1;
            }
        }
    }

    /// Makes units of what is waiting even if incomplete (end of stream or a
    /// `flush` input): partial windows. Incomplete rig sets are not run.
    pub fn flush(&mut self) {
        if self.mode != Mode::Window {
            return;
        }
        let mut keys: Vec<String> = self.windows.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let buf = self.windows.remove(&key).unwrap_or_default();
            if buf.iter().any(|(_, sent)| !sent) {
                let views = buf.iter().map(|(v, _)| v.clone()).collect();
                let emit = buf.iter().map(|(_, sent)| !sent).collect();
                let u = self.unit(views, emit, Some(key));
                self.ready.push_back(u);
            }
        }
    }

    /// The next unit to run, if any.
    pub fn next_unit(&mut self) -> Option<WorkUnit> {
        match self.mode {
            Mode::Live | Mode::Track => {
                // The input whose waiting frame arrived first goes next (fair across cameras).
                let key = self
                    .live
                    .iter()
                    .min_by_key(|(_, v)| v.received)
                    .map(|(k, _)| k.clone())?;
                let v = self.live.remove(&key)?;
                Some(self.unit(vec![v], vec![true], None))
            }
            Mode::Batch => {
                let v = self.fifo.pop_front()?;
                Some(self.unit(vec![v], vec![true], None))
            }
            Mode::Window | Mode::Rig => self.ready.pop_front(),
        }
    }

    /// At the end of the stream: frames of incomplete rig sets can never run;
    /// count them as dropped.
    pub fn finish(&mut self) {
        self.flush();
        self.dropped += self.rig.len() as u64;
        self.rig.clear();
    }

    /// Frames waiting (not yet in a running unit).
    pub fn pending(&self) -> usize {
        self.live.len() + self.fifo.len() + self.ready.iter().map(|u| u.views.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use da3::preprocess::RgbImage;
    use da3_msg::FrameInfo;
    use std::time::Instant;

    fn v(input: &str, id: u64, stamp_ms: u64) -> ViewIn {
        ViewIn {
            input: input.into(),
            info: FrameInfo {
                frame_id: Some(id),
                stamp_ns: Some(stamp_ms * 1_000_000),
                camera: Some(input.into()),
                last: false,
            },
            image: RgbImage::new(1, 1, vec![0, 0, 0]).unwrap(),
            intrinsics: None,
            extrinsics: None,
            received: Instant::now(),
        }
    }

    fn ids(u: &WorkUnit) -> Vec<u64> {
        u.views.iter().map(|v| v.info.frame_id.unwrap()).collect()
    }

    #[test]
    fn live_keeps_only_the_freshest() {
        let mut s = Scheduler::new(Mode::Live, 1, 1, Duration::ZERO, vec![]);
        for i in 0..5 {
            s.push(v("image", i, i));
        }
        assert_eq!(s.dropped, 4);
        assert_eq!(s.pending(), 1);
        assert_eq!(ids(&s.next_unit().unwrap()), vec![4]);
        assert!(s.next_unit().is_none());
    }

    #[test]
    fn batch_keeps_everything_in_order() {
        let mut s = Scheduler::new(Mode::Batch, 1, 1, Duration::ZERO, vec![]);
        for i in 0..5 {
            s.push(v("image", i, i));
        }
        let got: Vec<u64> = std::iter::from_fn(|| s.next_unit())
            .map(|u| ids(&u)[0])
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(s.dropped, 0);
    }

    #[test]
    fn windows_overlap_and_emit_each_frame_once() {
        let mut s = Scheduler::new(Mode::Window, 4, 2, Duration::ZERO, vec![]);
        for i in 0..9 {
            s.push(v("cam", i, i));
        }
        s.flush();
        let units: Vec<WorkUnit> = std::iter::from_fn(|| s.next_unit()).collect();
        let w: Vec<Vec<u64>> = units.iter().map(ids).collect();
        assert_eq!(
            w,
            vec![
                vec![0, 1, 2, 3],
                vec![2, 3, 4, 5],
                vec![4, 5, 6, 7],
                vec![6, 7, 8]
            ]
        );
        let emitted: Vec<u64> = units
            .iter()
            .flat_map(|u| {
                u.views
                    .iter()
                    .zip(&u.emit)
                    .filter(|(_, e)| **e)
                    .map(|(v, _)| v.info.frame_id.unwrap())
            })
            .collect();
        assert_eq!(emitted, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn track_drops_and_counts_stale_and_repeated_frames() {
        let mut s = Scheduler::new(Mode::Track, 1, 1, Duration::ZERO, vec![]);
        s.push(v("image", 0, 10));
        s.push(v("image", 1, 5)); // older
        s.push(v("image", 2, 10)); // same stamp
        s.push(v("other", 3, 5)); // another camera: its own clock
        assert_eq!((s.out_of_order, s.duplicate_stamps, s.dropped), (1, 1, 2));
        assert_eq!(ids(&s.next_unit().unwrap()), vec![0]);
        s.push(v("image", 4, 11));
        s.push(v("image", 5, 12)); // replaces 4 (freshest frame, as live)
        assert_eq!(s.dropped, 3);
        assert_eq!(ids(&s.next_unit().unwrap()), vec![3]);
        assert_eq!(ids(&s.next_unit().unwrap()), vec![5]);
    }

    #[test]
    fn rig_pairs_synchronised_frames() {
        let inputs = vec!["left".to_string(), "right".to_string()];
        let mut s = Scheduler::new(Mode::Rig, 1, 1, Duration::from_millis(10), inputs);
        s.push(v("left", 0, 100));
        assert!(s.next_unit().is_none());
        s.push(v("right", 0, 105));
        let u = s.next_unit().unwrap();
        assert_eq!(u.views.len(), 2);
        assert_eq!(u.views[0].input, "left");
        // Out of sync: the old left frame is dropped, the next left pairs.
        s.push(v("right", 1, 200));
        s.push(v("left", 1, 150));
        assert!(s.next_unit().is_none());
        s.push(v("left", 2, 203));
        let u = s.next_unit().unwrap();
        assert_eq!(ids(&u), vec![2, 1]);
        assert!(s.dropped >= 1);
    }
}
