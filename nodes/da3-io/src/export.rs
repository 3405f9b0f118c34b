//! Every format of this crate for one multi-view [`Prediction`]: what the `da3` CLI
//! writes for `--format` (the reference's `--export-format`, formats joined with `-`
//! or `,`).
//!
//! | format | files under the export folder |
//! |---|---|
//! | `npz`, `mini_npz` | `exports/<format>/results.npz` (see [`crate::npz`]) |
//! | `glb` | `scene.glb`: the points of every view and a frustum per camera ([`crate::glb`]) |
//! | `ply` | `scene.ply`: the same points ([`crate::ply`]) |
//! | `png16` | `png16/<view:04>.png` + `.json` per view ([`crate::png16`]) |
//! | `depth_vis` | `depth_vis/<view:04>.png` per view: the processed image and its colour-mapped depth side by side ([`crate::colormap`]) |
//! | `colmap` | `cameras.bin`, `images.bin`, `points3D.bin`, with one observation per point ([`crate::colmap`]) |
//!
//! The points are the depth back-projected with each view's camera, keeping finite positive
//! depth whose confidence is at or above the `conf_percentile` percentile of all views'
//! confidence (the reference's rule), coloured by the processed images, then evenly
//! sub-sampled to at most `max_points`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use eyre::{bail, ensure, eyre, Result, WrapErr};

use crate::colmap::ColmapModel;
use crate::colormap::{colorize_depth, percentile};
use crate::gaussians::GsPlyOptions;
use crate::geometry::{
    back_project_above, coloured_points, frustum_in_depth, subsample_step, CameraGeometry,
    IDENTITY_3X4,
};
use crate::npz::{self, NpzFormat, Prediction};
use crate::{atomic, glb, ply, png16};

/// One export format of [`export_all`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Npz,
    MiniNpz,
    Glb,
    Ply,
    Png16,
    DepthVis,
    Colmap,
    GsPly,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 8] = [
        ExportFormat::Npz,
        ExportFormat::MiniNpz,
        ExportFormat::Glb,
        ExportFormat::Ply,
        ExportFormat::Png16,
        ExportFormat::DepthVis,
        ExportFormat::Colmap,
        ExportFormat::GsPly,
    ];

    /// The format's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Npz => "npz",
            ExportFormat::MiniNpz => "mini_npz",
            ExportFormat::Glb => "glb",
            ExportFormat::Ply => "ply",
            ExportFormat::Png16 => "png16",
            ExportFormat::DepthVis => "depth_vis",
            ExportFormat::Colmap => "colmap",
            ExportFormat::GsPly => "gs_ply",
        }
    }

    /// Whether the format needs the back-projected points (and so the cameras).
    fn needs_points(self) -> bool {
        matches!(
            self,
            ExportFormat::Glb | ExportFormat::Ply | ExportFormat::Colmap
        )
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = eyre::Report;
    fn from_str(s: &str) -> Result<Self> {
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = ExportFormat::ALL.iter().map(|f| f.as_str()).collect();
                eyre!(
                    "unsupported export format {s:?} (supported: {})",
                    all.join(", ")
                )
            })
    }
}

/// Parse a format list: the reference joins formats with `-` (`glb-npz`); `,` also works.
/// Repeats are dropped, the order is kept.
pub fn parse_export_formats(spec: &str) -> Result<Vec<ExportFormat>> {
    let mut out = Vec::new();
    for part in spec
        .split([',', '-'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let f: ExportFormat = part.parse()?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    ensure!(!out.is_empty(), "no export format given");
    Ok(out)
}

/// The input image a view came from: its file name, its size and the view's intrinsics
/// in its pixels (COLMAP cameras and 2D points are given in the input images, as the
/// reference writes them).
#[derive(Clone, Debug, PartialEq)]
pub struct ViewSource {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// `K` in the input image's pixels, row-major; `None` when the model gave none.
    pub intrinsics: Option<[f64; 9]>,
}

/// Settings of [`export_all`].
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Keep pixels whose confidence is at or above this percentile (0..=100) of all views'
    /// confidence; 0 keeps every pixel with a valid depth.
    pub conf_percentile: f64,
    /// Most points in `scene.glb` / `scene.ply` and in the COLMAP model.
    pub max_points: usize,
    /// One per view, or empty: COLMAP then uses the processed views (`<view:04>.png`).
    pub sources: Vec<ViewSource>,
    /// Pixels (`N * H * W`, view by view) left out of the points of `glb`, `ply` and `colmap`:
    /// the sky of models with a sky head (its depth is a made-up far value). Empty: none.
    pub exclude: Vec<bool>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            conf_percentile: 40.0,
            max_points: 1_000_000,
            sources: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// Write `pred` in every format of `formats` under `dir`; returns the files written.
pub fn export_all(
    pred: &Prediction,
    formats: &[ExportFormat],
    dir: &Path,
    opts: &ExportOptions,
) -> Result<Vec<PathBuf>> {
    pred.check()?;
    ensure!(
        opts.sources.is_empty() || opts.sources.len() == pred.num_views,
        "{} view sources for {} views",
        opts.sources.len(),
        pred.num_views
    );
    ensure!(opts.max_points > 0, "max_points must be at least 1");
    ensure!(
        opts.exclude.is_empty() || opts.exclude.len() == pred.depth.len(),
        "an exclusion mask of {} pixels for {} depth values",
        opts.exclude.len(),
        pred.depth.len()
    );
    let points = if formats.iter().any(|f| f.needs_points()) {
        Some(view_points(pred, opts)?)
    } else {
        None
    };
    let points = points.as_deref().unwrap_or_default();
    let mut written = Vec::new();
    for &f in formats {
        let r = match f {
            ExportFormat::Npz => npz::export(pred, NpzFormat::Npz, dir).map(|p| vec![p]),
            ExportFormat::MiniNpz => npz::export(pred, NpzFormat::MiniNpz, dir).map(|p| vec![p]),
            ExportFormat::Glb => write_glb(pred, points, dir, opts),
            ExportFormat::Ply => write_ply(points, dir, opts),
            ExportFormat::Png16 => write_png16(pred, dir, opts),
            ExportFormat::DepthVis => write_depth_vis(pred, dir),
            ExportFormat::Colmap => write_colmap(pred, points, dir, opts),
            ExportFormat::GsPly => write_gs_ply(pred, dir),
        };
        written.extend(r.wrap_err_with(|| format!("{} export", f.as_str()))?);
    }
    Ok(written)
}

/// `gs_ply/0000.ply`: the Gaussians with the reference's `export_to_gs_ply` settings.
fn write_gs_ply(pred: &Prediction, dir: &Path) -> Result<Vec<PathBuf>> {
    let g = pred.gaussians.as_ref().ok_or_else(|| {
        eyre!("no Gaussians: gs_ply needs a model with a Gaussian head run with infer_gs")
    })?;
    let path = dir.join("gs_ply").join("0000.ply");
    crate::gaussians::write_gs_ply(&path, g, &pred.depth, &GsPlyOptions::default())?;
    Ok(vec![path])
}

/// View `i`'s camera at the processed size (identity pose when the model gave none).
pub fn view_geometry(pred: &Prediction, i: usize) -> CameraGeometry {
    let k = pred
        .intrinsics
        .as_ref()
        .and_then(|k| k.get(i))
        .map(|k| std::array::from_fn(|j| k[j / 3][j % 3] as f64));
    let e = pred.extrinsics.as_ref().and_then(|e| e.get(i));
    CameraGeometry {
        width: pred.width as u32,
        height: pred.height as u32,
        intrinsics: k,
        extrinsics: e.map_or(IDENTITY_3X4, |e| {
            std::array::from_fn(|j| e[j / 4][j % 4] as f64)
        }),
        has_pose: e.is_some(),
        is_metric: pred.is_metric,
    }
}

/// One view's back-projected points.
struct ViewPoints {
    xyz: Vec<[f32; 3]>,
    rgb: Vec<[u8; 3]>,
}

fn view_points(pred: &Prediction, opts: &ExportOptions) -> Result<Vec<ViewPoints>> {
    ensure!(
        pred.intrinsics.is_some(),
        "the points need the cameras, and the model gave no intrinsics"
    );
    let hw = pred.height * pred.width;
    let threshold = match &pred.conf {
        Some(c) if opts.conf_percentile > 0.0 => percentile(c, opts.conf_percentile),
        _ => None,
    };
    let grey = vec![200u8; hw * 3];
    (0..pred.num_views)
        .map(|i| {
            let g = view_geometry(pred, i);
            let k = g
                .intrinsics
                .ok_or_else(|| eyre!("view {i} has no intrinsics"))?;
            let conf = pred.conf.as_ref().map(|c| &c[i * hw..(i + 1) * hw]);
            let mut kept = back_project_above(
                &pred.depth[i * hw..(i + 1) * hw],
                pred.width,
                conf.filter(|_| threshold.is_some()),
                threshold.unwrap_or(f32::NEG_INFINITY),
                &k,
                &g.extrinsics,
            );
            if let Some(ex) = opts.exclude.get(i * hw..(i + 1) * hw) {
                kept.retain(|(p, _)| !ex[*p]);
            }
            let colours = pred
                .processed_images
                .as_ref()
                .map_or(grey.as_slice(), |im| &im[i * hw * 3..(i + 1) * hw * 3]);
            let (xyz, rgb) = coloured_points(&kept, colours);
            Ok(ViewPoints { xyz, rgb })
        })
        .collect()
}

/// Every view's points, evenly sub-sampled to `max` in all.
fn scene_points(points: &[ViewPoints], max: usize) -> (Vec<[f32; 3]>, Vec<[u8; 3]>) {
    let total: usize = points.iter().map(|p| p.xyz.len()).sum();
    let step = subsample_step(total, max);
    points
        .iter()
        .flat_map(|p| p.xyz.iter().copied().zip(p.rgb.iter().copied()))
        .step_by(step)
        .unzip()
}

fn write_glb(
    pred: &Prediction,
    points: &[ViewPoints],
    dir: &Path,
    opts: &ExportOptions,
) -> Result<Vec<PathBuf>> {
    let (xyz, rgb) = scene_points(points, opts.max_points);
    let hw = pred.height * pred.width;
    let frusta: Vec<_> = (0..pred.num_views)
        .filter_map(|i| {
            let g = view_geometry(pred, i);
            let depth = &pred.depth[i * hw..(i + 1) * hw];
            let (w, h) = (g.width as f64, g.height as f64);
            g.intrinsics
                .map(|k| frustum_in_depth(&k, &g.extrinsics, w, h, depth, FRUSTUM_FRACTION))
        })
        .collect();
    let path = dir.join("scene.glb");
    write(&path, &glb::glb_bytes(&xyz, &rgb, &frusta))?;
    Ok(vec![path])
}

/// Camera frusta are drawn at this fraction of their view's median depth.
pub const FRUSTUM_FRACTION: f64 = 0.2;

fn write_ply(points: &[ViewPoints], dir: &Path, opts: &ExportOptions) -> Result<Vec<PathBuf>> {
    let (xyz, rgb) = scene_points(points, opts.max_points);
    let path = dir.join("scene.ply");
    write(&path, &ply::ply_bytes(&xyz, &rgb))?;
    Ok(vec![path])
}

fn view_name(opts: &ExportOptions, i: usize) -> String {
    opts.sources
        .get(i)
        .map_or_else(|| format!("{i:04}.png"), |s| s.name.clone())
}

fn write_png16(pred: &Prediction, dir: &Path, opts: &ExportOptions) -> Result<Vec<PathBuf>> {
    let hw = pred.height * pred.width;
    let mut out = Vec::new();
    for i in 0..pred.num_views {
        let g = view_geometry(pred, i);
        let png = dir.join(format!("png16/{i:04}.png"));
        let json = png.with_extension("json");
        let depth = &pred.depth[i * hw..(i + 1) * hw];
        write(&png, &png16::png16_bytes(g.width, g.height, depth)?)?;
        let side = png16::sidecar_json(&g, i as u64, None, &view_name(opts, i));
        write(&json, serde_json::to_string_pretty(&side)?.as_bytes())?;
        out.extend([png, json]);
    }
    Ok(out)
}

fn write_depth_vis(pred: &Prediction, dir: &Path) -> Result<Vec<PathBuf>> {
    let (w, h) = (pred.width, pred.height);
    let mut out = Vec::new();
    for i in 0..pred.num_views {
        let depth = colorize_depth(&pred.depth[i * w * h..(i + 1) * w * h]);
        // The reference's layout: the processed image on the left, the depth on the right.
        let (width, rgb) = match &pred.processed_images {
            Some(im) => {
                let im = &im[i * w * h * 3..(i + 1) * w * h * 3];
                let rows = im.chunks_exact(w * 3).zip(depth.chunks_exact(w * 3));
                (2 * w, rows.flat_map(|(a, b)| [a, b].concat()).collect())
            }
            None => (w, depth),
        };
        let path = dir.join(format!("depth_vis/{i:04}.png"));
        write(&path, &rgb8_png(width as u32, h as u32, rgb)?)?;
        out.push(path);
    }
    Ok(out)
}

fn rgb8_png(w: u32, h: u32, rgb: Vec<u8>) -> Result<Vec<u8>> {
    let img =
        image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| eyre!("{w}x{h}: wrong pixel count"))?;
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .wrap_err("cannot encode the PNG")?;
    Ok(buf.into_inner())
}

fn write_colmap(
    pred: &Prediction,
    points: &[ViewPoints],
    dir: &Path,
    opts: &ExportOptions,
) -> Result<Vec<PathBuf>> {
    let mut model = ColmapModel::new(opts.max_points);
    let per_view = opts.max_points.div_ceil(pred.num_views.max(1));
    for (i, p) in points.iter().enumerate() {
        let mut g = view_geometry(pred, i);
        if let Some(s) = opts.sources.get(i) {
            (g.width, g.height, g.intrinsics) = (s.width, s.height, s.intrinsics);
        }
        if !model.add(&g, view_name(opts, i), &p.xyz, &p.rgb, per_view) {
            bail!("view {i} has no intrinsics");
        }
    }
    model.write_binary(dir)?;
    Ok(["cameras.bin", "images.bin", "points3D.bin"]
        .map(|n| dir.join(n))
        .to_vec())
}

/// Atomic write, creating the folder first.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).wrap_err_with(|| format!("creating {}", d.display()))?;
    }
    atomic::write_bytes(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::project;

    /// Two 4x3 views: the second camera moved 1 along x; conf rises with the pixel index.
    fn sample() -> Prediction {
        let (n, h, w) = (2, 3, 4);
        Prediction {
            num_views: n,
            height: h,
            width: w,
            depth: (0..n * h * w)
                .map(|i| 2.0 + (i % 12) as f32 * 0.1)
                .collect(),
            conf: Some((0..n * h * w).map(|i| (i % 12) as f32).collect()),
            extrinsics: Some(vec![
                [
                    [1.0, 0.0, 0.0, 0.0],
                    [0.0, 1.0, 0.0, 0.0],
                    [0.0, 0.0, 1.0, 0.0],
                ],
                [
                    [1.0, 0.0, 0.0, -1.0],
                    [0.0, 1.0, 0.0, 0.0],
                    [0.0, 0.0, 1.0, 0.0],
                ],
            ]),
            intrinsics: Some(vec![[[4.0, 0.0, 1.5], [0.0, 4.0, 1.0], [0.0, 0.0, 1.0]]; 2]),
            processed_images: Some((0..n * h * w * 3).map(|i| i as u8).collect()),
            is_metric: false,
            aux: Vec::new(),
            gaussians: None,
        }
    }

    #[test]
    fn formats_parse_with_either_separator() {
        use ExportFormat::*;
        assert_eq!(
            parse_export_formats("glb,ply-colmap, npz").unwrap(),
            [Glb, Ply, Colmap, Npz]
        );
        assert_eq!(
            parse_export_formats("mini_npz-depth_vis,png16,mini_npz").unwrap(),
            [MiniNpz, DepthVis, Png16]
        );
        let e = parse_export_formats("glb,gs_video")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gs_video") && e.contains("depth_vis"), "{e}");
        assert!(parse_export_formats(" ,-").is_err());
    }

    #[test]
    fn every_format_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut pred = sample();
        // gs_ply needs Gaussians (a model with a Gaussian head): an error without them.
        let e = export_all(
            &pred,
            &[ExportFormat::GsPly],
            dir.path(),
            &Default::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("Gaussian head"), "{e:#}");
        let n = 2 * 3 * 4;
        pred.gaussians = Some(crate::gaussians::Gaussians {
            views: 2,
            height: 3,
            width: 4,
            means: vec![[0.0, 0.0, 1.0]; n],
            scales: vec![[0.1; 3]; n],
            rotations: vec![[0.0, 0.0, 0.0, 1.0]; n],
            harmonics: vec![0.5; n * 3],
            d_sh: 1,
            opacities: vec![0.5; n],
        });
        let opts = ExportOptions {
            max_points: 10,
            ..Default::default()
        };
        let files = export_all(&pred, &ExportFormat::ALL, dir.path(), &opts).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "exports/npz/results.npz",
                "exports/mini_npz/results.npz",
                "scene.glb",
                "scene.ply",
                "png16/0000.png",
                "png16/0000.json",
                "png16/0001.png",
                "png16/0001.json",
                "depth_vis/0000.png",
                "depth_vis/0001.png",
                "cameras.bin",
                "images.bin",
                "points3D.bin",
                "gs_ply/0000.ply",
            ]
        );
        // Views of 4x3 pixels: the reference's border rule leaves nothing, but the file is
        // a valid empty PLY.
        let gs = std::fs::read(dir.path().join("gs_ply/0000.ply")).unwrap();
        assert!(String::from_utf8_lossy(&gs).contains("element vertex 0\n"));
        // conf >= its 40th percentile over both views (4.2): 7 of 12 pixels per view,
        // 14 in all, evenly sub-sampled to at most 10 (every 2nd).
        let (xyz, rgb) =
            ply::read_ply(&std::fs::read(dir.path().join("scene.ply")).unwrap()).unwrap();
        assert_eq!(xyz.len(), 7);
        // The first kept pixel is 5 of view 0 (u 1, v 1, depth 2.5): colour of pixel 5.
        assert_eq!(rgb[0], [15, 16, 17]);
        assert!((xyz[0][2] - 2.5).abs() < 1e-6);
        let (doc, pos) =
            glb::parse_glb(&std::fs::read(dir.path().join("scene.glb")).unwrap()).unwrap();
        assert_eq!(pos.len(), 3, "points and two frusta");
        assert_eq!(doc["meshes"][2]["name"], "camera_1");
        // Side by side: twice the width.
        let vis = image::open(dir.path().join("depth_vis/0001.png")).unwrap();
        assert_eq!((vis.width(), vis.height()), (8, 3));
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("png16/0001.json")).unwrap())
                .unwrap();
        assert_eq!(j["camera_to_world"][0][3], 1.0);
        assert_eq!(j["camera"], "0001.png");
    }

    #[test]
    fn colmap_cameras_are_the_input_images() {
        let dir = tempfile::tempdir().unwrap();
        let pred = sample();
        // Inputs twice the processed size: K scaled by 2.
        let sources: Vec<ViewSource> = ["a.jpg", "b.jpg"]
            .iter()
            .map(|n| ViewSource {
                name: n.to_string(),
                width: 8,
                height: 6,
                intrinsics: Some([8.0, 0.0, 3.0, 0.0, 8.0, 2.0, 0.0, 0.0, 1.0]),
            })
            .collect();
        let opts = ExportOptions {
            conf_percentile: 0.0,
            sources,
            ..Default::default()
        };
        let points = view_points(&pred, &opts).unwrap();
        assert_eq!(points[0].xyz.len(), 12);
        // Excluded pixels (the sky) leave the points; a mask of the wrong size is an error.
        let mut ex = vec![false; pred.depth.len()];
        ex[0] = true;
        ex[5] = true;
        let with = ExportOptions {
            exclude: ex,
            ..opts.clone()
        };
        assert_eq!(view_points(&pred, &with).unwrap()[0].xyz.len(), 10);
        let bad = ExportOptions {
            exclude: vec![true; 3],
            ..opts.clone()
        };
        assert!(export_all(&pred, &[ExportFormat::Ply], dir.path(), &bad).is_err());
        export_all(&pred, &[ExportFormat::Colmap], dir.path(), &opts).unwrap();
        let cams = std::fs::read(dir.path().join("cameras.bin")).unwrap();
        assert_eq!(u64::from_le_bytes(cams[16..24].try_into().unwrap()), 8);
        let images = std::fs::read(dir.path().join("images.bin")).unwrap();
        assert!(images.windows(6).any(|w| w == b"b.jpg\0"));
        // Each point's 2D observation is twice its processed pixel.
        let k = opts.sources[1].intrinsics.unwrap();
        let g = view_geometry(&pred, 1);
        let uv = project(&k, &g.extrinsics, points[1].xyz[5]).unwrap();
        assert!(
            (uv[0] - 2.0).abs() < 1e-4 && (uv[1] - 2.0).abs() < 1e-4,
            "{uv:?}"
        );
        // No cameras: the point formats say why.
        let mut no_k = sample();
        no_k.intrinsics = None;
        let e = export_all(&no_k, &[ExportFormat::Glb], dir.path(), &opts).unwrap_err();
        assert!(format!("{e:#}").contains("intrinsics"), "{e:#}");
        assert!(export_all(&no_k, &[ExportFormat::MiniNpz], dir.path(), &opts).is_ok());
    }
}
