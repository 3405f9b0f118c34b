//! A COLMAP model, as text (`cameras.txt`, `images.txt`, `points3D.txt`) or
//! binary (`cameras.bin`, `images.bin`, `points3D.bin`): one `PINHOLE` camera
//! per image; per image the world-to-camera quaternion `QW QX QY QZ`, the
//! translation `TX TY TZ` and its 2D points; per 3D point its colour and track.
//! Readers of the text files.
//!
//! Every 3D point is observed once, in the image it came from: [`ColmapModel::add`]
//! projects it with that image's camera, adds the pixel as a 2D point of the
//! image holding the point's id, and the `(IMAGE_ID, POINT2D_IDX)` of that 2D
//! point as the point's track. Pixel coordinates are DA3's (pixel centres at
//! integers, as the reference's COLMAP export writes them).

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use eyre::Result;

use crate::atomic;
use crate::geometry::{
    pinhole_params, project, quat_from_matrix, rotation_of, subsample_step, translation_of,
    CameraGeometry,
};

/// COLMAP's id of the `PINHOLE` camera model (`fx fy cx cy`).
const PINHOLE_MODEL_ID: i32 = 1;
/// COLMAP's "no 3D point" id of a 2D point in the binary format (`-1` in text).
const INVALID_POINT3D_ID: u64 = u64::MAX;
/// How far outside the image (pixels) a projected point still counts as seen.
const IMAGE_MARGIN: f64 = 0.5;

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
    /// The image's 2D points (`POINTS2D[]`).
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
    /// Observations (`TRACK[]`).
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
    /// (evenly sub-sampled), each observed in this image: the pixel where `g`
    /// sees it becomes a 2D point of the image and the point's track. Points
    /// `g` does not see (behind it, or more than half a pixel outside the
    /// image) are left out.
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
        let image_id = self.images.len() as u64 + 1;
        let (width, height) = (g.width as f64, g.height as f64);
        let mut points2d = Vec::new();
        let room = self.max_points.saturating_sub(self.points.len());
        let take = points_per_frame.min(room).min(xyz.len().min(rgb.len()));
        if take > 0 {
            let step = subsample_step(xyz.len(), take);
            for i in (0..xyz.len().min(rgb.len())).step_by(step) {
                let Some(uv) = project(&k, &e, xyz[i]) else {
                    continue;
                };
                let seen = (-IMAGE_MARGIN..=width - 1.0 + IMAGE_MARGIN).contains(&uv[0])
                    && (-IMAGE_MARGIN..=height - 1.0 + IMAGE_MARGIN).contains(&uv[1]);
                if !seen {
                    continue;
                }
                self.points.push(Point3D {
                    xyz: xyz[i],
                    rgb: rgb[i],
                    track: vec![TrackElement {
                        image_id,
                        point2d_idx: points2d.len() as u64,
                    }],
                });
                points2d.push(Point2D {
                    xy: uv,
                    point3d_id: Some(self.points.len() as u64),
                });
            }
        }
        self.images.push(ColmapImage {
            q: [w, x, y, z],
            t: translation_of(&e),
            camera: [width, height, fx, fy, cx, cy],
            name: image_name,
            points2d,
        });
        true
    }

    /// Observations (2D points with a 3D point) over all images.
    pub fn observations(&self) -> usize {
        self.images
            .iter()
            .map(|im| {
                im.points2d
                    .iter()
                    .filter(|p| p.point3d_id.is_some())
                    .count()
            })
            .sum()
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
            "# Number of images: {}, mean observations per image: {}",
            self.images.len(),
            mean(self.observations(), self.images.len())
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

    /// Writes the three text files into `dir`, each atomically.
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

    /// `cameras.bin`: `u64` count, then per camera `u32` id, `i32` model,
    /// `u64` width and height, `f64` parameters (little-endian, as COLMAP).
    pub fn cameras_bin(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.images.len() * 56);
        b.extend_from_slice(&(self.images.len() as u64).to_le_bytes());
        for (i, im) in self.images.iter().enumerate() {
            let c = im.camera;
            b.extend_from_slice(&(i as u32 + 1).to_le_bytes());
            b.extend_from_slice(&PINHOLE_MODEL_ID.to_le_bytes());
            b.extend_from_slice(&(c[0] as u64).to_le_bytes());
            b.extend_from_slice(&(c[1] as u64).to_le_bytes());
            for v in &c[2..] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    /// `images.bin`: `u64` count, then per image `u32` id, `f64` `QW QX QY QZ
    /// TX TY TZ`, `u32` camera id, the name ending in a NUL byte, `u64` count of
    /// 2D points and per point `f64` `X Y`, `u64` 3D point id (`u64::MAX`: none).
    pub fn images_bin(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.images.len() as u64).to_le_bytes());
        for (i, im) in self.images.iter().enumerate() {
            let id = i as u32 + 1;
            b.extend_from_slice(&id.to_le_bytes());
            for v in im.q.iter().chain(&im.t) {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(im.name.as_bytes());
            b.push(0);
            b.extend_from_slice(&(im.points2d.len() as u64).to_le_bytes());
            for p in &im.points2d {
                b.extend_from_slice(&p.xy[0].to_le_bytes());
                b.extend_from_slice(&p.xy[1].to_le_bytes());
                let id = p.point3d_id.unwrap_or(INVALID_POINT3D_ID);
                b.extend_from_slice(&id.to_le_bytes());
            }
        }
        b
    }

    /// `points3D.bin`: `u64` count, then per point `u64` id, `f64` `X Y Z`,
    /// `u8` `R G B`, `f64` error (0), `u64` track length and per element `u32`
    /// image id, `u32` 2D point index.
    pub fn points_bin(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.points.len() * 59);
        b.extend_from_slice(&(self.points.len() as u64).to_le_bytes());
        for (i, p) in self.points.iter().enumerate() {
            b.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            for v in p.xyz {
                b.extend_from_slice(&(v as f64).to_le_bytes());
            }
            b.extend_from_slice(&p.rgb);
            b.extend_from_slice(&0f64.to_le_bytes());
            b.extend_from_slice(&(p.track.len() as u64).to_le_bytes());
            for t in &p.track {
                b.extend_from_slice(&(t.image_id as u32).to_le_bytes());
                b.extend_from_slice(&(t.point2d_idx as u32).to_le_bytes());
            }
        }
        b
    }

    /// Writes the three binary files into `dir`, each atomically.
    pub fn write_binary(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, bytes) in [
            ("cameras.bin", self.cameras_bin()),
            ("images.bin", self.images_bin()),
            ("points3D.bin", self.points_bin()),
        ] {
            atomic::write_bytes(&dir.join(name), &bytes)?;
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
        // Seen from a camera at the origin that looks away (+z), with these
        // points at z < 0 behind it: the image is listed, its points are not.
        let behind: Vec<[f32; 3]> = xyz.iter().map(|p| [p[0], p[1], -p[2]]).collect();
        assert!(m.add(&g2, "cam_a_000008.png".into(), &behind, &rgb, 4));
        assert!(m.images[1].points2d.is_empty());
        assert!(m.add(&g, "cam_a_000009.png".into(), &xyz, &rgb, 4));
        let g3 = CameraGeometry {
            intrinsics: None,
            ..g.clone()
        };
        assert!(!m.add(&g3, "none.png".into(), &[], &[], 4));
        m.write(dir.path()).unwrap();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        let imgs = parse_images_txt(&read("images.txt")).unwrap();
        assert_eq!(imgs.len(), 3);
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
        assert_eq!(cams.len(), 3);
        assert_eq!(cams[0].1, "PINHOLE");
        assert_eq!(cams[0].2, [4.0, 3.0, 2.0, 2.5, 1.5, 1.0]);
        let pts = parse_points_txt(&read("points3D.txt")).unwrap();
        // 4 from the first frame (every 3rd of 12), 1 left for the third.
        assert_eq!(pts.len(), 5);
        assert!((pts[0].0[2] - xyz[0][2] as f64).abs() < 1e-6);
        assert_eq!(pts[1].1, rgb[3]);
    }

    #[test]
    fn every_point_is_observed_where_its_camera_sees_it() {
        let (g, xyz, rgb) = sample();
        let mut m = ColmapModel::new(100);
        assert!(m.add(&g, "a.png".into(), &xyz, &rgb, 100));
        assert_eq!(m.points.len(), 12);
        assert_eq!(m.observations(), 12);
        let k = g.intrinsics.unwrap();
        for (i, p) in m.points.iter().enumerate() {
            assert_eq!(
                p.track,
                [TrackElement {
                    image_id: 1,
                    point2d_idx: i as u64
                }]
            );
            let p2 = &m.images[0].points2d[i];
            assert_eq!(p2.point3d_id, Some(i as u64 + 1));
            // The 2D point is the pixel the point was back-projected from.
            assert!((p2.xy[0] - (i % 4) as f64).abs() < 1e-4, "{p2:?}");
            assert!((p2.xy[1] - (i / 4) as f64).abs() < 1e-4, "{p2:?}");
            let uv = project(&k, &g.extrinsics, p.xyz).unwrap();
            assert_eq!(uv, p2.xy);
        }
        // A point outside the image is left out.
        let far = [[100.0f32, 2.0, 3.0]];
        let before = m.points.len();
        assert!(m.add(&g, "b.png".into(), &far, &[[1, 2, 3]], 10));
        assert_eq!(m.points.len(), before);
        assert!(m.images[1].points2d.is_empty());
    }

    #[test]
    fn text_lines_hold_the_2d_points_and_tracks() {
        let (g, xyz, rgb) = sample();
        let mut m = ColmapModel::new(1);
        assert!(m.add(&g, "a.png".into(), &xyz, &rgb, 1));
        let images = m.images_txt();
        assert!(
            images.contains("mean observations per image: 1\n"),
            "{images}"
        );
        let lines: Vec<&str> = images.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines[0].ends_with(" 1 a.png"), "{lines:?}");
        let p2: Vec<f64> = lines[1]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(p2.len(), 3);
        assert!(
            p2[0].abs() < 1e-4 && p2[1].abs() < 1e-4 && p2[2] == 1.0,
            "{p2:?}"
        );
        assert_eq!(parse_images_txt(&images).unwrap().len(), 1);
        let points = m.points_txt();
        assert!(points.contains("mean track length: 1\n1 "), "{points}");
        assert!(points.ends_with(" 0 1 0\n"), "{points:?}");
        assert_eq!(parse_points_txt(&points).unwrap().len(), 1);
        // A 2D point without a 3D point is written as -1.
        m.images[0].points2d.push(Point2D {
            xy: [0.5, 1.0],
            point3d_id: None,
        });
        assert!(m.images_txt().ends_with(" 0.5 1 -1\n"));
    }

    #[test]
    fn binary_files_have_colmaps_layout() {
        let (g, xyz, rgb) = sample();
        let mut m = ColmapModel::new(2);
        assert!(m.add(&g, "ab.png".into(), &xyz, &rgb, 2));
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let f64_at = |b: &[u8], o: usize| f64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let c = m.cameras_bin();
        assert_eq!(c.len(), 8 + 4 + 4 + 16 + 32);
        assert_eq!((u64_at(&c, 0), u32_at(&c, 8), u32_at(&c, 12)), (1, 1, 1));
        assert_eq!((u64_at(&c, 16), u64_at(&c, 24)), (4, 3));
        assert_eq!((f64_at(&c, 32), f64_at(&c, 40)), (2.0, 2.5));
        let im = m.images_bin();
        // count, id, 7 doubles, camera id, "ab.png\0", count, 2 x (x, y, id)
        assert_eq!(im.len(), 8 + 4 + 56 + 4 + 7 + 8 + 2 * 24);
        assert_eq!(&im[72..79], b"ab.png\0");
        assert_eq!(u64_at(&im, 79), 2);
        assert_eq!(u64_at(&im, 79 + 8 + 16), 1);
        assert_eq!(u64_at(&im, 79 + 8 + 24 + 16), 2);
        let p = m.points_bin();
        assert_eq!(p.len(), 8 + 2 * (8 + 24 + 3 + 8 + 8 + 8));
        assert_eq!((u64_at(&p, 0), u64_at(&p, 8)), (2, 1));
        assert_eq!(&p[40..43], &rgb[0]);
        // track: length 1, image 1, 2D point 0
        assert_eq!((u64_at(&p, 51), u32_at(&p, 59), u32_at(&p, 63)), (1, 1, 0));
        let dir = tempfile::tempdir().unwrap();
        m.write_binary(dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("images.bin")).unwrap(), im);
    }
}
