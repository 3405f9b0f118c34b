//! Track mode's maths against a pose oracle standing in for the network: a test double
//! that, for the views of one inference, returns the ground-truth poses and depths of a
//! synthetic trajectory seen through that inference's own random frame and scale, with
//! noise. 300 frames of a loop with four turns.

use da3_io::align::umeyama;
use da3_io::align_poses::CamPose;
use da3_io::geometry::{mat_vec, matmul, transpose, Vec3};
use dora_da3::track::{Decision, Failure, Observation, TrackConfig, Tracker};

const FRAMES: usize = 300;
/// Depth "pixels" per frame.
const PIXELS: usize = 48;

/// xorshift64* with Box-Muller normals: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

use da3_io::geometry::testing::rot_xyz as rot;

/// One ground-truth frame: camera-to-world pose (OpenCV axes, world y down) and depth.
struct Truth {
    pose: CamPose,
    depth: Vec<f32>,
}

/// A rounded 8 m x 4 m rectangle (corner radius 1 m) driven once round in `FRAMES`
/// frames, camera facing along the path, bobbing up and down and pitching a little.
fn loop_with_turns() -> Vec<Truth> {
    let (a, b, r) = (8.0f64, 4.0f64, 1.0f64);
    let straight = [a - 2.0 * r, b - 2.0 * r, a - 2.0 * r, b - 2.0 * r];
    let arc = std::f64::consts::FRAC_PI_2 * r;
    let perimeter: f64 = straight.iter().sum::<f64>() + 4.0 * arc;
    (0..FRAMES)
        .map(|i| {
            let mut u = perimeter * i as f64 / FRAMES as f64;
            // Walk the path: straight, quarter turn, ... heading starts along +z.
            let (mut x, mut z, mut yaw) = (0.0f64, 0.0f64, 0.0f64);
            for seg in straight {
                let step = u.min(seg);
                x += yaw.sin() * step;
                z += yaw.cos() * step;
                u -= step;
                if u <= 0.0 {
                    break;
                }
                let turn = u.min(arc) / r;
                // A left turn of `turn` radians on a circle of radius r (x right, z forward).
                let (s0, c0) = yaw.sin_cos();
                let (s1, c1) = (yaw - turn).sin_cos();
                // Centre of the circle is to the left: (-cos yaw, sin yaw) * r.
                let cxz = (x - c0 * r, z + s0 * r);
                x = cxz.0 + c1 * r;
                z = cxz.1 - s1 * r;
                yaw -= turn;
                u -= u.min(arc);
                if u <= 0.0 {
                    break;
                }
            }
            let t = i as f64;
            let y = -1.2 + 0.05 * (t / 9.0).sin();
            let pitch = 0.05 * (t / 13.0).sin();
            let pose = CamPose {
                r: rot(pitch, yaw, 0.0),
                c: [x, y, z],
            };
            let median = 3.0 + (t / 25.0).sin();
            let depth = (0..PIXELS)
                .map(|k| (median * (0.5 + k as f64 / (PIXELS - 1) as f64)) as f32)
                .collect();
            Truth { pose, depth }
        })
        .collect()
}

/// How one inference goes wrong.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Every view's pose thrown off (a bad inference).
    Everything,
    /// One keyframe's pose thrown off (of three).
    OneKeyframe,
}

/// The oracle: the views' ground truth through a random similarity (the inference's own
/// frame and scale, `x_world = s R x_inf + t`), with pose and depth noise.
fn oracle(rng: &mut Rng, gt: &[Truth], views: &[usize], fault: Fault) -> Vec<(CamPose, Vec<f32>)> {
    let s = 0.3 * 10f64.powf(rng.uniform());
    let r = rot(
        rng.uniform() * 6.0,
        rng.uniform() * 6.0,
        rng.uniform() * 6.0,
    );
    let t: Vec3 = std::array::from_fn(|_| 5.0 * rng.normal());
    let rt = transpose(&r);
    views
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let g = &gt[i];
            let scene = g.depth[PIXELS / 2] as f64;
            let mut c: Vec3 = std::array::from_fn(|k| g.pose.c[k] + 0.003 * scene * rng.normal());
            let mut rw = matmul(
                &rot(
                    0.002 * rng.normal(),
                    0.002 * rng.normal(),
                    0.002 * rng.normal(),
                ),
                &g.pose.r,
            );
            let bad = match fault {
                Fault::None => false,
                Fault::Everything => true,
                Fault::OneKeyframe => j == 0 && views.len() > 3,
            };
            if bad {
                c = std::array::from_fn(|k| c[k] + scene * rng.normal());
                rw = matmul(&rot(rng.normal(), rng.normal(), rng.normal()), &rw);
            }
            let d: Vec3 = std::array::from_fn(|k| c[k] - t[k]);
            let pose = CamPose {
                r: matmul(&rt, &rw),
                c: mat_vec(&rt, &d).map(|v| v / s),
            };
            // Depth: per-view bias 0.3 %, per-pixel noise 2 %.
            let bias = 1.0 + 0.003 * rng.normal();
            let mut depth: Vec<f32> = g
                .depth
                .iter()
                .map(|v| (*v as f64 / s * bias * (1.0 + 0.02 * rng.normal())) as f32)
                .collect();
            if bad && fault == Fault::Everything {
                depth.iter_mut().for_each(|v| *v *= 3.0);
            }
            (pose, depth)
        })
        .collect()
}

struct Run {
    poses: Vec<CamPose>,
    decisions: Vec<Decision>,
    max_keyframes: usize,
    reanchors: u64,
}

/// Every frame through the tracker, the oracle standing in for the network; `fault(i)`
/// says how frame i's inference goes wrong.
fn track(gt: &[Truth], fault: impl Fn(usize) -> Fault) -> Run {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cfg = TrackConfig::default();
    let mut tracker: Tracker<usize> = Tracker::new(cfg);
    let mut run = Run {
        poses: vec![],
        decisions: vec![],
        max_keyframes: 0,
        reanchors: 0,
    };
    for i in 0..gt.len() {
        let kfs: Vec<(u64, usize)> = tracker
            .keyframes()
            .iter()
            .map(|k| (k.key, k.payload))
            .collect();
        run.max_keyframes = run.max_keyframes.max(kfs.len());
        let mut views: Vec<usize> = kfs.iter().map(|k| k.1).collect();
        views.push(i);
        let pred = oracle(&mut rng, gt, &views, fault(i));
        let obs: Vec<Observation> = pred
            .iter()
            .map(|(pose, depth)| Observation {
                pose: *pose,
                depth,
                given: false,
            })
            .collect();
        let keys: Vec<u64> = kfs.iter().map(|k| k.0).collect();
        let stamp = i as u64 * 33_333_333;
        let out = tracker.update(
            &keys,
            &obs[..keys.len()],
            obs[keys.len()],
            (Some(i as u64), Some(stamp)),
            i,
        );
        assert!(out.scale.is_finite() && out.scale > 0.0);
        run.poses.push(out.pose);
        run.decisions.push(out.decision);
    }
    run.reanchors = tracker.stats.reanchors;
    run
}

fn length(gt: &[Truth]) -> f64 {
    gt.windows(2).map(|w| w[0].pose.distance(&w[1].pose)).sum()
}

/// Sim(3)-aligned trajectory error (max over frames) and the alignment's scale.
fn ate(est: &[CamPose], gt: &[Truth]) -> (f64, f64) {
    let x: Vec<[f64; 3]> = est.iter().map(|p| p.c).collect();
    let y: Vec<[f64; 3]> = gt.iter().map(|g| g.pose.c).collect();
    let m = umeyama(&x, &y).expect("a spread trajectory");
    let err = x
        .iter()
        .zip(&y)
        .map(|(p, q)| {
            let a = m.apply(p);
            (0..3).map(|k| (a[k] - q[k]).powi(2)).sum::<f64>().sqrt()
        })
        .fold(0.0, f64::max);
    (err, m.s)
}

#[test]
fn the_trajectory_follows_a_loop_within_one_percent() {
    let gt = loop_with_turns();
    let len = length(&gt);
    let run = track(&gt, |_| Fault::None);
    assert_eq!(run.reanchors, 0, "{:?}", run.decisions);
    assert!(run.max_keyframes <= TrackConfig::default().keyframes);
    assert!(run.decisions[1..]
        .iter()
        .all(|d| matches!(d, Decision::Tracked)));
    let (err, _) = ate(&run.poses, &gt);
    // Scale drift: the scale of the first and of the last 60 frames against the truth.
    let (_, s_first) = ate(&run.poses[..60], &gt[..60]);
    let (_, s_last) = ate(&run.poses[FRAMES - 60..], &gt[FRAMES - 60..]);
    let drift = (s_last / s_first - 1.0).abs();
    println!(
        "loop of {len:.2} m: max trajectory error {err:.4} m ({:.3} %), scale drift {:.3} %",
        100.0 * err / len,
        100.0 * drift
    );
    assert!(err <= 0.01 * len, "trajectory error {err} m of {len} m");
    assert!(drift <= 0.02, "scale drift {drift}");
}

#[test]
fn one_bad_keyframe_is_outvoted() {
    let gt = loop_with_turns();
    let len = length(&gt);
    let run = track(&gt, |i| {
        if i % 25 == 10 {
            Fault::OneKeyframe
        } else {
            Fault::None
        }
    });
    assert_eq!(run.reanchors, 0);
    let (err, _) = ate(&run.poses, &gt);
    println!(
        "one bad keyframe every 25 frames: error {:.3} %",
        100.0 * err / len
    );
    assert!(err <= 0.01 * len);
}

#[test]
fn a_bad_inference_reanchors_and_tracking_recovers() {
    let gt = loop_with_turns();
    let bad = 150;
    let run = track(&gt, |i| {
        if i == bad {
            Fault::Everything
        } else {
            Fault::None
        }
    });
    assert_eq!(run.reanchors, 1, "{:?}", run.decisions);
    assert!(
        matches!(
            run.decisions[bad],
            Decision::Reanchored(Failure::Residual { .. } | Failure::NoOverlap { .. })
        ),
        "{:?}",
        run.decisions[bad]
    );
    assert!(run.decisions[bad + 1..]
        .iter()
        .all(|d| matches!(d, Decision::Tracked)));
    // After the re-anchor the new world tracks again: its own trajectory within 1 %.
    let after = &run.poses[bad + 1..];
    let (err, _) = ate(after, &gt[bad + 1..]);
    let len_after = length(&gt[bad + 1..]);
    // The new world starts at the last good pose: the whole run stays continuous.
    let (err_all, _) = ate(&run.poses, &gt);
    println!(
        "re-anchored at {bad}: after it {:.3} % of {len_after:.2} m; whole loop {:.3} %",
        100.0 * err / len_after,
        100.0 * err_all / length(&gt)
    );
    assert!(err <= 0.01 * len_after);
    assert!(err_all <= 0.02 * length(&gt));
}
