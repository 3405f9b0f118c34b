//! The per-frame writers: `npz`, `png16` (+ JSON sidecar), `vis`, `ply`.
//! Every file is written through [`crate::atomic`].

use std::io::{Cursor, Write};
use std::path::Path;

use da3::export::npy::NpyArray;
use eyre::{bail, Result, WrapErr};
use serde_json::json;

use crate::atomic;
use crate::frame::{camera_to_world, FrameResult};
use da3::postprocess::colorize_depth;

/// Output formats (`FORMATS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Npz,
    Png16,
    Vis,
    Ply,
    Colmap,
    Glb,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Npz,
        Format::Png16,
        Format::Vis,
        Format::Ply,
        Format::Colmap,
        Format::Glb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Npz => "npz",
            Format::Png16 => "png16",
            Format::Vis => "vis",
            Format::Ply => "ply",
            Format::Colmap => "colmap",
            Format::Glb => "glb",
        }
    }
}

/// Parses `npz,png16,...` (order and repeats do not matter).
pub fn parse_formats(spec: &str) -> Result<Vec<Format>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(f) = Format::ALL.iter().find(|f| f.as_str() == part) else {
            bail!(
                "invalid FORMATS={spec:?}: unknown format `{part}` (expected npz, png16, vis, ply, colmap, glb)"
            );
        };
        if !out.contains(f) {
            out.push(*f);
        }
    }
    if out.is_empty() {
        bail!("invalid FORMATS={spec:?}: no format given");
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------- npz

/// The npz members of a frame, in the reference's order: `image` (when the
/// source image is wired and has the depth's aspect ratio, resized to the
/// depth size), `depth`, `conf`, `extrinsics`, `intrinsics` (when known).
pub fn npz_arrays(f: &FrameResult) -> Result<Vec<(&'static str, NpyArray)>> {
    let (w, h) = (f.depth.width as usize, f.depth.height as usize);
    let g = f.geometry();
    let mut out = Vec::new();
    if let Some(img) = f.image_at_depth_size() {
        out.push(("image", NpyArray::from_u8(&[1, h, w, 3], img)?));
    }
    out.push((
        "depth",
        NpyArray::from_f32(&[1, h, w], f.depth.values.clone())?,
    ));
    if let Some(c) = &f.confidence {
        if c.width == f.depth.width && c.height == f.depth.height {
            out.push(("conf", NpyArray::from_f32(&[1, h, w], c.values.clone())?));
        } else {
            tracing::warn!(
                "frame {}: confidence is {}x{}, depth {w}x{h}: conf left out",
                f.frame_id,
                c.width,
                c.height
            );
        }
    }
    if g.has_pose {
        let e: Vec<f32> = g.extrinsics.iter().map(|&v| v as f32).collect();
        out.push(("extrinsics", NpyArray::from_f32(&[1, 3, 4], e)?));
    }
    if let Some(k) = g.intrinsics {
        let k: Vec<f32> = k.iter().map(|&v| v as f32).collect();
        out.push(("intrinsics", NpyArray::from_f32(&[1, 3, 3], k)?));
    }
    Ok(out)
}

pub fn write_npz(path: &Path, f: &FrameResult) -> Result<()> {
    let arrays = npz_arrays(f)?;
    let refs: Vec<(&str, &NpyArray)> = arrays.iter().map(|(n, a)| (*n, a)).collect();
    let mut buf = Cursor::new(Vec::new());
    da3::export::npz::write_npz_to(&mut buf, &refs, true)?;
    atomic::write_bytes(path, buf.get_ref())
}

// ---------------------------------------------------------------- png16

/// Value × `DEPTH_SCALE` = depth (metres when metric, else model units).
pub const DEPTH_SCALE: f64 = 0.001;

/// 16-bit depth: `round(depth × 1000)` (millimetres when metric), clamped to
/// 65535; 0 for invalid (non-finite or non-positive) depth.
pub fn depth_to_u16(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&d| {
            if d.is_finite() && d > 0.0 {
                ((d as f64 / DEPTH_SCALE).round()).clamp(1.0, 65535.0) as u16
            } else {
                0
            }
        })
        .collect()
}

pub fn png16_bytes(f: &FrameResult) -> Result<Vec<u8>> {
    let (w, h) = (f.depth.width, f.depth.height);
    let buf = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(
        w,
        h,
        depth_to_u16(&f.depth.values),
    )
    .ok_or_else(|| eyre::eyre!("depth size mismatch"))?;
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma16(buf)
        .write_to(&mut out, image::ImageFormat::Png)
        .wrap_err("cannot encode the 16-bit PNG")?;
    Ok(out.into_inner())
}

/// The JSON sidecar of the 16-bit PNG.
pub fn sidecar_json(f: &FrameResult) -> serde_json::Value {
    let g = f.geometry();
    let e = g.extrinsics;
    let (r, c) = camera_to_world(&e);
    let c2w = [
        [r[0][0], r[0][1], r[0][2], c[0]],
        [r[1][0], r[1][1], r[1][2], c[1]],
        [r[2][0], r[2][1], r[2][2], c[2]],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let k = g
        .intrinsics
        .map(|k| json!([[k[0], k[1], k[2]], [k[3], k[4], k[5]], [k[6], k[7], k[8]]]));
    json!({
        "width": g.width,
        "height": g.height,
        "intrinsics": k,
        "extrinsics": [[e[0], e[1], e[2], e[3]], [e[4], e[5], e[6], e[7]], [e[8], e[9], e[10], e[11]]],
        "camera_to_world": c2w,
        "has_pose": g.has_pose,
        "is_metric": g.is_metric,
        "depth_scale": DEPTH_SCALE,
        "depth_unit": if g.is_metric { "mm" } else { "relative/1000" },
        "invalid_value": 0,
        "max_value": 65535,
        "frame_id": f.frame_id,
        "stamp_ns": f.stamp_ns,
        "camera": f.camera,
    })
}

pub fn write_png16(png: &Path, json_path: &Path, f: &FrameResult) -> Result<()> {
    atomic::write_bytes(png, &png16_bytes(f)?)?;
    let text = serde_json::to_string_pretty(&sidecar_json(f))?;
    atomic::write_bytes(json_path, text.as_bytes())
}

// ---------------------------------------------------------------- vis

/// The `depth_vis` image when wired, else the depth colour-mapped here.
pub fn vis_bytes(f: &FrameResult) -> Result<Vec<u8>> {
    let (w, h, rgb) = match &f.vis {
        Some(v) => v.clone(),
        None => (
            f.depth.width,
            f.depth.height,
            colorize_depth(&f.depth.values),
        ),
    };
    da3_msg::image_frame::encode_png(w, h, &rgb)
}

// ---------------------------------------------------------------- ply

/// Binary little-endian PLY: `float x, y, z` then `uchar red, green, blue` per vertex.
pub fn ply_bytes(xyz: &[[f32; 3]], rgb: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + xyz.len() * 15);
    let header = format!(
        "ply\nformat binary_little_endian 1.0\ncomment written by depth-export\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n",
        xyz.len()
    );
    out.extend_from_slice(header.as_bytes());
    for (p, c) in xyz.iter().zip(rgb) {
        for v in p {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(c);
    }
    out
}

/// Points and their colours.
pub type ColouredPoints = (Vec<[f32; 3]>, Vec<[u8; 3]>);

/// Reads back a PLY written by [`ply_bytes`], strictly: binary little-endian,
/// exactly the properties `float x,y,z` + `uchar red,green,blue`, and a body
/// of exactly `vertex count * 15` bytes (comments are allowed).
pub fn read_ply(bytes: &[u8]) -> Result<ColouredPoints> {
    let end = b"end_header\n";
    let pos = bytes
        .windows(end.len())
        .position(|w| w == end)
        .ok_or_else(|| eyre::eyre!("PLY: no end_header"))?
        + end.len();
    let header = std::str::from_utf8(&bytes[..pos])?;
    let lines: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with("comment"))
        .collect();
    let expected_props = [
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "end_header",
    ];
    eyre::ensure!(
        lines.len() == 3 + expected_props.len()
            && lines[0] == "ply"
            && lines[1] == "format binary_little_endian 1.0"
            && lines[3..] == expected_props,
        "PLY: unexpected header {lines:?}"
    );
    let n: usize = lines[2]
        .strip_prefix("element vertex ")
        .ok_or_else(|| eyre::eyre!("PLY: no vertex count"))?
        .parse()?;
    let body = &bytes[pos..];
    eyre::ensure!(
        body.len() == n * 15,
        "PLY: {} body bytes for {n} vertices",
        body.len()
    );
    Ok(body
        .chunks_exact(15)
        .map(|v| {
            let f =
                |i: usize| f32::from_le_bytes([v[i * 4], v[i * 4 + 1], v[i * 4 + 2], v[i * 4 + 3]]);
            ([f(0), f(1), f(2)], [v[12], v[13], v[14]])
        })
        .unzip())
}

pub fn write_ply(path: &Path, xyz: &[[f32; 3]], rgb: &[[u8; 3]]) -> Result<()> {
    atomic::write_with(path, |w| Ok(w.write_all(&ply_bytes(xyz, rgb))?))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::frame::tests::sample_frame;
    use da3::export::npz::{npz_get, read_npz};

    #[test]
    fn formats_parse() {
        assert_eq!(
            parse_formats("png16, npz,npz").unwrap(),
            [Format::Npz, Format::Png16]
        );
        let e = parse_formats("npz,gltf").unwrap_err().to_string();
        assert!(e.contains("invalid FORMATS") && e.contains("gltf"), "{e}");
        assert!(parse_formats(" , ").is_err());
    }

    #[test]
    fn npz_reads_back_with_da3s_reader() {
        let dir = tempfile::tempdir().unwrap();
        let f = sample_frame();
        let p = dir.path().join("x.npz");
        write_npz(&p, &f).unwrap();
        let m = read_npz(&p).unwrap();
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["image", "depth", "conf", "extrinsics", "intrinsics"]
        );
        let d = npz_get(&m, "depth").unwrap();
        assert_eq!(d.shape, [1, 3, 4]);
        assert_eq!(d.to_f32_vec(), f.depth.values);
        assert_eq!(npz_get(&m, "image").unwrap().shape, [1, 3, 4, 3]);
        assert_eq!(
            npz_get(&m, "conf").unwrap().to_f32_vec(),
            f.confidence.unwrap().values
        );
        let k = npz_get(&m, "intrinsics").unwrap();
        assert_eq!(k.shape, [1, 3, 3]);
        assert_eq!(
            k.to_f32_vec(),
            [2.0, 0.0, 1.5, 0.0, 2.5, 1.0, 0.0, 0.0, 1.0]
        );
        let e = npz_get(&m, "extrinsics").unwrap();
        assert_eq!(e.shape, [1, 3, 4]);
        let g = sample_frame().geometry();
        for (a, b) in e.to_f32_vec().iter().zip(g.extrinsics) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        // No image, no pose: those keys are left out.
        let mut f = sample_frame();
        f.image = None;
        f.depth.pose = None;
        let names: Vec<&str> = npz_arrays(&f).unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["depth", "conf", "intrinsics"]);
    }

    #[test]
    fn png16_is_millimetres_with_a_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = sample_frame();
        f.depth.values[0] = f32::NAN;
        f.depth.values[1] = -1.0;
        f.depth.values[2] = 70.0;
        f.depth.values[3] = 1.2344;
        let (png, js) = (dir.path().join("a.png"), dir.path().join("a.json"));
        write_png16(&png, &js, &f).unwrap();
        let img = image::open(&png).unwrap();
        assert_eq!(img.color(), image::ColorType::L16);
        let v = img.into_luma16().into_raw();
        assert_eq!(&v[..4], [0, 0, 65535, 1234]);
        for (p, d) in v.iter().zip(&f.depth.values).skip(4) {
            assert_eq!(*p as f32, (d * 1000.0).round());
        }
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
        assert_eq!(j["width"], 4);
        assert_eq!(j["height"], 3);
        assert_eq!(j["frame_id"], 7);
        assert_eq!(j["stamp_ns"], 123);
        assert_eq!(j["camera"], "cam/a");
        assert_eq!(j["is_metric"], true);
        assert_eq!(j["depth_scale"], 0.001);
        assert_eq!(j["intrinsics"][1][1], 2.5);
        let c = &j["camera_to_world"];
        assert!((c[0][3].as_f64().unwrap() - 1.0).abs() < 1e-12);
        assert!((c[2][3].as_f64().unwrap() - 3.0).abs() < 1e-12);
        assert_eq!(j["extrinsics"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn vis_png_decodes() {
        let f = sample_frame();
        let img = image::load_from_memory(&vis_bytes(&f).unwrap()).unwrap();
        assert_eq!((img.width(), img.height()), (4, 3));
        let mut g = sample_frame();
        g.vis = Some((2, 1, vec![1, 2, 3, 4, 5, 6]));
        let img = image::load_from_memory(&vis_bytes(&g).unwrap()).unwrap();
        assert_eq!(img.into_rgb8().into_raw(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn ply_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (xyz, rgb) = sample_frame().world_points(0.0);
        let p = dir.path().join("a.ply");
        write_ply(&p, &xyz, &rgb).unwrap();
        let (x2, c2) = read_ply(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(x2.len(), 12);
        assert_eq!(x2, xyz);
        assert_eq!(c2, rgb);
        let (x0, _) = read_ply(&ply_bytes(&[], &[])).unwrap();
        assert!(x0.is_empty());
    }
}
