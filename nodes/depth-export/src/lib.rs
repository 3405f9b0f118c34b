//! `depth-export`: a dora sink that writes the DA3 node's results to files:
//! `npz` (the reference's keys), 16-bit PNG depth + JSON sidecar, colour-mapped
//! PNG, binary PLY point clouds and a COLMAP text model. Every file is written
//! atomically (temporary name, fsync, rename).
//!
//! See `nodes/depth-export/README.md` for ports, formats, env vars and a YAML snippet.

pub mod formats;
pub mod frame;
pub mod glb;
pub mod group;

use std::collections::HashMap;
use std::path::PathBuf;

use da3_msg::arrow::array::Array;
use da3_msg::node_util::{for_each_input, start, Env, Step, CONF_PERCENTILE_DEFAULT};
use da3_msg::{DecodeLimits, ImageFrame, Message, MetadataParameters};
use dora_node_api::EventStream;
use eyre::{bail, eyre, Context, Result};

pub use da3_io::{atomic, colmap};

use colmap::ColmapModel;
use formats::{parse_formats, Format};
use frame::FrameResult;
use group::{DecodedImage, Grouper, Item};

/// Node configuration, from env vars.
#[derive(Debug, Clone)]
pub struct Config {
    pub out_dir: PathBuf,
    pub formats: Vec<Format>,
    /// Write every Nth frame of each camera.
    pub every: u64,
    /// Rewrite the COLMAP model every this many exported frames (and at the end).
    pub colmap_every: u64,
    /// Back-projected points: drop pixels below this confidence percentile.
    pub conf_percentile: f64,
    /// Most points in COLMAP's `points3D.txt` over the run.
    pub colmap_max_points: usize,
}

/// The env vars depth-export reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[&[
    "EXPORT_DIR",
    "FORMATS",
    "EVERY",
    "COLMAP_EVERY",
    "COLMAP_MAX_POINTS",
    "CONF_PERCENTILE",
]];

impl Config {
    /// Reads the env vars; any invalid value is one clear error line.
    pub fn from_env() -> Result<Self> {
        // `OUT_DIR` was this folder's name; it is also cargo's variable, and dora passes a
        // node's env to its build command, so it made `dora run` recompile crates.
        let env = Env::new(ENV_VARS).with_renamed(&[("OUT_DIR", "EXPORT_DIR")]);
        let out_dir = PathBuf::from(env.or("EXPORT_DIR", "out/export".to_string())?);
        let formats = parse_formats(&env.or("FORMATS", "npz,png16".to_string())?)?;
        let every: u64 = env.or("EVERY", 1)?;
        if every == 0 {
            bail!("invalid EVERY=0: must be at least 1");
        }
        let colmap_every: u64 = env.or("COLMAP_EVERY", 10)?;
        if colmap_every == 0 {
            bail!("invalid COLMAP_EVERY=0: must be at least 1");
        }
        let colmap_max_points = env.or("COLMAP_MAX_POINTS", 100_000)?;
        let conf_percentile = env.percentile("CONF_PERCENTILE", CONF_PERCENTILE_DEFAULT)?;
        env.finish();
        Ok(Self {
            out_dir,
            formats,
            every,
            colmap_every,
            conf_percentile,
            colmap_max_points,
        })
    }

    fn has(&self, f: Format) -> bool {
        self.formats.contains(&f)
    }
}

/// Decodes one message ([`Message::decode`]: by its `primitive`; the
/// colour-mapped depth is marked in its metadata, whatever the input's name).
///
/// Everything the writers rely on is checked here, so that a bad message is
/// rejected (logged and counted) when it arrives: camera poses must be rigid
/// motions with positive focal lengths (checked by the decode), images must
/// decode (within the default pixel limit); a status message carries no
/// frame data and is rejected too.
pub fn decode(data: &dyn Array, params: &MetadataParameters) -> Result<Item> {
    let image = |f: ImageFrame| -> Result<DecodedImage> {
        let rgb = f
            .to_rgb8(&DecodeLimits::default())
            .wrap_err_with(|| format!("image frame {:?}", f.info.frame_id))?;
        Ok(DecodedImage { info: f.info, rgb })
    };
    Ok(match Message::decode(data, params)? {
        Message::Depth(d) => Item::Depth(d),
        Message::Confidence(d) => Item::Confidence(d),
        Message::Camera(c) => Item::Camera(c),
        Message::Points(p) => Item::Points(p),
        Message::Image(f) => Item::Image(image(f)?),
        Message::DepthVis(v) => Item::Vis(image(v.frame)?),
        Message::Mask(m) => Item::Mask(m.mask, m.frame),
        Message::Gaussians(g) => Item::Gaussians(g),
        Message::Status(_) => bail!("a status message carries no frame data"),
    })
}

/// A mask name as a file-name part: ASCII letters, digits, `-` and `_` kept, others `_`.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the frames, keeps the COLMAP model.
pub struct Exporter {
    cfg: Config,
    per_camera: HashMap<String, u64>,
    colmap: ColmapModel,
    colmap_dirty: bool,
    since_colmap: u64,
    /// Frames written.
    pub written: u64,
    /// Frames skipped by `EVERY`.
    pub skipped: u64,
    /// Files that could not be written.
    pub errors: u64,
    /// Input messages rejected (they do not decode or break a rule).
    pub rejected: u64,
}

impl Exporter {
    pub fn new(cfg: Config) -> Result<Self> {
        std::fs::create_dir_all(&cfg.out_dir)
            .wrap_err_with(|| format!("cannot create EXPORT_DIR `{}`", cfg.out_dir.display()))?;
        Ok(Self {
            colmap: ColmapModel::new(cfg.colmap_max_points),
            cfg,
            per_camera: HashMap::new(),
            colmap_dirty: false,
            since_colmap: 0,
            written: 0,
            skipped: 0,
            errors: 0,
            rejected: 0,
        })
    }

    fn attempt(&mut self, what: &str, r: Result<()>) {
        if let Err(e) = r {
            self.errors += 1;
            tracing::error!("{what}: {e:#}");
        }
    }

    /// Writes one frame in every format (a failed file is logged, not fatal).
    pub fn handle(&mut self, f: &FrameResult) {
        let n = self.per_camera.entry(f.camera.clone()).or_insert(0);
        *n += 1;
        if !(*n - 1).is_multiple_of(self.cfg.every) {
            self.skipped += 1;
            return;
        }
        let dir = self.cfg.out_dir.clone();
        let stem = f.stem();
        if self.cfg.has(Format::Npz) {
            let p = dir.join(format!("{stem}.npz"));
            self.attempt("npz", formats::write_npz(&p, f));
        }
        if self.cfg.has(Format::Png16) {
            let png = dir.join(format!("{stem}.png"));
            let js = dir.join(format!("{stem}.json"));
            self.attempt("png16", formats::write_png16(&png, &js, f));
        }
        if self.cfg.has(Format::Vis) {
            let p = dir.join(format!("{stem}_vis.png"));
            let r = formats::vis_bytes(f).and_then(|b| atomic::write_bytes(&p, &b));
            self.attempt("vis", r);
        }
        if let Some((name, m)) = &f.mask {
            // Whatever FORMATS says: a wired mask is written (grey PNG, 255 = in the mask).
            let p = dir.join(format!("{stem}_{}.png", sanitize_name(name)));
            let r = m
                .to_rgb8(&DecodeLimits::default())
                .map_err(eyre::Report::from)
                .and_then(|(w, h, rgb)| da3_msg::image_frame::encode_png(w, h, &rgb))
                .and_then(|b| atomic::write_bytes(&p, &b));
            self.attempt("mask", r);
        }
        if let Some(g) = &f.gaussians {
            // Whatever FORMATS says: wired Gaussians are written, pruned as the reference's
            // gs_ply (border, farthest 10%).
            let p = dir.join(format!("{stem}_gs.ply"));
            let r =
                da3_io::gaussians::write_gs_ply(&p, &g.gaussians, &g.depth, &Default::default());
            self.attempt("gs_ply", r.map(|_| ()));
        }
        if self.cfg.has(Format::Ply) || self.cfg.has(Format::Colmap) || self.cfg.has(Format::Glb) {
            let (xyz, rgb) = f.world_points(self.cfg.conf_percentile);
            if self.cfg.has(Format::Ply) {
                let p = dir.join(format!("{stem}.ply"));
                if xyz.is_empty() && f.points.is_none() && f.geometry().intrinsics.is_none() {
                    tracing::warn!("frame {stem}: no points and no intrinsics: empty PLY");
                }
                self.attempt("ply", da3_io::ply::write_ply(&p, &xyz, &rgb));
            }
            if self.cfg.has(Format::Glb) {
                let p = dir.join(format!("{stem}.glb"));
                self.attempt("glb", glb::write_glb(&p, f, &xyz, &rgb));
            }
            if self.cfg.has(Format::Colmap) {
                let per_frame = 20_000;
                if self
                    .colmap
                    .add(&f.geometry(), format!("{stem}.png"), &xyz, &rgb, per_frame)
                {
                    self.colmap_dirty = true;
                    self.since_colmap += 1;
                } else {
                    tracing::warn!("frame {stem}: no intrinsics: left out of the COLMAP model");
                }
                if self.since_colmap >= self.cfg.colmap_every {
                    self.write_colmap();
                }
            }
        }
        self.written += 1;
    }

    fn write_colmap(&mut self) {
        if !self.colmap_dirty {
            return;
        }
        let r = self.colmap.write(&self.cfg.out_dir.join("colmap"));
        self.attempt("colmap", r);
        self.colmap_dirty = false;
        self.since_colmap = 0;
    }

    /// End of the run: the final COLMAP model.
    pub fn finish(&mut self) {
        if self.cfg.has(Format::Colmap) {
            self.write_colmap();
        }
    }
}

/// Runs the sink until the event stream ends.
pub fn run(
    events: &mut EventStream,
    inputs: Vec<String>,
    default_camera: &str,
    cfg: Config,
) -> Result<Exporter> {
    let mut exporter = Exporter::new(cfg)?;
    let mut grouper = Grouper::new(inputs, default_camera);
    for_each_input(events, |step| {
        let ready = match step {
            Step::Input { id, params, data } => match decode(data.as_ref(), &params) {
                Ok(item) => grouper.push(&id, item),
                Err(e) => {
                    exporter.rejected += 1;
                    tracing::warn!("input `{id}`: message rejected: {e:#}");
                    Vec::new()
                }
            },
            Step::Closed(id) => grouper.input_closed(&id),
            _ => Vec::new(),
        };
        for f in &ready {
            exporter.handle(f);
        }
        Ok(())
    })?;
    for f in &grouper.finish() {
        exporter.handle(f);
    }
    exporter.finish();
    tracing::info!(
        "depth-export: {} frames written, {} skipped (EVERY), {} without depth, {} messages rejected, {} write errors",
        exporter.written,
        exporter.skipped,
        grouper.dropped_without_depth,
        exporter.rejected,
        exporter.errors
    );
    Ok(exporter)
}

/// Entry point of the `depth-export` binary.
pub fn lib_main() -> Result<()> {
    let (cfg, node, mut events) = start("depth-export", Config::from_env)?;
    let inputs = da3_msg::node_util::input_ids(&node);
    let default_camera = node.id().to_string();
    let exporter = run(&mut events, inputs, &default_camera, cfg)?;
    if exporter.errors > 0 {
        return Err(eyre!(
            "depth-export: {} files could not be written",
            exporter.errors
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::sample_frame;

    fn cfg(dir: &std::path::Path, formats: &str) -> Config {
        Config {
            out_dir: dir.to_path_buf(),
            formats: parse_formats(formats).unwrap(),
            every: 1,
            colmap_every: 2,
            conf_percentile: 40.0,
            colmap_max_points: 1000,
        }
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_format_and_every_nth() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), "npz,png16,vis,ply,colmap,glb");
        c.every = 2;
        let mut ex = Exporter::new(c).unwrap();
        for id in 0..3 {
            let mut f = sample_frame();
            f.frame_id = id;
            ex.handle(&f);
        }
        ex.finish();
        assert_eq!((ex.written, ex.skipped, ex.errors), (2, 1, 0));
        let mut want = vec!["colmap".to_string()];
        for id in [0, 2] {
            for ext in ["glb", "json", "npz", "ply", "png"] {
                want.push(format!("cam_a_{id:06}.{ext}"));
            }
            want.push(format!("cam_a_{id:06}_vis.png"));
        }
        want.sort();
        assert_eq!(names(dir.path()), want);
        let imgs = std::fs::read_to_string(dir.path().join("colmap/images.txt")).unwrap();
        assert_eq!(colmap::parse_images_txt(&imgs).unwrap().len(), 2);
        assert_eq!(
            names(&dir.path().join("colmap")),
            ["cameras.txt", "images.txt", "points3D.txt"]
        );
    }

    #[test]
    fn config_errors_are_one_line() {
        // Env vars are process-wide: only this test touches these names.
        std::env::set_var("FORMATS", "npz,bogus");
        let e = Config::from_env().unwrap_err().to_string();
        assert!(e.contains("invalid FORMATS"), "{e}");
        std::env::set_var("FORMATS", "ply");
        std::env::set_var("EVERY", "0");
        let e = Config::from_env().unwrap_err().to_string();
        assert!(e.contains("invalid EVERY=0"), "{e}");
        std::env::set_var("EVERY", "x");
        let e = Config::from_env().unwrap_err().to_string();
        assert!(e.contains("invalid EVERY=\"x\""), "{e}");
        std::env::remove_var("EVERY");
        let c = Config::from_env().unwrap();
        assert_eq!(c.formats, [Format::Ply]);
        assert_eq!(c.out_dir, PathBuf::from("out/export"));
        std::env::remove_var("FORMATS");
        assert_eq!(
            Config::from_env().unwrap().formats,
            [Format::Npz, Format::Png16]
        );
    }

    #[test]
    fn decode_routes_by_primitive() {
        let f = sample_frame();
        let (a, p) = f.depth.to_message();
        assert!(matches!(decode(a.as_ref(), &p).unwrap(), Item::Depth(_)));
        let (a, p) = f.confidence.unwrap().to_message();
        assert!(matches!(
            decode(a.as_ref(), &p).unwrap(),
            Item::Confidence(_)
        ));
        let img = da3_msg::ImageFrame::rgb8(1, 1, vec![1, 2, 3]);
        let (a, p) = img.to_message();
        assert!(matches!(decode(a.as_ref(), &p).unwrap(), Item::Image(_)));
        // The colour-mapped depth is told by its metadata, not by an input name.
        let vis = da3_msg::DepthVis {
            frame: img,
            colormap: da3_msg::message::COLORMAP_TURBO.into(),
        };
        let (a, p) = vis.to_message();
        assert!(matches!(decode(a.as_ref(), &p).unwrap(), Item::Vis(_)));
        let mut p2 = p.clone();
        p2.insert(
            da3_msg::keys::PRIMITIVE.into(),
            da3_msg::Parameter::String("what".into()),
        );
        assert!(decode(a.as_ref(), &p2).is_err());
        let (a, p) = da3_msg::Status {
            json: serde_json::json!({"type": "stats"}),
        }
        .to_message();
        assert!(decode(a.as_ref(), &p).is_err());
    }
}
