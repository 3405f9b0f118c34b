//! Where frames come from: a folder, a glob, a list of files, or a video.
//!
//! A [`FrameReader`] yields decoded RGB frames one by one; a file that cannot
//! be read gives an `Err` naming it, and the caller decides whether that is
//! fatal (`STRICT=1`) or a warning.

use std::path::{Path, PathBuf};

use eyre::{bail, eyre, Context, Result};

/// Image file extensions read from folders and globs (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];
/// Video file extensions decoded through FFmpeg (lower case).
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "mkv", "avi", "mov", "webm", "m4v", "mpg", "mpeg", "ts", "mjpeg",
];

/// What `SOURCE` points at, resolved once at start.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// Image files, in the order they will be sent.
    Images(Vec<PathBuf>),
    /// One video file.
    Video(PathBuf),
}

fn ext_of(p: &Path) -> Option<String> {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

pub fn is_image(p: &Path) -> bool {
    ext_of(p).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

pub fn is_video(p: &Path) -> bool {
    ext_of(p).is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.as_str()))
}

impl SourceSpec {
    /// Resolves `SOURCE`: a directory (its images, sorted by name), a glob
    /// pattern (`*`, `?`, `[`), a video file, one image file, or a list of
    /// files separated by commas or newlines. Relative paths are taken from
    /// `base` (the node's working directory).
    pub fn resolve(source: &str, base: &Path) -> Result<Self> {
        let source = source.trim();
        if source.is_empty() {
            bail!("SOURCE is empty: set it to a folder, a glob, a list of images or a video file");
        }
        let abs = |s: &str| -> PathBuf {
            let p = PathBuf::from(s.trim());
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let parts: Vec<&str> = source
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.len() > 1 {
            let files: Vec<PathBuf> = parts.iter().map(|p| abs(p)).collect();
            for f in &files {
                if !f.is_file() {
                    bail!(
                        "SOURCE lists `{}`, which does not exist or is not a file",
                        f.display()
                    );
                }
            }
            return Ok(Self::Images(files));
        }
        if source.contains(['*', '?', '[']) {
            let pattern = abs(source);
            let pattern = pattern.to_string_lossy();
            let mut files = Vec::new();
            for entry in glob::glob(&pattern).wrap_err_with(|| format!("bad glob `{pattern}`"))? {
                let p = entry.wrap_err_with(|| format!("cannot read a match of `{pattern}`"))?;
                if p.is_file() {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                bail!("SOURCE glob `{pattern}` matches no file");
            }
            return Ok(Self::Images(files));
        }
        let path = abs(source);
        if path.is_dir() {
            let mut files = Vec::new();
            let entries = std::fs::read_dir(&path)
                .wrap_err_with(|| format!("cannot list folder `{}`", path.display()))?;
            for entry in entries {
                let p = entry
                    .wrap_err_with(|| format!("cannot list folder `{}`", path.display()))?
                    .path();
                if p.is_file() && is_image(&p) {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                bail!(
                    "folder `{}` holds no image ({})",
                    path.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
            return Ok(Self::Images(files));
        }
        if !path.exists() {
            bail!("SOURCE `{}` does not exist", path.display());
        }
        if is_video(&path) {
            return Ok(Self::Video(path));
        }
        Ok(Self::Images(vec![path]))
    }
}

/// A decoded RGB frame and the file (or video position) it came from.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub origin: String,
}

/// Reads frames from a [`SourceSpec`], one pass.
pub enum FrameReader {
    Images {
        files: Vec<PathBuf>,
        next: usize,
    },
    #[cfg(feature = "video")]
    Video(crate::video::VideoReader),
}

impl FrameReader {
    pub fn open(spec: &SourceSpec) -> Result<Self> {
        match spec {
            SourceSpec::Images(files) => Ok(Self::Images {
                files: files.clone(),
                next: 0,
            }),
            #[cfg(feature = "video")]
            SourceSpec::Video(p) => Ok(Self::Video(crate::video::VideoReader::open(p)?)),
            #[cfg(not(feature = "video"))]
            SourceSpec::Video(p) => Err(eyre!(
                "`{}` is a video, but image-source was built without the `video` feature",
                p.display()
            )),
        }
    }

    /// Skips the next item without decoding it where possible (for `EVERY`).
    pub fn skip(&mut self) -> Result<bool> {
        match self {
            Self::Images { files, next } => {
                if *next >= files.len() {
                    return Ok(false);
                }
                *next += 1;
                Ok(true)
            }
            #[cfg(feature = "video")]
            Self::Video(v) => Ok(v.next_frame()?.is_some()),
        }
    }

    /// The next frame: `None` at the end, `Some(Err)` for an unreadable item
    /// (the reader stays usable and moves past it).
    pub fn next_frame(&mut self) -> Option<Result<RawFrame>> {
        match self {
            Self::Images { files, next } => {
                let path = files.get(*next)?.clone();
                *next += 1;
                Some(read_image(&path))
            }
            #[cfg(feature = "video")]
            Self::Video(v) => v.next_frame().transpose(),
        }
    }
}

/// Reads and decodes one image file to RGB8.
pub fn read_image(path: &Path) -> Result<RawFrame> {
    let bytes =
        std::fs::read(path).wrap_err_with(|| format!("cannot read `{}`", path.display()))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| eyre!("cannot decode `{}`: {e}", path.display()))?;
    let rgb = img.into_rgb8();
    Ok(RawFrame {
        width: rgb.width(),
        height: rgb.height(),
        rgb: rgb.into_raw(),
        origin: path.display().to_string(),
    })
}

/// Scales a frame so its longest side is at most `max_side` (never enlarges).
pub fn limit_size(frame: RawFrame, max_side: u32) -> Result<RawFrame> {
    let longest = frame.width.max(frame.height);
    if longest <= max_side {
        return Ok(frame);
    }
    let scale = max_side as f64 / longest as f64;
    let w = ((frame.width as f64 * scale).round() as u32).max(1);
    let h = ((frame.height as f64 * scale).round() as u32).max(1);
    let img = image::RgbImage::from_raw(frame.width, frame.height, frame.rgb)
        .ok_or_else(|| eyre!("frame from {} has an inconsistent size", frame.origin))?;
    let small = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    Ok(RawFrame {
        width: w,
        height: h,
        rgb: small.into_raw(),
        origin: frame.origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, seed: u8) {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8 ^ seed, y as u8, seed.wrapping_mul(3)])
        });
        img.save(path).unwrap();
    }

    #[test]
    fn resolves_folder_glob_list_and_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_png(&d.join("b.png"), 4, 3, 1);
        write_png(&d.join("a.png"), 4, 3, 2);
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let folder = SourceSpec::resolve(d.to_str().unwrap(), Path::new("/")).unwrap();
        assert_eq!(
            folder,
            SourceSpec::Images(vec![d.join("a.png"), d.join("b.png")])
        );
        let glob = SourceSpec::resolve("*.png", d).unwrap();
        assert_eq!(glob, folder);
        let list = SourceSpec::resolve("b.png, a.png", d).unwrap();
        assert_eq!(
            list,
            SourceSpec::Images(vec![d.join("b.png"), d.join("a.png")])
        );
        let one = SourceSpec::resolve("a.png", d).unwrap();
        assert_eq!(one, SourceSpec::Images(vec![d.join("a.png")]));
        std::fs::write(d.join("clip.mp4"), "x").unwrap();
        assert_eq!(
            SourceSpec::resolve("clip.mp4", d).unwrap(),
            SourceSpec::Video(d.join("clip.mp4"))
        );
    }

    #[test]
    fn missing_paths_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = SourceSpec::resolve("nope/x.png", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope/x.png") && err.contains("does not exist"),
            "{err}"
        );
        let err = SourceSpec::resolve("a.png,b.png", dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.png"), "{err}");
        let err = SourceSpec::resolve("*.jpg", dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches no file"), "{err}");
        let err = SourceSpec::resolve(dir.path().to_str().unwrap(), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no image"), "{err}");
        assert!(SourceSpec::resolve("  ", dir.path()).is_err());
    }

    #[test]
    fn reader_reports_corrupt_files_and_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_png(&d.join("0.png"), 5, 4, 1);
        std::fs::write(d.join("1.jpg"), b"\xff\xd8\xff\xe0 truncated").unwrap();
        write_png(&d.join("2.png"), 5, 4, 3);
        let spec = SourceSpec::resolve(d.to_str().unwrap(), Path::new("/")).unwrap();
        let mut r = FrameReader::open(&spec).unwrap();
        let a = r.next_frame().unwrap().unwrap();
        assert_eq!((a.width, a.height), (5, 4));
        let err = r.next_frame().unwrap().unwrap_err().to_string();
        assert!(err.contains("1.jpg"), "{err}");
        let c = r.next_frame().unwrap().unwrap();
        assert!(c.origin.ends_with("2.png"));
        assert!(r.next_frame().is_none());
    }

    #[test]
    fn limit_size_keeps_aspect_and_never_enlarges() {
        let f = RawFrame {
            width: 40,
            height: 20,
            rgb: vec![7; 40 * 20 * 3],
            origin: "x".into(),
        };
        let s = limit_size(f.clone(), 10).unwrap();
        assert_eq!((s.width, s.height), (10, 5));
        assert_eq!(s.rgb.len(), 10 * 5 * 3);
        assert!(s.rgb.iter().all(|&v| v == 7));
        let same = limit_size(f, 100).unwrap();
        assert_eq!((same.width, same.height), (40, 20));
    }
}
