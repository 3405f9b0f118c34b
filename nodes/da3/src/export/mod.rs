//! Result export and NumPy file I/O. The file formats live in `da3-io` ([`da3_io::npz`],
//! [`da3_io::npy`], and [`da3_io::export`] for every format of one prediction: npz,
//! mini_npz, glb, ply, png16, depth_vis, colmap); this module re-exports them under their
//! historical paths and adds what needs the preprocessing: the input image each view came
//! from ([`view_sources`]).

use std::path::Path;

pub use da3_io::export::{
    export_all, parse_export_formats, ExportFormat, ExportOptions, ViewSource,
};
pub use da3_io::{npy, npz};

pub use npy::{read_npy, write_npy, NpyArray, NpyData};
pub use npz::{
    export, export_mini_npz, export_npz, read_array, read_npz, write_npz, NpzFormat, Prediction,
};

use crate::preprocess::{restore_intrinsics, PreprocessedBatch};

/// The input image of every view of `batch`: file name, size, and the predicted intrinsics
/// of `pred` expressed in its pixels (the resize and crop of the preprocessing undone).
pub fn view_sources(
    pred: &Prediction,
    batch: &PreprocessedBatch,
    paths: &[impl AsRef<Path>],
) -> Vec<ViewSource> {
    batch
        .transforms
        .iter()
        .zip(paths)
        .enumerate()
        .map(|(i, (t, p))| {
            let p = p.as_ref();
            let name = p
                .file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
            let k = pred
                .intrinsics
                .as_ref()
                .and_then(|k| k.get(i))
                .map(|k| restore_intrinsics(k, t))
                .map(|k| std::array::from_fn(|j| k[j / 3][j % 3] as f64));
            ViewSource {
                name,
                width: t.input_width as u32,
                height: t.input_height as u32,
                intrinsics: k,
            }
        })
        .collect()
}
