//! `.npz` archives (a zip of `.npy` members) and the reference's `npz` / `mini_npz` exports.
//!
//! Layout written by the reference (`depth_anything_3.utils.export.npz`, via
//! `numpy.savez_compressed`):
//!
//! * `npz`: `EXPORT_DIR/exports/npz/results.npz` with `image` (`(N,H,W,3)` `u8`), `depth`
//!   (`(N,H,W)` `f32`, rounded to 6 decimals), and when present `conf` (`f32`, 2 decimals),
//!   `extrinsics` (`(N,3,4)` `f32`), `intrinsics` (`(N,3,3)` `f32`).
//! * `mini_npz`: `EXPORT_DIR/exports/mini_npz/results.npz` with the same keys minus `image`,
//!   depth rounded to 8 decimals.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use eyre::{bail, ensure, eyre, Result, WrapErr};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::geometry::{Mat3, Mat34};
use crate::npy::NpyArray;

/// Write named arrays to an `.npz` file (deflate-compressed like `numpy.savez_compressed` when
/// `compressed`, stored like `numpy.savez` otherwise). Member names get the `.npy` suffix.
pub fn write_npz(
    path: impl AsRef<Path>,
    arrays: &[(&str, &NpyArray)],
    compressed: bool,
) -> Result<()> {
    let path = path.as_ref();
    let file = File::create(path).wrap_err_with(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    write_npz_to(&mut w, arrays, compressed)
        .wrap_err_with(|| format!("writing {}", path.display()))?;
    w.flush()?;
    Ok(())
}

/// [`write_npz`] into any seekable writer.
pub fn write_npz_to<W: Write + Seek>(
    writer: W,
    arrays: &[(&str, &NpyArray)],
    compressed: bool,
) -> Result<()> {
    let mut zip = ZipWriter::new(writer);
    let method = if compressed {
        CompressionMethod::Deflated
    } else {
        CompressionMethod::Stored
    };
    let opts = SimpleFileOptions::default()
        .compression_method(method)
        .large_file(false)
        .last_modified_time(zip::DateTime::default());
    for (name, arr) in arrays {
        ensure!(
            !name.is_empty() && !name.contains('/'),
            "bad npz member name {name:?}"
        );
        let bytes = arr.to_npy_bytes();
        let opts = if bytes.len() as u64 >= u32::MAX as u64 {
            opts.large_file(true)
        } else {
            opts
        };
        zip.start_file(format!("{name}.npy"), opts)?;
        zip.write_all(&bytes)?;
    }
    zip.finish()?;
    Ok(())
}

/// [`write_npz_to`] into memory: the bytes of the archive.
pub fn npz_bytes(arrays: &[(&str, &NpyArray)], compressed: bool) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    write_npz_to(&mut buf, arrays, compressed)?;
    Ok(buf.into_inner())
}

/// Read every member of an `.npz` file, in archive order, names without `.npy`.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, NpyArray)>> {
    let path = path.as_ref();
    let file = File::open(path).wrap_err_with(|| format!("opening {}", path.display()))?;
    read_npz_from(file).wrap_err_with(|| format!("reading {}", path.display()))
}

/// [`read_npz`] from any seekable reader.
pub fn read_npz_from<R: Read + Seek>(reader: R) -> Result<Vec<(String, NpyArray)>> {
    let mut zip = ZipArchive::new(reader)?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut member = zip.by_index(i)?;
        let name = member.name().to_string();
        let mut bytes = Vec::with_capacity(member.size() as usize);
        member.read_to_end(&mut bytes)?;
        let arr = NpyArray::from_npy_bytes(&bytes).wrap_err_with(|| format!("member {name}"))?;
        out.push((name.strip_suffix(".npy").unwrap_or(&name).to_string(), arr));
    }
    Ok(out)
}

/// Find a member by name in the output of [`read_npz`].
pub fn npz_get<'a>(members: &'a [(String, NpyArray)], name: &str) -> Option<&'a NpyArray> {
    members.iter().find(|(n, _)| n == name).map(|(_, a)| a)
}

/// Read an array from an `.npy` file, or from an `.npz` file (its only member, or the member
/// named `key` when given).
pub fn read_array(path: impl AsRef<Path>, key: Option<&str>) -> Result<NpyArray> {
    let path = path.as_ref();
    let mut head = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .wrap_err_with(|| format!("reading {}", path.display()))?;
    if &head == b"PK\x03\x04" {
        let members = read_npz(path)?;
        match key {
            Some(k) => npz_get(&members, k)
                .cloned()
                .ok_or_else(|| eyre!("{} has no member {k:?}", path.display())),
            None if members.len() == 1 => Ok(members.into_iter().next().unwrap().1),
            None => bail!(
                "{} holds several arrays ({}); name one",
                path.display(),
                members
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    } else {
        crate::npy::read_npy(path)
    }
}

/// NumPy's `np.round(x, decimals)` for a `float32` array: multiply by `10^decimals` in `f32`,
/// round half to even, divide back in `f32`.
pub fn round_decimals_f32(values: &[f32], decimals: i32) -> Vec<f32> {
    let f = 10f64.powi(decimals) as f32;
    values
        .iter()
        .map(|&v| (v * f).round_ties_even() / f)
        .collect()
}

/// What the npz exports store (the reference's `Prediction` fields they use).
#[derive(Clone, Debug, Default)]
pub struct Prediction {
    /// Number of views.
    pub num_views: usize,
    /// Map height.
    pub height: usize,
    /// Map width.
    pub width: usize,
    /// Depth, `(N, H, W)`.
    pub depth: Vec<f32>,
    /// Depth confidence, `(N, H, W)`.
    pub conf: Option<Vec<f32>>,
    /// World-to-camera extrinsics, one `3x4` per view.
    pub extrinsics: Option<Vec<Mat34<f32>>>,
    /// Intrinsics, one `3x3` per view.
    pub intrinsics: Option<Vec<Mat3<f32>>>,
    /// Processed input images, `(N, H, W, 3)` `u8` (the `da3` crate's
    /// `PreprocessedBatch::export_images`).
    pub processed_images: Option<Vec<u8>>,
    /// Whether the depth is metric (metres); not stored in the npz exports.
    pub is_metric: bool,
    /// Auxiliary features (the reference's `export_feat_layers`): per exported backbone block
    /// its index and its features `(N, h, w, C)` (shape, values). Written by both exports as
    /// `feat_layer_<i>`, the reference's key (its own npz writers leave them out).
    pub aux: Vec<(usize, [usize; 4], Vec<f32>)>,
    /// 3D Gaussians of the views (the Gaussian head, `infer_gs`), for the `gs_ply` export;
    /// not stored in the npz exports.
    pub gaussians: Option<crate::gaussians::Gaussians>,
}

impl Prediction {
    /// Checks that every array has the size of `num_views x height x width`.
    pub fn check(&self) -> Result<()> {
        let n = self.num_views * self.height * self.width;
        ensure!(
            self.depth.len() == n,
            "depth has {} values, expected {n}",
            self.depth.len()
        );
        if let Some(c) = &self.conf {
            ensure!(c.len() == n, "conf has {} values, expected {n}", c.len());
        }
        if let Some(e) = &self.extrinsics {
            ensure!(
                e.len() == self.num_views,
                "{} extrinsics for {} views",
                e.len(),
                self.num_views
            );
        }
        if let Some(k) = &self.intrinsics {
            ensure!(
                k.len() == self.num_views,
                "{} intrinsics for {} views",
                k.len(),
                self.num_views
            );
        }
        if let Some(img) = &self.processed_images {
            ensure!(
                img.len() == n * 3,
                "processed_images has {} bytes, expected {}",
                img.len(),
                n * 3
            );
        }
        Ok(())
    }

    /// The auxiliary features as `feat_layer_<i>` arrays.
    fn aux_arrays(&self) -> Result<Vec<(String, NpyArray)>> {
        self.aux
            .iter()
            .map(|(i, shape, v)| {
                ensure!(
                    shape[0] == self.num_views,
                    "feat_layer_{i}: {} views, the prediction has {}",
                    shape[0],
                    self.num_views
                );
                Ok((
                    format!("feat_layer_{i}"),
                    NpyArray::from_f32(shape, v.clone())?,
                ))
            })
            .collect()
    }

    fn camera_arrays(&self) -> Result<Vec<(&'static str, NpyArray)>> {
        let mut out = Vec::new();
        let n = self.num_views;
        if let Some(c) = &self.conf {
            out.push((
                "conf",
                NpyArray::from_f32(&[n, self.height, self.width], round_decimals_f32(c, 2))?,
            ));
        }
        if let Some(e) = &self.extrinsics {
            let flat = e.iter().flat_map(|m| m.iter().flatten().copied()).collect();
            out.push(("extrinsics", NpyArray::from_f32(&[n, 3, 4], flat)?));
        }
        if let Some(k) = &self.intrinsics {
            let flat = k.iter().flat_map(|m| m.iter().flatten().copied()).collect();
            out.push(("intrinsics", NpyArray::from_f32(&[n, 3, 3], flat)?));
        }
        Ok(out)
    }
}

/// Export formats handled here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpzFormat {
    /// `exports/npz/results.npz` (with images).
    Npz,
    /// `exports/mini_npz/results.npz`.
    MiniNpz,
}

impl NpzFormat {
    /// Reference name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            NpzFormat::Npz => "npz",
            NpzFormat::MiniNpz => "mini_npz",
        }
    }

    /// Path of the exported file under `export_dir`.
    pub fn path(self, export_dir: impl AsRef<Path>) -> PathBuf {
        export_dir
            .as_ref()
            .join("exports")
            .join(self.as_str())
            .join("results.npz")
    }
}

impl std::str::FromStr for NpzFormat {
    type Err = eyre::Report;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "npz" => Ok(NpzFormat::Npz),
            "mini_npz" => Ok(NpzFormat::MiniNpz),
            _ => bail!("unsupported export format {s:?} (supported: npz, mini_npz)"),
        }
    }
}

/// Write the reference's `npz` export; returns the file written.
pub fn export_npz(pred: &Prediction, export_dir: impl AsRef<Path>) -> Result<PathBuf> {
    pred.check()?;
    let images = pred
        .processed_images
        .as_ref()
        .ok_or_else(|| eyre!("the npz export needs the processed images"))?;
    let (n, h, w) = (pred.num_views, pred.height, pred.width);
    let mut arrays = vec![
        ("image", NpyArray::from_u8(&[n, h, w, 3], images.clone())?),
        (
            "depth",
            NpyArray::from_f32(&[n, h, w], round_decimals_f32(&pred.depth, 6))?,
        ),
    ];
    arrays.extend(pred.camera_arrays()?);
    write_export(NpzFormat::Npz.path(export_dir), &arrays, pred.aux_arrays()?)
}

/// Write the reference's `mini_npz` export; returns the file written.
pub fn export_mini_npz(pred: &Prediction, export_dir: impl AsRef<Path>) -> Result<PathBuf> {
    pred.check()?;
    let (n, h, w) = (pred.num_views, pred.height, pred.width);
    let mut arrays = vec![(
        "depth",
        NpyArray::from_f32(&[n, h, w], round_decimals_f32(&pred.depth, 8))?,
    )];
    arrays.extend(pred.camera_arrays()?);
    write_export(
        NpzFormat::MiniNpz.path(export_dir),
        &arrays,
        pred.aux_arrays()?,
    )
}

/// Write one export format.
pub fn export(
    pred: &Prediction,
    format: NpzFormat,
    export_dir: impl AsRef<Path>,
) -> Result<PathBuf> {
    match format {
        NpzFormat::Npz => export_npz(pred, export_dir),
        NpzFormat::MiniNpz => export_mini_npz(pred, export_dir),
    }
}

fn write_export(
    path: PathBuf,
    arrays: &[(&'static str, NpyArray)],
    aux: Vec<(String, NpyArray)>,
) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).wrap_err_with(|| format!("creating {}", dir.display()))?;
    }
    let mut refs: Vec<(&str, &NpyArray)> = arrays.iter().map(|(n, a)| (*n, a)).collect();
    refs.extend(aux.iter().map(|(n, a)| (n.as_str(), a)));
    write_npz(&path, &refs, true)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn npz_round_trip_in_memory() {
        let a = NpyArray::from_f32(&[2, 2], vec![1.0, 2.0, 3.0, 4.5]).unwrap();
        let b = NpyArray::from_u8(&[3], vec![7, 8, 9]).unwrap();
        for compressed in [true, false] {
            let mut buf = Cursor::new(Vec::new());
            write_npz_to(&mut buf, &[("a", &a), ("b", &b)], compressed).unwrap();
            buf.set_position(0);
            let back = read_npz_from(buf).unwrap();
            assert_eq!(back.len(), 2);
            assert_eq!(back[0], ("a".to_string(), a.clone()));
            assert_eq!(npz_get(&back, "b"), Some(&b));
        }
    }

    #[test]
    fn numpy_rounding() {
        let r = round_decimals_f32(&[0.125, 0.135, 1.005, -2.345678], 2);
        assert_eq!(r, vec![0.12, 0.14, 1.0, -2.35]);
        assert_eq!(round_decimals_f32(&[1.2345678], 6)[0], 1.234568);
    }

    #[test]
    fn format_names_and_paths() {
        assert_eq!("npz".parse::<NpzFormat>().unwrap(), NpzFormat::Npz);
        assert_eq!("mini_npz".parse::<NpzFormat>().unwrap(), NpzFormat::MiniNpz);
        assert!("glb".parse::<NpzFormat>().is_err());
        assert_eq!(
            NpzFormat::Npz.path("/x"),
            PathBuf::from("/x/exports/npz/results.npz")
        );
    }

    #[test]
    fn export_writes_reference_keys() {
        let dir = std::env::temp_dir().join(format!("da3-npz-test-{}", std::process::id()));
        let pred = Prediction {
            num_views: 1,
            height: 2,
            width: 2,
            depth: vec![1.0, 2.0, 3.0, 4.1234567],
            conf: Some(vec![1.234, 1.0, 1.0, 1.0]),
            extrinsics: Some(vec![[
                [1.0, 0.0, 0.0, 0.5],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
            ]]),
            intrinsics: Some(vec![[[2.0, 0.0, 1.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]]]),
            processed_images: Some(vec![5; 12]),
            is_metric: false,
            aux: Vec::new(),
            gaussians: None,
        };
        let p = export_npz(&pred, &dir).unwrap();
        let m = read_npz(&p).unwrap();
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["image", "depth", "conf", "extrinsics", "intrinsics"]
        );
        assert_eq!(npz_get(&m, "image").unwrap().shape, vec![1, 2, 2, 3]);
        // numpy: f32(4.1234567) * 1e6 = 4123456.5 -> rint 4123456 (checked with numpy 1.26).
        assert_eq!(npz_get(&m, "depth").unwrap().to_f32_vec()[3], 4.123456);
        assert_eq!(npz_get(&m, "conf").unwrap().to_f32_vec()[0], 1.23);
        assert_eq!(npz_get(&m, "extrinsics").unwrap().shape, vec![1, 3, 4]);
        let p2 = export_mini_npz(&pred, &dir).unwrap();
        assert!(p2.ends_with("exports/mini_npz/results.npz"));
        let m2 = read_npz(&p2).unwrap();
        assert!(npz_get(&m2, "image").is_none());
        let mut no_img = pred.clone();
        no_img.processed_images = None;
        assert!(export_npz(&no_img, &dir).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
