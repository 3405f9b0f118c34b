//! NumPy `.npy` (format 1.0/2.0/3.0) encoding and decoding for the dtypes DA3 needs.
//!
//! Writing produces the same bytes as `numpy.save` (version 1.0 header, keys sorted, the
//! 21-digit growth padding of NumPy >= 1.23, 64-byte alignment); reading accepts any byte
//! order, C or Fortran order, and converts Fortran-ordered data to C order.

use std::fs;
use std::path::Path;

use eyre::{bail, ensure, eyre, Result, WrapErr};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
const ARRAY_ALIGN: usize = 64;
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// Element storage of an [`NpyArray`].
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `|b1`
    Bool(Vec<bool>),
    /// `|u1`
    U8(Vec<u8>),
    /// `<u2`
    U16(Vec<u16>),
    /// `<i4`
    I32(Vec<i32>),
    /// `<i8`
    I64(Vec<i64>),
    /// `<f4`
    F32(Vec<f32>),
    /// `<f8`
    F64(Vec<f64>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::Bool(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::U16(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The little-endian NumPy `descr` string.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::Bool(_) => "|b1",
            NpyData::U8(_) => "|u1",
            NpyData::U16(_) => "<u2",
            NpyData::I32(_) => "<i4",
            NpyData::I64(_) => "<i8",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
        }
    }
}

/// An n-dimensional array in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// Elements, C (row-major) order.
    pub data: NpyData,
}

macro_rules! ctor {
    ($name:ident, $t:ty, $var:ident) => {
        #[doc = concat!("Array of `", stringify!($t), "` with the given shape.")]
        pub fn $name(shape: &[usize], data: Vec<$t>) -> Result<Self> {
            Self::new(shape, NpyData::$var(data))
        }
    };
}

impl NpyArray {
    /// Array from a shape and data; the element count must match.
    pub fn new(shape: &[usize], data: NpyData) -> Result<Self> {
        let n: usize = shape.iter().product();
        ensure!(
            n == data.len(),
            "shape {shape:?} holds {n} elements, data has {}",
            data.len()
        );
        Ok(NpyArray {
            shape: shape.to_vec(),
            data,
        })
    }
    ctor!(from_u8, u8, U8);
    ctor!(from_f32, f32, F32);
    ctor!(from_f64, f64, F64);
    ctor!(from_i64, i64, I64);
    ctor!(from_bool, bool, Bool);

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Values widened to `f64` (booleans as 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            NpyData::Bool(v) => v.iter().map(|&b| b as u8 as f64).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::U16(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F64(v) => v.clone(),
        }
    }

    /// Values converted to `f32`.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F32(v) => v.clone(),
            _ => self.to_f64_vec().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// Serialise to `.npy` bytes (format 1.0, little-endian, C order), like `numpy.save`.
    pub fn to_npy_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
            self.data.descr()
        );
        if let Some(first) = self.shape.first() {
            header.push_str(
                &" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first.to_string().len())),
            );
        }
        let hlen = header.len() + 1;
        let padlen = ARRAY_ALIGN - ((MAGIC.len() + 2 + 2 + hlen) % ARRAY_ALIGN);
        let total_header = hlen + padlen;
        let elem = match &self.data {
            NpyData::Bool(_) | NpyData::U8(_) => 1,
            NpyData::U16(_) => 2,
            NpyData::I32(_) | NpyData::F32(_) => 4,
            NpyData::I64(_) | NpyData::F64(_) => 8,
        };
        let mut out = Vec::with_capacity(10 + total_header + self.len() * elem);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        // Header lengths beyond u16 need format 2.0; DA3 headers are always short.
        assert!(total_header <= u16::MAX as usize, "npy header too long");
        out.extend_from_slice(&(total_header as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(b' ', padlen));
        out.push(b'\n');
        match &self.data {
            NpyData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
            NpyData::U8(v) => out.extend_from_slice(v),
            NpyData::U16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::I64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::F64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
        out
    }

    /// Parse `.npy` bytes.
    pub fn from_npy_bytes(bytes: &[u8]) -> Result<Self> {
        ensure!(
            bytes.len() >= 10 && &bytes[..6] == MAGIC,
            "not an .npy file (bad magic)"
        );
        let major = bytes[6];
        let (hlen, start) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                ensure!(bytes.len() >= 12, "truncated .npy header");
                (
                    u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                    12,
                )
            }
            v => bail!("unsupported .npy format version {v}"),
        };
        ensure!(bytes.len() >= start + hlen, "truncated .npy header");
        let header =
            std::str::from_utf8(&bytes[start..start + hlen]).wrap_err("non-UTF-8 .npy header")?;
        let descr = dict_value(header, "descr")?;
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let fortran = match dict_value(header, "fortran_order")?.trim() {
            "True" => true,
            "False" => false,
            v => bail!("bad fortran_order {v:?}"),
        };
        let shape = parse_shape(dict_value(header, "shape")?)?;
        let n: usize = shape.iter().product();
        let body = &bytes[start + hlen..];

        let (order, kind) = descr.split_at(1);
        let big = match order {
            "<" | "|" | "=" => false,
            ">" => true,
            _ => bail!("unsupported dtype {descr:?}"),
        };
        let size: usize = kind[1..]
            .parse()
            .map_err(|_| eyre!("unsupported dtype {descr:?}"))?;
        ensure!(
            body.len() >= n * size,
            ".npy data truncated: {} bytes for {n} x {size}",
            body.len()
        );
        let body = &body[..n * size];
        macro_rules! conv {
            ($t:ty, $w:expr) => {{
                body.chunks_exact($w)
                    .map(|c| {
                        let a: [u8; $w] = c.try_into().unwrap();
                        if big {
                            <$t>::from_be_bytes(a)
                        } else {
                            <$t>::from_le_bytes(a)
                        }
                    })
                    .collect::<Vec<$t>>()
            }};
        }
        let data = match (&kind[..1], size) {
            ("b", 1) => NpyData::Bool(body.iter().map(|&b| b != 0).collect()),
            ("u", 1) => NpyData::U8(body.to_vec()),
            ("u", 2) => NpyData::U16(conv!(u16, 2)),
            ("i", 4) => NpyData::I32(conv!(i32, 4)),
            ("i", 8) => NpyData::I64(conv!(i64, 8)),
            ("f", 2) => {
                let raw = conv!(u16, 2);
                NpyData::F32(raw.into_iter().map(half_to_f32).collect())
            }
            ("f", 4) => NpyData::F32(conv!(f32, 4)),
            ("f", 8) => NpyData::F64(conv!(f64, 8)),
            _ => bail!("unsupported dtype {descr:?}"),
        };
        let mut arr = NpyArray { shape, data };
        if fortran && arr.shape.len() > 1 {
            arr = arr.fortran_to_c();
        }
        Ok(arr)
    }

    fn fortran_to_c(self) -> Self {
        let shape = self.shape.clone();
        let n = self.len();
        // Index in Fortran storage of each C-order position.
        let perm: Vec<usize> = (0..n)
            .map(|mut c_idx| {
                let mut f_idx = 0;
                let mut f_stride = 1;
                let mut idx = vec![0; shape.len()];
                for d in (0..shape.len()).rev() {
                    idx[d] = c_idx % shape[d];
                    c_idx /= shape[d];
                }
                for d in 0..shape.len() {
                    f_idx += idx[d] * f_stride;
                    f_stride *= shape[d];
                }
                f_idx
            })
            .collect();
        fn gather<T: Clone>(v: &[T], p: &[usize]) -> Vec<T> {
            p.iter().map(|&i| v[i].clone()).collect()
        }
        let data = match &self.data {
            NpyData::Bool(v) => NpyData::Bool(gather(v, &perm)),
            NpyData::U8(v) => NpyData::U8(gather(v, &perm)),
            NpyData::U16(v) => NpyData::U16(gather(v, &perm)),
            NpyData::I32(v) => NpyData::I32(gather(v, &perm)),
            NpyData::I64(v) => NpyData::I64(gather(v, &perm)),
            NpyData::F32(v) => NpyData::F32(gather(v, &perm)),
            NpyData::F64(v) => NpyData::F64(gather(v, &perm)),
        };
        NpyArray { shape, data }
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // Subnormal half: value = man * 2^-24.
            return f32::from_bits(sign)
                + (if sign != 0 { -1.0 } else { 1.0 }) * man as f32 * 2f32.powi(-24);
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | (((exp - 15 + 127) as u32) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// The raw text of `key`'s value in a Python dict literal (values here never contain
/// top-level commas except inside the shape tuple).
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let pat_sq = format!("'{key}'");
    let pat_dq = format!("\"{key}\"");
    let pos = header
        .find(&pat_sq)
        .map(|p| p + pat_sq.len())
        .or_else(|| header.find(&pat_dq).map(|p| p + pat_dq.len()))
        .ok_or_else(|| eyre!(".npy header lacks {key:?}: {header}"))?;
    let rest = header[pos..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| eyre!("malformed .npy header: {header}"))?
        .trim_start();
    if rest.starts_with('(') {
        let end = rest
            .find(')')
            .ok_or_else(|| eyre!("malformed shape in .npy header"))?;
        Ok(&rest[..=end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Ok(&rest[..end])
    }
}

fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let inner = s.trim().trim_start_matches('(').trim_end_matches(')');
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| eyre!("bad shape {s:?}"))
        })
        .collect()
}

/// Write one array as an `.npy` file.
pub fn write_npy(path: impl AsRef<Path>, array: &NpyArray) -> Result<()> {
    let path = path.as_ref();
    fs::write(path, array.to_npy_bytes()).wrap_err_with(|| format!("writing {}", path.display()))
}

/// Read an `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = fs::read(path).wrap_err_with(|| format!("reading {}", path.display()))?;
    NpyArray::from_npy_bytes(&bytes).wrap_err_with(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_numpy_layout() {
        let a = NpyArray::from_f32(&[2, 3], vec![0.0; 6]).unwrap();
        let b = a.to_npy_bytes();
        assert_eq!((b.len() - 24) % 64, 0, "header padded to 64");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!(hlen + 10, 128);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        let one = NpyArray::from_u8(&[5], vec![1, 2, 3, 4, 5])
            .unwrap()
            .to_npy_bytes();
        assert!(std::str::from_utf8(&one[10..70])
            .unwrap()
            .contains("'shape': (5,), }"));
        let scalar = NpyArray::from_f64(&[], vec![2.5]).unwrap().to_npy_bytes();
        assert!(std::str::from_utf8(&scalar[10..])
            .unwrap()
            .starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (), }"));
    }

    #[test]
    fn round_trip_all_dtypes() {
        let arrays = [
            NpyArray::from_u8(&[2, 2, 3], (0..12).collect()).unwrap(),
            NpyArray::from_f32(&[3], vec![1.5, -2.25, f32::MAX]).unwrap(),
            NpyArray::from_f64(&[1, 2], vec![std::f64::consts::PI, -0.0]).unwrap(),
            NpyArray::from_i64(&[2], vec![-7, 1 << 40]).unwrap(),
            NpyArray::from_bool(&[2], vec![true, false]).unwrap(),
            NpyArray::new(&[2], NpyData::I32(vec![-1, 5])).unwrap(),
        ];
        for a in arrays {
            let b = NpyArray::from_npy_bytes(&a.to_npy_bytes()).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn reads_big_endian_and_fortran_order() {
        let header = "{'descr': '>f4', 'fortran_order': True, 'shape': (2, 3), }";
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16 + 1).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.push(b'\n');
        // C-order [[0,1,2],[3,4,5]] stored column-major: 0,3,1,4,2,5.
        for v in [0f32, 3., 1., 4., 2., 5.] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let a = NpyArray::from_npy_bytes(&bytes).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::F32(vec![0., 1., 2., 3., 4., 5.]));
    }

    #[test]
    fn rejects_garbage_and_mismatched_shapes() {
        assert!(NpyArray::from_npy_bytes(b"PK\x03\x04 not npy").is_err());
        assert!(NpyArray::from_f32(&[2, 2], vec![1.0; 3]).is_err());
    }

    #[test]
    fn half_conversion() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert!(half_to_f32(0x7e00).is_nan());
    }
}
