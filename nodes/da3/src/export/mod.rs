//! Result export in the reference's formats (`npz`, `mini_npz`) and NumPy file I/O.

pub mod npy;
pub mod npz;

pub use npy::{read_npy, write_npy, NpyArray, NpyData};
pub use npz::{
    export, export_mini_npz, export_npz, parse_formats, read_array, read_npz, write_npz, NpzFormat,
    Prediction,
};
