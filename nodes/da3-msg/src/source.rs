//! The knobs shared by the frame sources (`camera`, `image-source`): one
//! parser, one doc (this table; each source's README repeats it with its
//! own defaults and accepted values).
//!
//! | env | default | meaning |
//! |---|---|---|
//! | `FPS` | per node | frame rate; must be a finite number `>= 0` (what unset and `0` mean is the node's: see its README) |
//! | `ENCODING` | `rgb8` | output encoding, one of the node's accepted set |
//! | `JPEG_QUALITY` | `90` | 1..=100, for `ENCODING=jpeg` |
//! | `MAX_FRAMES` | unset | stop after this many frames (at least 1; unset: no limit) |
//! | `INTRINSICS` | unset | `fx,fy,cx,cy` of the frames as produced (positive focals) |
//! | `CAMERA_NAME` | node id | camera name stamped on every frame |
//! | `LINGER_MS` | `1000` | after the last frame, wait this long for dora to deliver it |

use std::time::Duration;

use eyre::{bail, eyre, Result};

use crate::node_util::Env;
use crate::{Encoding, Intrinsics};

/// The shared source knobs, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// `FPS`: `None` when unset; else finite and `>= 0`.
    pub fps: Option<f64>,
    pub encoding: Encoding,
    pub jpeg_quality: u8,
    pub max_frames: Option<u64>,
    pub intrinsics: Option<Intrinsics>,
    pub camera: String,
    pub linger: Duration,
}

impl SourceConfig {
    /// The env vars [`SourceConfig::from_env`] reads.
    pub const ENV_VARS: &'static [&'static str] = &[
        "FPS",
        "ENCODING",
        "JPEG_QUALITY",
        "MAX_FRAMES",
        "INTRINSICS",
        "CAMERA_NAME",
        "LINGER_MS",
    ];

    /// Reads the shared knobs; `encodings` are the ones the node can send,
    /// `default_camera` the camera name when `CAMERA_NAME` is unset.
    pub fn from_env(env: &Env, encodings: &[Encoding], default_camera: &str) -> Result<Self> {
        let fps: Option<f64> = env.opt("FPS")?;
        if let Some(f) = fps.filter(|f| !(f.is_finite() && *f >= 0.0)) {
            bail!("invalid FPS={f}: must be a number >= 0");
        }
        let enc_name: String = env.or("ENCODING", "rgb8".to_string())?;
        let encoding = match Encoding::parse(&enc_name) {
            Some(e) if encodings.contains(&e) => e,
            _ => bail!(
                "invalid ENCODING={enc_name:?}: expected {}",
                one_of(encodings)
            ),
        };
        let jpeg_quality: u8 = env.or("JPEG_QUALITY", 90)?;
        if !(1..=100).contains(&jpeg_quality) {
            bail!("invalid JPEG_QUALITY={jpeg_quality}: must be 1..=100");
        }
        let max_frames: Option<u64> = env.opt("MAX_FRAMES")?;
        if max_frames == Some(0) {
            bail!("invalid MAX_FRAMES=0: must be at least 1 (unset it for no limit)");
        }
        let intrinsics = match env.opt::<String>("INTRINSICS")? {
            None => None,
            Some(s) => Some(parse_intrinsics(&s)?),
        };
        Ok(Self {
            fps,
            encoding,
            jpeg_quality,
            max_frames,
            intrinsics,
            camera: env.or("CAMERA_NAME", default_camera.to_string())?,
            linger: Duration::from_millis(env.or("LINGER_MS", 1000)?),
        })
    }
}

/// `rgb8, bgr8 or jpeg`.
fn one_of(encodings: &[Encoding]) -> String {
    let names: Vec<String> = encodings.iter().map(|e| e.to_string()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// `fx,fy,cx,cy` with positive focals, all finite.
pub fn parse_intrinsics(s: &str) -> Result<Intrinsics> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| eyre!("invalid INTRINSICS={s:?}: {e}"))?;
    if v.len() != 4 || !(v[0] > 0.0 && v[1] > 0.0) || v.iter().any(|x| !x.is_finite()) {
        bail!("invalid INTRINSICS={s:?}: expected fx,fy,cx,cy with positive focals");
    }
    Ok(Intrinsics {
        fx: v[0],
        fy: v[1],
        cx: v[2],
        cy: v[3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_lists_read_like_prose() {
        assert_eq!(
            one_of(&[Encoding::Rgb8, Encoding::Bgr8, Encoding::Jpeg]),
            "rgb8, bgr8 or jpeg"
        );
        assert_eq!(one_of(&[Encoding::Rgb8]), "rgb8");
    }

    #[test]
    fn intrinsics() {
        let k = parse_intrinsics("700, 710.5, 640, 360").unwrap();
        assert_eq!((k.fx, k.fy, k.cx, k.cy), (700.0, 710.5, 640.0, 360.0));
        for bad in ["1,2,3", "0,2,3,4", "a,2,3,4", "1,2,inf,4"] {
            assert!(parse_intrinsics(bad).is_err(), "{bad}");
        }
    }
}
