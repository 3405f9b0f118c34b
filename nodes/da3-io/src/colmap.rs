//! A COLMAP text model: `cameras.txt` (one `PINHOLE` camera per image),
//! `images.txt` (world-to-camera quaternion `QW QX QY QZ` and translation
//! `TX TY TZ`, then the image's 2D points) and `points3D.txt` (each point with
//! its track), and readers of those files.
//!
//! The exporters add no observations yet: every image has an empty 2D-points
//! line and every point an empty track. [`ColmapImage::points2d`] and
//! [`Point3D::track`] are where they go.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use eyre::Result;

use crate::atomic;
use crate::geometry::{
    pinhole_params, quat_from_matrix, rotation_of, translation_of, CameraGeometry,
};

/// A 2D point of an image: pixel `[x, y]` and the id of its 3D point, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Point2D {
    pub xy: [f64; 2],
    pub point3d_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColmapImage {
    /// `[qw, qx, qy, qz]` of the world-to-camera rotation.
    pub q: [f64; 4],
    /// World-to-camera translation.
    pub t: [f64; 3],
    /// `[width, height, fx, fy, cx, cy]`.
    pub camera: [f64; 6],
    pub name: String,
    /// The image's 2D points (`POINTS2D[]`), none yet.
    pub points2d: Vec<Point2D>,
}

/// One observation of a 3D point: `(IMAGE_ID, POINT2D_IDX)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackElement {
    pub image_id: u64,
    pub point2d_idx: u64,
}

/// A 3D point with its colour and track.
#[derive(Debug, Clone, PartialEq)]
pub struct Point3D {
    pub xyz: [f32; 3],
    pub rgb: [u8; 3],
    /// Observations (`TRACK[]`), none yet.
    pub track: Vec<TrackElement>,
}

/// The model, accumulated over a run.
#[derive(Debug, Default)]
pub struct ColmapModel {
    pub images: Vec<ColmapImage>,
    pub points: Vec<Point3D>,
    /// Most points kept in `points3D.txt`.
    pub max_points: usize,
}

/// `total / count`, 0 when `count` is 0 (COLMAP's header means).
fn mean(total: usize, count: usize) -> f64 {
    if count == 0 {
        0.0
    } else {
        total as f64 / count as f64
    }
}

impl ColmapModel {
    pub fn new(max_points: usize) -> Self {
        Self {
            max_points,
            ..Default::default()
        }
    }

    /// Adds an image of camera `g` (skipped, returning `false`, when its
    /// intrinsics are unknown) and up to `points_per_frame` of its points
    /// (evenly sub-sampled).
    pub fn add(
        &mut self,
        g: &CameraGeometry,
        image_name: String,
        xyz: &[[f32; 3]],
        rgb: &[[u8; 3]],
        points_per_frame: usize,
    ) -> bool {
        let Some(k) = g.intrinsics else {
            return false;
        };
        let e = g.extrinsics;
        let [x, y, z, w] = quat_from_matrix(&rotation_of(&e));
        let [fx, fy, cx, cy] = pinhole_params(&k);
        self.images.push(ColmapImage {
            q: [w, x, y, z],
            t: translation_of(&e),
            camera: [g.width as f64, g.height as f64, fx, fy, cx, cy],
            name: image_name,
            points2d: Vec::new(),
        });
        let room = self.max_points.saturating_sub(self.points.len());
        let take = points_per_frame.min(room);
        if take > 0 && !xyz.is_empty() {
            let step = xyz.len().div_ceil(take).max(1);
            for i in (0..xyz.len()).step_by(step) {
                self.points.push(Point3D {
                    xyz: xyz[i],
                    rgb: rgb[i],
                    track: Vec::new(),
                });
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
        let observations: usize = self
            .images
            .iter()
            .map(|im| {
                im.points2d
                    .iter()
                    .filter(|p| p.point3d_id.is_some())
                    .count()
            })
            .sum();
        let _ = writeln!(
            s,
            "# Number of images: {}, mean observations per image: {}",
            self.images.len(),
            mean(observations, self.images.len())
        );
        for (i, im) in self.images.iter().enumerate() {
            let _ = writeln!(
                s,
                "{} {} {} {} {} {} {} {} {} {}",
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
            let points: Vec<String> = im
                .points2d
                .iter()
                .map(|p| {
                    let id = p.point3d_id.map_or(-1, |id| id as i64);
                    format!("{} {} {id}", p.xy[0], p.xy[1])
                })
                .collect();
            let _ = writeln!(s, "{}", points.join(" "));
        }
        s
    }

    pub fn points_txt(&self) -> String {
        let mut s = String::from("# 3D point list with one line of data per point:\n#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n");
        let observations: usize = self.points.iter().map(|p| p.track.len()).sum();
        let _ = writeln!(
            s,
            "# Number of points: {}, mean track length: {}",
            self.points.len(),
            mean(observations, self.points.len())
        );
        for (i, p) in self.points.iter().enumerate() {
            let (x, c) = (p.xyz, p.rgb);
            let _ = write!(
                s,
                "{} {} {} {} {} {} {} 0",
                i + 1,
                x[0],
                x[1],
                x[2],
                c[0],
                c[1],
                c[2]
            );
            for t in &p.track {
                let _ = write!(s, " {} {}", t.image_id, t.point2d_idx);
            }
            s.push('\n');
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
        // The POINTS2D line (its 2D points, not read back).
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
    use crate::geometry::{back_project, matrix_from_quat, world_to_camera, IDENTITY_3X4};

    /// A 4x3 camera at (1, 2, 3) rotated 90° about z, and its 12 back-projected points.
    fn sample() -> (CameraGeometry, Vec<[f32; 3]>, Vec<[u8; 3]>) {
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let g = CameraGeometry {
            width: 4,
            height: 3,
            intrinsics: Some([2.0, 0.0, 1.5, 0.0, 2.5, 1.0, 0.0, 0.0, 1.0]),
            extrinsics: world_to_camera(&matrix_from_quat(&[0.0, 0.0, s, s]), &[1.0, 2.0, 3.0]),
            has_pose: true,
            is_metric: true,
        };
        let depth: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 * 0.25).collect();
        let k = g.intrinsics.unwrap();
        let (xyz, rgb) = back_project(&depth, 4, None, 0.0, &k, &g.extrinsics)
            .into_iter()
            .map(|(i, p)| (p, [i as u8 * 3, i as u8 * 3 + 1, i as u8 * 3 + 2]))
            .unzip();
        (g, xyz, rgb)
    }

    #[test]
    fn model_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let (g, xyz, rgb) = sample();
        let mut m = ColmapModel::new(5);
        assert!(m.add(&g, "cam_a_000007.png".into(), &xyz, &rgb, 4));
        let g2 = CameraGeometry {
            extrinsics: IDENTITY_3X4,
            has_pose: false,
            ..g.clone()
        };
        assert!(m.add(&g2, "cam_a_000008.png".into(), &xyz, &rgb, 4));
        let g3 = CameraGeometry {
            intrinsics: None,
            ..g.clone()
        };
        assert!(!m.add(&g3, "none.png".into(), &[], &[], 4));
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

    #[test]
    fn empty_tracks_write_the_headers_and_lines_colmap_expects() {
        let (g, xyz, rgb) = sample();
        let mut m = ColmapModel::new(1);
        assert!(m.add(&g, "a.png".into(), &xyz, &rgb, 1));
        let images = m.images_txt();
        assert!(
            images.contains("mean observations per image: 0\n"),
            "{images}"
        );
        assert!(images.ends_with(" 1 a.png\n\n"), "{images:?}");
        let points = m.points_txt();
        assert!(points.contains("mean track length: 0\n1 "), "{points}");
        assert!(points.ends_with(" 0\n"), "{points:?}");
    }

    #[test]
    fn tracks_and_2d_points_are_written() {
        let (g, xyz, rgb) = sample();
        let mut m = ColmapModel::new(1);
        assert!(m.add(&g, "a.png".into(), &xyz, &rgb, 1));
        m.images[0].points2d = vec![
            Point2D {
                xy: [1.5, 2.0],
                point3d_id: Some(1),
            },
            Point2D {
                xy: [0.0, 0.0],
                point3d_id: None,
            },
        ];
        m.points[0].track.push(TrackElement {
            image_id: 1,
            point2d_idx: 0,
        });
        let images = m.images_txt();
        assert!(
            images.contains("mean observations per image: 1\n"),
            "{images}"
        );
        assert!(images.ends_with("a.png\n1.5 2 1 0 0 -1\n"), "{images:?}");
        assert_eq!(parse_images_txt(&images).unwrap().len(), 1);
        let points = m.points_txt();
        assert!(points.ends_with(" 0 1 0\n"), "{points:?}");
        assert_eq!(parse_points_txt(&points).unwrap().len(), 1);
    }
}
