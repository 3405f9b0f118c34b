//! Result export in the reference's formats (`npz`, `mini_npz`) and NumPy file I/O. The
//! code lives in `da3-io` ([`da3_io::npz`], [`da3_io::npy`]); this module re-exports it
//! under its historical paths.

pub use da3_io::{npy, npz};

pub use npy::{read_npy, write_npy, NpyArray, NpyData};
pub use npz::{
    export, export_mini_npz, export_npz, parse_formats, read_array, read_npz, write_npz, NpzFormat,
    Prediction,
};
