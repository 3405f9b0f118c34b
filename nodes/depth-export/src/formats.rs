//! The formats a frame is written in (`FORMATS`) and the frame's side of the
//! writers of `npz`, `png16` (+ JSON sidecar) and `vis`; the file formats
//! themselves are in `da3-io`. Every file is written through [`da3_io::atomic`].

use std::path::Path;

use da3_io::colormap::colorize_depth;
use da3_io::{atomic, npz, png16, NpyArray};
use eyre::{bail, Result};

use crate::frame::FrameResult;

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
    atomic::write_bytes(path, &npz::npz_bytes(&refs, true)?)
}

// ---------------------------------------------------------------- png16

/// The 16-bit PNG of the frame's depth (see [`da3_io::png16`]).
pub fn png16_bytes(f: &FrameResult) -> Result<Vec<u8>> {
    png16::png16_bytes(f.depth.width, f.depth.height, &f.depth.values)
}

/// The JSON sidecar of the 16-bit PNG.
pub fn sidecar_json(f: &FrameResult) -> serde_json::Value {
    png16::sidecar_json(&f.geometry(), f.frame_id, f.stamp_ns, &f.camera)
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

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::frame::tests::sample_frame;
    use da3_io::npz::{npz_get, read_npz};

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
}
