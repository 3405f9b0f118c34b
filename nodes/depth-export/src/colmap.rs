//! A COLMAP text model of the whole run: `cameras.txt` (one `PINHOLE` camera
//! per exported frame), `images.txt` (world-to-camera quaternion
//! `QW QX QY QZ` and translation `TX TY TZ`, an empty 2D-points line each) and
//! `points3D.txt` (points from the frames, no tracks).

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use da3_msg::meta::quat_from_matrix;
use eyre::Result;

use crate::atomic;
use crate::frame::FrameResult;

#[derive(Debug, Clone, PartialEq)]
pub struct ColmapImage {
    /// `[qw, qx, qy, qz]` of the world-to-camera rotation.
    pub q: [f64; 4],
    /// World-to-camera translation.
    pub t: [f64; 3],
    /// `[width, height, fx, fy, cx, cy]`.
    pub camera: [f64; 6],
    pub name: String,
}

/// The model, accumulated over the run.
#[derive(Debug, Default)]
pub struct ColmapModel {
    pub images: Vec<ColmapImage>,
    pub points: Vec<([f32; 3], [u8; 3])>,
    /// Most points kept in `points3D.txt`.
    pub max_points: usize,
}

impl ColmapModel {
    pub fn new(max_points: usize) -> Self {
        Self {
            max_points,
            ..Default::default()
        }
    }

    /// Adds a frame (skipped when its intrinsics are unknown) and up to
    /// `points_per_frame` of its points (evenly sub-sampled).
    pub fn add(
        &mut self,
        f: &FrameResult,
        image_name: String,
        xyz: &[[f32; 3]],
        rgb: &[[u8; 3]],
        points_per_frame: usize,
    ) -> bool {
        let g = f.geometry();
        let Some(k) = g.intrinsics else {
            return false;
        };
        let e = g.extrinsics;
        let r = [[e[0], e[1], e[2]], [e[4], e[5], e[6]], [e[8], e[9], e[10]]];
        let [x, y, z, w] = quat_from_matrix(&r);
        self.images.push(ColmapImage {
            q: [w, x, y, z],
            t: [e[3], e[7], e[11]],
            camera: [g.width as f64, g.height as f64, k[0], k[4], k[2], k[5]],
            name: image_name,
        });
        let room = self.max_points.saturating_sub(self.points.len());
        let take = points_per_frame.min(room);
        if take > 0 && !xyz.is_empty() {
            let step = xyz.len().div_ceil(take).max(1);
            for i in (0..xyz.len()).step_by(step) {
                self.points.push((xyz[i], rgb[i]));
            }
        }
        true
    }

    pub fn cameras_txt(&self) -> String {
        let mut s = String::from("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n");
        let _ = writeln!(s, "# Number of cameras: {}", self.images.len());
        for (i, im) in self.images.iter().enumerate() {
            let c = im.camera;
            let _ = writeln!(
                s,
                "{} PINHOLE {} {} {} {} {} {}",
                i + 1,
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                c[5]
            );
        }
        s
    }

    pub fn images_txt(&self) -> String {
        let mut s = String::from("# Image list with two lines of data per image:\n#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n");
        let _ = writeln!(
            s,
            "# Number of images: {}, mean observations per image: 0",
            self.images.len()
        );
        for (i, im) in self.images.iter().enumerate() {
            let _ = writeln!(
                s,
                "{} {} {} {} {} {} {} {} {} {}\n",
                i + 1,
                im.q[0],
                im.q[1],
                im.q[2],
                im.q[3],
                im.t[0],
                im.t[1],
                im.t[2],
                i + 1,
                im.name
            );
        }
        s
    }

    pub fn points_txt(&self) -> String {
        let mut s = String::from("# 3D point list with one line of data per point:\n#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n");
        let _ = writeln!(
            s,
            "# Number of points: {}, mean track length: 0",
            self.points.len()
        );
        for (i, (p, c)) in self.points.iter().enumerate() {
            let _ = writeln!(
                s,
                "{} {} {} {} {} {} {} 0",
                i + 1,
                p[0],
                p[1],
                p[2],
                c[0],
                c[1],
                c[2]
            );
        }
        s
    }

    /// Writes the three files into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in [
            ("cameras.txt", self.cameras_txt()),
            ("images.txt", self.images_txt()),
            ("points3D.txt", self.points_txt()),
        ] {
            atomic::write_with(&dir.join(name), |w| Ok(w.write_all(text.as_bytes())?))?;
        }
        Ok(())
    }
}

/// One line of `images.txt`: `(id, [qw, qx, qy, qz], [tx, ty, tz], camera_id, name)`.
pub type ImageLine = (u64, [f64; 4], [f64; 3], u64, String);

/// Parses `images.txt` back.
pub fn parse_images_txt(text: &str) -> Result<Vec<ImageLine>> {
    let mut out = Vec::new();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    while let Some(line) = lines.next() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        eyre::ensure!(f.len() == 10, "images.txt: bad line {line:?}");
        let n = |i: usize| -> Result<f64> { Ok(f[i].parse::<f64>()?) };
        out.push((
            f[0].parse()?,
            [n(1)?, n(2)?, n(3)?, n(4)?],
            [n(5)?, n(6)?, n(7)?],
            f[8].parse()?,
            f[9].to_string(),
        ));
        // The POINTS2D line (empty here).
        let _ = lines.next();
    }
    Ok(out)
}

/// Parses `cameras.txt` back: `(id, model, params)`.
pub fn parse_cameras_txt(text: &str) -> Result<Vec<(u64, String, Vec<f64>)>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            eyre::ensure!(f.len() >= 4, "cameras.txt: bad line {l:?}");
            let params = f[2..]
                .iter()
                .map(|v| v.parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((f[0].parse()?, f[1].to_string(), params))
        })
        .collect()
}

/// Parses `points3D.txt` back: the `(xyz, rgb)` of every point.
pub fn parse_points_txt(text: &str) -> Result<Vec<([f64; 3], [u8; 3])>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            eyre::ensure!(f.len() >= 8, "points3D.txt: bad line {l:?}");
            Ok((
                [f[1].parse()?, f[2].parse()?, f[3].parse()?],
                [f[4].parse()?, f[5].parse()?, f[6].parse()?],
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::sample_frame;

    #[test]
    fn model_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = sample_frame();
        let (xyz, rgb) = f.world_points(0.0);
        let mut m = ColmapModel::new(5);
        assert!(m.add(&f, "cam_a_000007.png".into(), &xyz, &rgb, 4));
        let mut f2 = sample_frame();
        f2.frame_id = 8;
        f2.depth.pose = None;
        assert!(m.add(&f2, "cam_a_000008.png".into(), &xyz, &rgb, 4));
        let mut f3 = sample_frame();
        f3.depth.intrinsics = None;
        assert!(!m.add(&f3, "none.png".into(), &[], &[], 4));
        m.write(dir.path()).unwrap();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        let imgs = parse_images_txt(&read("images.txt")).unwrap();
        assert_eq!(imgs.len(), 2);
        // Camera at (1,2,3) rotated 90° about z: world-to-camera rotation is
        // -90° about z, q = (cos 45°, 0, 0, -sin 45°), t = -R C.
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let (id, q, t, cam, name) = &imgs[0];
        assert_eq!((*id, *cam, name.as_str()), (1, 1, "cam_a_000007.png"));
        for (a, b) in q.iter().zip([s, 0.0, 0.0, -s]) {
            assert!((a - b).abs() < 1e-9, "{q:?}");
        }
        for (a, b) in t.iter().zip([-2.0, 1.0, -3.0]) {
            assert!((a - b).abs() < 1e-9, "{t:?}");
        }
        assert_eq!(imgs[1].1, [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(imgs[1].2, [0.0, 0.0, 0.0]);
        let cams = parse_cameras_txt(&read("cameras.txt")).unwrap();
        assert_eq!(cams.len(), 2);
        assert_eq!(cams[0].1, "PINHOLE");
        assert_eq!(cams[0].2, [4.0, 3.0, 2.0, 2.5, 1.5, 1.0]);
        let pts = parse_points_txt(&read("points3D.txt")).unwrap();
        // 4 from the first frame (every 3rd of 12), 1 left for the second.
        assert_eq!(pts.len(), 5);
        assert!((pts[0].0[2] - xyz[0][2] as f64).abs() < 1e-6);
        assert_eq!(pts[1].1, rgb[3]);
    }
}
