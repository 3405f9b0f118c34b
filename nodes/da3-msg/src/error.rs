//! The one error type of the message conventions: every variant names the key
//! or the Arrow type that was wrong, so a rejected message can be logged as is.

use thiserror::Error;

/// Why a message could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MsgError {
    /// A required metadata key is absent.
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: &'static str },
    /// A metadata key holds a value of the wrong parameter type.
    #[error("metadata key `{key}` has the wrong type: expected {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    /// A metadata key has the right type but an unusable value.
    #[error("metadata key `{key}` has an invalid value: {reason}")]
    InvalidValue { key: &'static str, reason: String },
    /// The Arrow payload is not of the expected data type.
    #[error("payload has Arrow type {found}, expected {expected}")]
    WrongArrowType {
        expected: &'static str,
        found: String,
    },
    /// The payload length disagrees with the metadata.
    #[error("payload has {got} {unit}, metadata says {expected}")]
    LengthMismatch {
        expected: usize,
        got: usize,
        unit: &'static str,
    },
    /// The payload contains nulls where none are allowed.
    #[error("payload contains null values")]
    Nulls,
    /// An encoded image (JPEG/PNG) failed to decode.
    #[error("cannot decode {encoding} image: {reason}")]
    Decode {
        encoding: &'static str,
        reason: String,
    },
    /// The image is larger than the configured limit.
    #[error("image of {width}x{height} exceeds the limit of {max_pixels} pixels")]
    TooLarge {
        width: u64,
        height: u64,
        max_pixels: u64,
    },
}

pub type Result<T> = std::result::Result<T, MsgError>;
