//! Broken messages, each broken *by construction*: whatever the random
//! choices, the message breaks a rule of `docs/messages.md`, so a node that
//! decodes it must reject it. Kits are built from one good message and
//! derive every bad one from it (same `frame_id`, camera, ...), so a test can
//! interleave them with good frames.
//!
//! Metadata floats are always finite: the integration-testing input format is
//! JSON, which has no NaN (NaN and infinities are tried in payloads instead).
//! Random metadata floats are multiples of 1/8 (exact through JSON).

use std::sync::Arc;

use da3_msg::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    Int8Array, ListArray, StringArray, StructArray, UInt16Array, UInt8Array,
};
use da3_msg::arrow::datatypes::{DataType, Field, Int32Type};
use da3_msg::{keys, CameraMsg, DepthMap, MetadataParameters, Parameter, PointCloud};

use crate::rng::Rng;

pub mod mcap_files;

/// One message to send: what was broken, the payload, the metadata.
#[derive(Debug, Clone)]
pub struct Case {
    pub kind: &'static str,
    pub array: ArrayRef,
    pub params: MetadataParameters,
    /// The message itself is well-formed; only decoding its picture fails
    /// (corrupt or truncated JPEG/PNG, a size over the pixel limit). Nodes
    /// that decode images reject it; checks of the message alone do not.
    pub pixels_only: bool,
}

impl Case {
    pub fn new(kind: &'static str, msg: (ArrayRef, MetadataParameters)) -> Self {
        Self {
            kind,
            array: msg.0,
            params: msg.1,
            pixels_only: false,
        }
    }

    fn pixels(kind: &'static str, msg: (ArrayRef, MetadataParameters)) -> Self {
        Self {
            pixels_only: true,
            ..Self::new(kind, msg)
        }
    }
}

/// A payload of `len` elements of some Arrow type other than `not`.
pub fn wrong_type_array(rng: &mut Rng, len: usize, not: &DataType) -> ArrayRef {
    loop {
        let a: ArrayRef = match rng.below(11) {
            0 => Arc::new(Int8Array::from(
                (0..len).map(|_| rng.byte() as i8).collect::<Vec<_>>(),
            )),
            1 => Arc::new(UInt16Array::from(
                (0..len).map(|_| rng.next_u64() as u16).collect::<Vec<_>>(),
            )),
            2 => Arc::new(Int32Array::from(
                (0..len).map(|_| rng.next_u64() as i32).collect::<Vec<_>>(),
            )),
            3 => Arc::new(Int64Array::from(
                (0..len).map(|_| rng.next_u64() as i64).collect::<Vec<_>>(),
            )),
            4 => Arc::new(Float32Array::from(
                (0..len)
                    .map(|_| rng.float(-1e3, 1e3) as f32)
                    .collect::<Vec<_>>(),
            )),
            5 => Arc::new(Float64Array::from(
                (0..len).map(|_| rng.float(-1e3, 1e3)).collect::<Vec<_>>(),
            )),
            6 => Arc::new(StringArray::from(
                (0..len.min(64))
                    .map(|i| format!("s{i}"))
                    .collect::<Vec<_>>(),
            )),
            7 => Arc::new(BooleanArray::from(
                (0..len).map(|_| rng.chance(1, 2)).collect::<Vec<_>>(),
            )),
            8 => Arc::new(BinaryArray::from_iter_values(
                (0..len.min(64)).map(|_| rng.bytes(8)),
            )),
            9 => Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
                (0..len.min(64)).map(|i| Some(vec![Some(i as i32), None])),
            )),
            _ => {
                let n = len.min(64);
                Arc::new(StructArray::from(vec![(
                    Arc::new(Field::new("a", DataType::UInt8, false)),
                    Arc::new(UInt8Array::from(rng.bytes(n))) as ArrayRef,
                )]))
            }
        };
        if a.data_type() != not {
            return a;
        }
    }
}

/// A parameter of any variant except the ones in `not` (floats finite).
pub fn param_except(rng: &mut Rng, not: &[&str]) -> Parameter {
    loop {
        let (name, p) = match rng.below(7) {
            0 => ("Bool", Parameter::Bool(rng.chance(1, 2))),
            1 => (
                "Integer",
                Parameter::Integer(rng.range(-1_000_000, 1_000_000)),
            ),
            // (k + 0.5) / 4: never a whole number, and exact in binary and in
            // short decimal (serde_json without `float_roundtrip` can be one
            // ULP off on other values; see docs/reliability.md).
            2 => (
                "Float",
                Parameter::Float((rng.range(-4_000_000, 4_000_000) as f64 + 0.5) / 4.0),
            ),
            3 => ("String", Parameter::String(format!("x{}", rng.below(1000)))),
            4 => (
                "ListInt",
                Parameter::ListInt((0..rng.index(4)).map(|_| rng.range(-9, 9)).collect()),
            ),
            5 => (
                "ListFloat",
                Parameter::ListFloat(
                    (0..rng.index(4))
                        .map(|_| rng.range(-72, 72) as f64 / 8.0)
                        .collect(),
                ),
            ),
            _ => (
                "ListString",
                Parameter::ListString(vec!["a".into(); rng.index(3)]),
            ),
        };
        if !not.contains(&name) {
            return p;
        }
    }
}

/// A metadata value that is not a valid size: zero, negative, beyond u32,
/// of a wrong type, or a fraction.
fn bad_size(rng: &mut Rng) -> Parameter {
    match rng.below(5) {
        0 => Parameter::Integer(0),
        1 => Parameter::Integer(rng.range(i64::MIN, -1)),
        2 => Parameter::Integer(rng.range(u32::MAX as i64 + 1, i64::MAX)),
        3 => Parameter::Float(rng.below(5000) as f64 + 0.5),
        _ => param_except(rng, &["Integer", "Float"]),
    }
}

/// Overwrites a common key (`frame_id`, `stamp_ns`, `camera`, `last`) with a bad value.
fn break_common(rng: &mut Rng, p: &mut MetadataParameters) -> &'static str {
    match rng.below(5) {
        0 => {
            p.insert(
                keys::FRAME_ID.into(),
                Parameter::Integer(rng.range(i64::MIN, -1)),
            );
            "negative frame_id"
        }
        1 => {
            p.insert(
                keys::STAMP_NS.into(),
                Parameter::Integer(rng.range(i64::MIN, -1)),
            );
            "negative stamp_ns"
        }
        2 => {
            p.remove(keys::FRAME_ID);
            p.insert(keys::SEQ.into(), Parameter::Integer(rng.range(-1000, -1)));
            "negative seq"
        }
        3 => {
            p.insert(keys::CAMERA.into(), param_except(rng, &["String"]));
            "camera not a string"
        }
        _ => {
            let key = *rng.pick(&[keys::FRAME_ID, keys::STAMP_NS]);
            p.insert(key.into(), param_except(rng, &["Integer", "Float"]));
            "id not an integer"
        }
    }
}

/// Bad `focal` / `principal_point` pairs.
fn break_intrinsics(rng: &mut Rng, p: &mut MetadataParameters) -> &'static str {
    match rng.below(4) {
        0 => {
            p.insert(
                keys::FOCAL.into(),
                Parameter::ListFloat(vec![rng.range(8, 4000) as f64 / 8.0; 2]),
            );
            p.remove(keys::PRINCIPAL_POINT);
            "focal without principal point"
        }
        1 => {
            p.insert(
                keys::FOCAL.into(),
                Parameter::ListFloat(vec![-(rng.range(0, 4000) as f64) / 8.0, 100.0]),
            );
            p.insert(
                keys::PRINCIPAL_POINT.into(),
                Parameter::ListFloat(vec![1.0, 1.0]),
            );
            "non-positive focal"
        }
        2 => {
            let n = *rng.pick(&[0usize, 1, 3, 4]);
            p.insert(keys::FOCAL.into(), Parameter::ListFloat(vec![100.0; n]));
            p.insert(
                keys::PRINCIPAL_POINT.into(),
                Parameter::ListFloat(vec![1.0, 1.0]),
            );
            "focal of the wrong length"
        }
        _ => {
            p.insert(
                keys::FOCAL.into(),
                param_except(rng, &["ListFloat", "ListInt"]),
            );
            p.insert(
                keys::PRINCIPAL_POINT.into(),
                Parameter::ListFloat(vec![1.0, 1.0]),
            );
            "focal of the wrong type"
        }
    }
}

fn with_nulls_f32(rng: &mut Rng, values: &[f32]) -> ArrayRef {
    let n = values.len().max(1);
    let mut v: Vec<Option<f32>> = (0..n)
        .map(|i| Some(values.get(i).copied().unwrap_or(0.0)))
        .collect();
    let i = rng.index(n);
    v[i] = None;
    Arc::new(Float32Array::from(v))
}

// Image frames.
mod image;
pub use image::{crc32, jpeg_claiming, png_claiming, ImageKit, NEW_ENCODINGS};

/// Camera messages (`camera_info` inputs, the DA3 node's `camera` output).
pub struct CameraKit {
    pub good: CameraMsg,
}

impl CameraKit {
    pub fn bad(&self, rng: &mut Rng) -> Case {
        let g = &self.good;
        let (_, mut p) = g.to_message();
        let mut v: Vec<f64> = g.extrinsics.to_vec();
        v.extend_from_slice(&g.intrinsics);
        let floats = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        match rng.below(9) {
            0 => {
                let len = rng.index(43);
                Case::new(
                    "wrong arrow type",
                    (wrong_type_array(rng, len, &DataType::Float64), p),
                )
            }
            1 => {
                let len = loop {
                    let l = rng.index(43);
                    if l != 21 {
                        break l;
                    }
                };
                let data: Vec<f64> = (0..len).map(|i| v.get(i).copied().unwrap_or(1.0)).collect();
                Case::new("wrong number of values", (floats(data), p))
            }
            2 => {
                let bad = *rng.pick(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
                for _ in 0..1 + rng.index(3) {
                    let i = rng.index(21);
                    v[i] = bad;
                }
                Case::new("NaN or infinity in the camera", (floats(v), p))
            }
            3 => {
                let mut o: Vec<Option<f64>> = v.iter().map(|x| Some(*x)).collect();
                let i = rng.index(21);
                o[i] = None;
                Case::new("nulls in the payload", (Arc::new(Float64Array::from(o)), p))
            }
            4 => {
                // Not a rotation: scaled, sheared, mirrored, singular or random.
                match rng.below(5) {
                    0 => {
                        let s = *rng.pick(&[0.0, 0.5, 1.5, 3.0, -2.0]);
                        for i in [0, 1, 2, 4, 5, 6, 8, 9, 10] {
                            v[i] *= s;
                        }
                    }
                    1 => v[1] += rng.float(0.1, 2.0),
                    2 => {
                        let row = rng.index(3) * 4;
                        for j in 0..3 {
                            v[row + j] = -v[row + j];
                        }
                    }
                    3 => {
                        let row = rng.index(3) * 4;
                        for j in 0..3 {
                            v[row + j] = 0.0;
                        }
                    }
                    _ => {
                        for i in [0, 1, 2, 4, 5, 6, 8, 9, 10] {
                            v[i] = rng.float(-1.0, 1.0);
                        }
                        v[0] = 2.0; // a unit row cannot have a 2 in it
                    }
                }
                Case::new("non-invertible pose", (floats(v), p))
            }
            5 => {
                let i = *rng.pick(&[12usize, 16]);
                v[i] = -rng.float(0.0, 100.0);
                Case::new("non-positive focal length", (floats(v), p))
            }
            6 => {
                let key = *rng.pick(&[keys::WIDTH, keys::HEIGHT]);
                if rng.chance(1, 3) {
                    p.remove(key);
                } else {
                    p.insert(key.into(), bad_size(rng));
                }
                Case::new("bad width or height", (floats(v), p))
            }
            7 => {
                p.insert(
                    keys::LAYOUT.into(),
                    Parameter::String(format!("intrinsics3x3+extrinsics{}", rng.below(9))),
                );
                Case::new("unknown layout", (floats(v), p))
            }
            _ => {
                let kind = break_common(rng, &mut p);
                Case::new(kind, (floats(v), p))
            }
        }
    }
}

/// Depth (or confidence) maps.
pub struct DepthKit {
    pub good: DepthMap,
}

impl DepthKit {
    pub fn bad(&self, rng: &mut Rng) -> Case {
        let g = &self.good;
        let (arr, mut p) = g.to_message();
        let n = g.values.len();
        match rng.below(8) {
            0 => {
                let len = rng.index(2 * n + 1);
                Case::new(
                    "wrong arrow type",
                    (wrong_type_array(rng, len, &DataType::Float32), p),
                )
            }
            1 => {
                let len = loop {
                    let l = rng.index(2 * n + 2);
                    if l != n {
                        break l;
                    }
                };
                let data: ArrayRef = Arc::new(Float32Array::from(
                    (0..len)
                        .map(|_| rng.float(0.1, 10.0) as f32)
                        .collect::<Vec<_>>(),
                ));
                Case::new("wrong number of values", (data, p))
            }
            2 => {
                let key = *rng.pick(&[keys::WIDTH, keys::HEIGHT]);
                match rng.below(3) {
                    0 => {
                        p.remove(key);
                    }
                    1 => {
                        p.insert(key.into(), bad_size(rng));
                    }
                    _ => {
                        let other = if key == keys::WIDTH {
                            g.height
                        } else {
                            g.width
                        } as usize;
                        let v = loop {
                            let v = rng.range(1, 1 << 31) as usize;
                            if v * other != n {
                                break v;
                            }
                        };
                        p.insert(key.into(), Parameter::Integer(v as i64));
                    }
                }
                Case::new("bad width or height", (arr, p))
            }
            3 => {
                if rng.chance(1, 2) {
                    p.insert(
                        keys::PRIMITIVE.into(),
                        Parameter::String(
                            rng.pick(&["deep", "points3d", "Depth", "disparity"])
                                .to_string(),
                        ),
                    );
                    Case::new("unknown primitive", (arr, p))
                } else {
                    p.insert(keys::PRIMITIVE.into(), param_except(rng, &["String"]));
                    Case::new("primitive not a string", (arr, p))
                }
            }
            4 => Case::new("nulls in the payload", (with_nulls_f32(rng, &g.values), p)),
            5 => {
                match rng.below(3) {
                    0 => {
                        let s = *rng.pick(&[0.0, 0.5, 2.0, 10.0]);
                        p.insert(
                            keys::CAMERA_ORIENTATION.into(),
                            Parameter::ListFloat(vec![0.0, 0.0, 0.0, s]),
                        );
                        p.insert(
                            keys::CAMERA_POSITION.into(),
                            Parameter::ListFloat(vec![0.0; 3]),
                        );
                    }
                    1 => {
                        p.insert(
                            keys::CAMERA_POSITION.into(),
                            Parameter::ListFloat(vec![0.0; 3]),
                        );
                        p.remove(keys::CAMERA_ORIENTATION);
                    }
                    _ => {
                        p.insert(
                            keys::CAMERA_ORIENTATION.into(),
                            Parameter::ListFloat(vec![0.0, 0.0, 1.0]),
                        );
                        p.insert(
                            keys::CAMERA_POSITION.into(),
                            Parameter::ListFloat(vec![0.0; 3]),
                        );
                    }
                }
                Case::new("bad pose", (arr, p))
            }
            6 => {
                if rng.chance(1, 2) {
                    p.insert(keys::IS_METRIC.into(), param_except(rng, &["Bool"]));
                    Case::new("is_metric not a bool", (arr, p))
                } else {
                    let kind = break_intrinsics(rng, &mut p);
                    Case::new(kind, (arr, p))
                }
            }
            _ => {
                let kind = break_common(rng, &mut p);
                Case::new(kind, (arr, p))
            }
        }
    }
}

/// Point clouds.
pub struct PointsKit {
    pub good: PointCloud,
}

impl PointsKit {
    pub fn bad(&self, rng: &mut Rng) -> Case {
        let (arr, mut p) = self.good.to_message();
        let s = arr.as_any().downcast_ref::<StructArray>();
        match (rng.below(3), s) {
            (0, Some(s)) => {
                // Drop one field, or give it another type.
                let drop = rng.index(6);
                let retype = rng.chance(1, 2);
                let mut fields = Vec::new();
                for (i, (f, c)) in s.fields().iter().zip(s.columns()).enumerate() {
                    if i == drop && !retype {
                        continue;
                    }
                    if i == drop {
                        let c2 = wrong_type_array(rng, c.len(), c.data_type());
                        if matches!(
                            c2.data_type(),
                            DataType::Utf8
                                | DataType::Binary
                                | DataType::List(_)
                                | DataType::Struct(_)
                        ) && c2.len() != c.len()
                        {
                            // keep the struct consistent: same length in every column
                            let c3: ArrayRef = Arc::new(Int32Array::from(vec![0; c.len()]));
                            fields.push((
                                Arc::new(Field::new(f.name(), c3.data_type().clone(), false)),
                                c3,
                            ));
                        } else {
                            fields.push((
                                Arc::new(Field::new(f.name(), c2.data_type().clone(), true)),
                                c2,
                            ));
                        }
                        continue;
                    }
                    fields.push((f.clone(), c.clone()));
                }
                let a: ArrayRef = Arc::new(StructArray::from(fields));
                Case::new("points with a missing or mistyped field", (a, p))
            }
            (1, _) => {
                let len = rng.index(64);
                let not = arr.data_type().clone();
                Case::new("points not a struct", (wrong_type_array(rng, len, &not), p))
            }
            _ => {
                let kind = break_common(rng, &mut p);
                Case::new(kind, (arr, p))
            }
        }
    }
}

/// Any payload with any metadata (`primitive` random too): for sinks that
/// take everything, such as the recorder.
pub fn garbage(rng: &mut Rng) -> Case {
    let len = rng.index(300);
    let arr = wrong_type_array(rng, len, &DataType::Null);
    let mut p = MetadataParameters::new();
    for _ in 0..rng.index(6) {
        let key = rng
            .pick(&[
                keys::PRIMITIVE,
                keys::ENCODING,
                keys::WIDTH,
                keys::FRAME_ID,
                keys::CAMERA,
                "x",
                "",
                "ключ",
            ])
            .to_string();
        p.insert(key, param_except(rng, &[]));
    }
    Case::new("garbage", (arr, p))
}
