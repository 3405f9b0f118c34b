//! `recorder`: a dora sink that records every message of every input (payload,
//! typed metadata, receive time) to Arrow IPC stream files ([`recording`]) or
//! MCAP files with Foxglove schemas ([`mcap_recording`], [`foxglove_map`]);
//! both are this crate's library modules, also read by the `replay` node
//! (through [`format::AnyReader`]), which sends the messages again.
//!
//! See `nodes/recorder/README.md` for ports, env vars and a YAML snippet.

pub mod format;
pub mod foxglove_map;
pub mod mcap_messages;
pub mod mcap_recording;
pub mod recording;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use da3_msg::arrow::array::Array;
use da3_msg::node_util::{next_step, now_ns, start, Env, Step};
use da3_msg::MetadataParameters;
use dora_node_api::EventStream;
use eyre::{bail, eyre, Context, Result};
use format::{AnyWriter, Format};
use mcap_recording::Compression;

/// A batch is also written once its messages reach this many bytes.
pub const BATCH_MAX_BYTES: usize = 64 << 20;

/// Where recordings go.
#[derive(Debug, Clone, PartialEq)]
pub enum OutTarget {
    /// A folder: files are named `rec-<UTC time>.arrows` (or `.mcap`).
    Folder(PathBuf),
    /// One file path (replaced if it exists).
    File(PathBuf),
}

/// Node configuration, from env vars.
#[derive(Debug, Clone)]
pub struct Config {
    pub out: OutTarget,
    /// The container: Arrow IPC or MCAP.
    pub format: Format,
    /// Chunk compression of MCAP files.
    pub compression: Compression,
    pub flush: Duration,
    pub batch: usize,
    pub rotate_bytes: Option<u64>,
    pub rotate_after: Option<Duration>,
    pub sync: bool,
}

/// The env vars the recorder reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[&[
    "OUT",
    "RECORD_FORMAT",
    "MCAP_COMPRESSION",
    "FLUSH_MS",
    "BATCH",
    "ROTATE_MB",
    "ROTATE_S",
    "SYNC",
]];

impl Config {
    /// Reads the env vars; any invalid value is one clear error line.
    pub fn from_env() -> Result<Self> {
        let env = Env::new(ENV_VARS);
        let out: String = env.opt("OUT")?.ok_or_else(|| {
            eyre!(
                "OUT is not set: give a recording file (`run.arrows`, `run.mcap`) or a folder (`recordings/`)"
            )
        })?;
        let out = parse_out(&out);
        let format = match env.opt::<String>("RECORD_FORMAT")? {
            None => None,
            Some(f) => Some(
                Format::parse(&f)
                    .ok_or_else(|| eyre!("invalid RECORD_FORMAT={f:?}: expected arrow or mcap"))?,
            ),
        };
        let format = pick_format(&out, format)?;
        let compression = match env.opt::<String>("MCAP_COMPRESSION")? {
            None => Compression::Zstd,
            Some(_) if format == Format::Arrow => {
                bail!("MCAP_COMPRESSION applies to MCAP recordings only (RECORD_FORMAT=mcap or OUT=*.mcap)")
            }
            Some(c) => Compression::parse(&c).ok_or_else(|| {
                eyre!("invalid MCAP_COMPRESSION={c:?}: expected zstd, lz4 or none")
            })?,
        };
        let flush_ms: u64 = env.or("FLUSH_MS", 500)?;
        let batch: usize = env.or("BATCH", 64)?;
        if batch == 0 {
            bail!("invalid BATCH=0: must be at least 1");
        }
        let rotate_mb: Option<f64> = env.opt("ROTATE_MB")?;
        let rotate_bytes = match rotate_mb {
            None => None,
            Some(m) if m > 0.0 && m.is_finite() => Some((m * 1024.0 * 1024.0) as u64),
            Some(m) => bail!("invalid ROTATE_MB={m}: must be > 0"),
        };
        let rotate_s: Option<f64> = env.opt("ROTATE_S")?;
        let rotate_after = match rotate_s {
            None => None,
            Some(s) if s > 0.0 && s.is_finite() => Some(Duration::from_secs_f64(s)),
            Some(s) => bail!("invalid ROTATE_S={s}: must be > 0"),
        };
        let sync = env.flag("SYNC", false)?;
        env.finish();
        Ok(Self {
            out,
            format,
            compression,
            flush: Duration::from_millis(flush_ms),
            batch,
            rotate_bytes,
            rotate_after,
            sync,
        })
    }

    fn rotates(&self) -> bool {
        self.rotate_bytes.is_some() || self.rotate_after.is_some()
    }
}

/// `OUT`: an existing folder or a path ending in `/` is a folder, else a file.
pub fn parse_out(s: &str) -> OutTarget {
    let p = PathBuf::from(s);
    if s.ends_with('/') || s.ends_with(std::path::MAIN_SEPARATOR) || p.is_dir() {
        OutTarget::Folder(p)
    } else {
        OutTarget::File(p)
    }
}

/// The format of `RECORD_FORMAT` (`format`) and `OUT`: a file named `.mcap` or
/// `.arrows` says its format, and `RECORD_FORMAT` may not contradict it; otherwise
/// `RECORD_FORMAT`, by default Arrow.
pub fn pick_format(out: &OutTarget, format: Option<Format>) -> Result<Format> {
    let by_name = match out {
        OutTarget::File(p) => Format::of_extension(p),
        OutTarget::Folder(_) => None,
    };
    match (by_name, format) {
        (Some(n), Some(f)) if n != f => bail!(
            "RECORD_FORMAT={} but OUT names a .{} file: drop RECORD_FORMAT or change the extension",
            f.as_str(),
            n.extension()
        ),
        (Some(n), _) => Ok(n),
        (None, f) => Ok(f.unwrap_or(Format::Arrow)),
    }
}

/// Names the files of one recorder run.
#[derive(Debug, Clone)]
pub struct FileNamer {
    dir: PathBuf,
    stem: String,
    ext: String,
    numbered: bool,
}

impl FileNamer {
    /// `start` names folder recordings; `numbered` (rotation on) adds `-0000`, `-0001`...;
    /// `ext`: the extension of folder recordings (and of a file named without one).
    pub fn new(
        out: &OutTarget,
        start: chrono::DateTime<chrono::Utc>,
        numbered: bool,
        ext: &str,
    ) -> Self {
        match out {
            OutTarget::Folder(dir) => {
                let base = format!("rec-{}", start.format("%Y%m%dT%H%M%SZ"));
                let mut namer = Self {
                    dir: dir.clone(),
                    stem: base.clone(),
                    ext: ext.to_string(),
                    numbered,
                };
                // Never overwrite a recording started in the same second.
                let mut k = 2;
                while namer.path(0).exists() {
                    namer.stem = format!("{base}-{k}");
                    k += 1;
                }
                namer
            }
            OutTarget::File(p) => Self {
                dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
                stem: p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "rec".into()),
                ext: p
                    .extension()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| ext.to_string()),
                numbered,
            },
        }
    }

    /// Path of file number `index`.
    pub fn path(&self, index: u32) -> PathBuf {
        let name = if self.numbered {
            format!("{}-{index:04}.{}", self.stem, self.ext)
        } else {
            format!("{}.{}", self.stem, self.ext)
        };
        self.dir.join(name)
    }
}

struct OpenFile {
    path: PathBuf,
    writer: AnyWriter,
    opened: Instant,
}

/// The recording logic, independent of dora (the node feeds it).
pub struct Recorder {
    config: Config,
    namer: FileNamer,
    index: u32,
    file: Option<OpenFile>,
    first_pending: Option<Instant>,
    /// Messages received per input id.
    pub received: BTreeMap<String, u64>,
    /// Messages written to complete batches, all files.
    pub written: u64,
    /// Messages that could not be encoded (logged, left out of the recording).
    pub rejected: u64,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
}

impl Recorder {
    /// Opens the first file.
    pub fn new(config: Config) -> Result<Self> {
        if let OutTarget::Folder(d) = &config.out {
            std::fs::create_dir_all(d)
                .wrap_err_with(|| format!("cannot create OUT folder `{}`", d.display()))?;
        }
        let namer = FileNamer::new(
            &config.out,
            chrono::Utc::now(),
            config.rotates(),
            config.format.extension(),
        );
        let mut r = Self {
            config,
            namer,
            index: 0,
            file: None,
            first_pending: None,
            received: BTreeMap::new(),
            written: 0,
            rejected: 0,
            files: Vec::new(),
        };
        r.open()?;
        Ok(r)
    }

    fn open(&mut self) -> Result<()> {
        let path = self.namer.path(self.index);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .wrap_err_with(|| format!("cannot create folder `{}`", dir.display()))?;
        }
        let writer = AnyWriter::create(&path, self.config.format, self.config.compression)?;
        tracing::info!("recorder: writing {}", path.display());
        self.files.push(path.clone());
        self.file = Some(OpenFile {
            path,
            writer,
            opened: Instant::now(),
        });
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            let n = f.writer.written() + f.writer.pending() as u64;
            self.written += n;
            f.writer
                .finish()
                .wrap_err_with(|| format!("cannot close {}", f.path.display()))?;
            self.first_pending = None;
            tracing::info!("recorder: closed {} ({n} messages)", f.path.display());
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        self.close()?;
        self.index += 1;
        self.open()
    }

    /// Records one message received now.
    pub fn record(
        &mut self,
        stream: &str,
        recv_ns: i64,
        params: &MetadataParameters,
        data: &dyn Array,
    ) -> Result<()> {
        *self.received.entry(stream.to_string()).or_default() += 1;
        if let (Some(limit), Some(f)) = (self.config.rotate_after, &self.file) {
            let has = f.writer.written() + f.writer.pending() as u64 > 0;
            if has && f.opened.elapsed() >= limit {
                self.rotate()?;
            }
        }
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| eyre!("recorder is closed"))?;
        // Only encoding can fail here (no I/O): one message that cannot be
        // encoded is left out, not the end of the recording.
        if let Err(e) = f.writer.push(stream, recv_ns, params, data) {
            self.rejected += 1;
            tracing::warn!("recorder: message on `{stream}` left out: {e:#}");
            return Ok(());
        }
        if self.first_pending.is_none() {
            self.first_pending = Some(Instant::now());
        }
        if f.writer.pending() >= self.config.batch || f.writer.pending_bytes() >= BATCH_MAX_BYTES {
            self.flush()?;
        }
        if let (Some(limit), Some(f)) = (self.config.rotate_bytes, &self.file) {
            if f.writer.bytes_written() + f.writer.pending_bytes() as u64 >= limit {
                self.rotate()?;
            }
        }
        Ok(())
    }

    /// When the pending messages must be flushed (`None`: nothing pending).
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.first_pending.map(|t| t + self.config.flush)
    }

    /// Writes the pending messages as a batch and flushes the file.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.writer
                .flush()
                .wrap_err_with(|| format!("cannot write {}", f.path.display()))?;
            if self.config.sync {
                f.writer.sync()?;
            }
        }
        self.first_pending = None;
        Ok(())
    }

    /// Flushes when the flush deadline has passed.
    pub fn tick(&mut self) -> Result<()> {
        if self.flush_deadline().is_some_and(|d| Instant::now() >= d) {
            self.flush()?;
        }
        Ok(())
    }

    /// Flushes and closes the current file.
    pub fn finish(&mut self) -> Result<()> {
        self.close()
    }
}

/// Runs the node until the event stream ends, in arrival order.
pub fn run(events: &mut EventStream, config: Config) -> Result<Recorder> {
    let mut rec = Recorder::new(config)?;
    loop {
        // In arrival order; the wait wakes us up to flush on time.
        let wait = rec
            .flush_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match next_step(events, Some(wait)) {
            Step::End => break,
            Step::Input { id, params, data } => {
                let recv_ns = now_ns() as i64;
                rec.record(&id, recv_ns, &params, data.as_ref())?;
            }
            Step::Closed(id) => tracing::debug!("input {id} closed"),
            Step::Timeout => {}
        }
        rec.tick()?;
    }
    rec.finish()?;
    Ok(rec)
}

/// Entry point of the `recorder` binary.
pub fn lib_main() -> Result<()> {
    let (config, _node, mut events) = start("recorder", Config::from_env)?;
    let rec = run(&mut events, config)?;
    let total: u64 = rec.received.values().sum();
    let per: Vec<String> = rec
        .received
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let files: Vec<String> = rec.files.iter().map(|p| p.display().to_string()).collect();
    tracing::info!(
        "recorder: {total} messages in ({}), {} written to {} file(s), {} left out: {}",
        per.join(", "),
        rec.written,
        files.len(),
        rec.rejected,
        files.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::AnyReader;
    use da3_msg::ImageFrame;

    fn config(out: OutTarget) -> Config {
        let format = pick_format(&out, None).unwrap();
        Config {
            out,
            format,
            compression: Compression::Zstd,
            flush: Duration::from_millis(500),
            batch: 4,
            rotate_bytes: None,
            rotate_after: None,
            sync: false,
        }
    }

    fn frame(i: u64) -> (da3_msg::arrow::array::ArrayRef, MetadataParameters) {
        let mut f = ImageFrame::rgb8(8, 8, vec![i as u8; 192]);
        f.info.frame_id = Some(i);
        f.to_message()
    }

    #[test]
    fn out_folder_or_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(parse_out("recs/"), OutTarget::Folder("recs/".into()));
        let p = d.path().display().to_string();
        assert_eq!(parse_out(&p), OutTarget::Folder(p.clone().into()));
        assert_eq!(
            parse_out("a/b.arrows"),
            OutTarget::File("a/b.arrows".into())
        );
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let n = FileNamer::new(&OutTarget::Folder(d.path().into()), t, false, "arrows");
        assert_eq!(n.path(0), d.path().join("rec-20260102T030405Z.arrows"));
        std::fs::write(n.path(0), b"").unwrap();
        let n2 = FileNamer::new(&OutTarget::Folder(d.path().into()), t, true, "arrows");
        assert_eq!(
            n2.path(3),
            d.path().join("rec-20260102T030405Z-0003.arrows")
        );
        let n3 = FileNamer::new(&OutTarget::Folder(d.path().into()), t, false, "arrows");
        assert_eq!(n3.path(0), d.path().join("rec-20260102T030405Z-2.arrows"));
        let f = FileNamer::new(&OutTarget::File("x/run.arrows".into()), t, true, "arrows");
        assert_eq!(f.path(1), PathBuf::from("x/run-0001.arrows"));
        let m = FileNamer::new(&OutTarget::Folder(d.path().into()), t, false, "mcap");
        assert_eq!(m.path(0), d.path().join("rec-20260102T030405Z.mcap"));
    }

    #[test]
    fn format_from_the_file_name_or_record_format() {
        let file = |n: &str| OutTarget::File(n.into());
        let dir = OutTarget::Folder("recs/".into());
        assert_eq!(pick_format(&file("a.mcap"), None).unwrap(), Format::Mcap);
        assert_eq!(pick_format(&file("a.MCAP"), None).unwrap(), Format::Mcap);
        assert_eq!(pick_format(&file("a.arrows"), None).unwrap(), Format::Arrow);
        assert_eq!(pick_format(&file("a.bin"), None).unwrap(), Format::Arrow);
        assert_eq!(pick_format(&dir, None).unwrap(), Format::Arrow);
        assert_eq!(pick_format(&dir, Some(Format::Mcap)).unwrap(), Format::Mcap);
        assert_eq!(
            pick_format(&file("a.bin"), Some(Format::Mcap)).unwrap(),
            Format::Mcap
        );
        let e = pick_format(&file("a.mcap"), Some(Format::Arrow)).unwrap_err();
        assert!(e.to_string().contains("RECORD_FORMAT=arrow"), "{e}");
    }

    #[test]
    fn batches_and_rotation_by_size() {
        for ext in ["arrows", "mcap"] {
            batches_and_rotation_by_size_in(ext);
        }
    }

    fn batches_and_rotation_by_size_in(ext: &str) {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(OutTarget::File(d.path().join(format!("r.{ext}"))));
        c.rotate_bytes = Some(2000);
        let mut r = Recorder::new(c).unwrap();
        for i in 0..20 {
            let (a, p) = frame(i);
            r.record("image", i as i64, &p, a.as_ref()).unwrap();
        }
        r.finish().unwrap();
        assert!(r.files.len() > 2, "{:?}", r.files);
        assert_eq!(r.written, 20);
        let mut ids = vec![];
        for f in &r.files {
            assert!(f.file_name().unwrap().to_str().unwrap().starts_with("r-0"));
            assert_eq!(f.extension().unwrap(), ext);
            let r = AnyReader::open(f).unwrap();
            assert_eq!(r.format().extension(), ext);
            for m in r {
                let m = m.unwrap();
                let img = ImageFrame::from_message(m.data.as_ref(), &m.metadata).unwrap();
                assert_eq!(img.data[0] as u64, img.info.frame_id.unwrap());
                ids.push(img.info.frame_id.unwrap());
            }
        }
        assert_eq!(ids, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn flush_deadline_and_unflushed_file_is_readable() {
        for ext in ["arrows", "mcap"] {
            flush_deadline_and_unflushed_file_is_readable_in(ext);
        }
    }

    fn flush_deadline_and_unflushed_file_is_readable_in(ext: &str) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(format!("r.{ext}"));
        let mut c = config(OutTarget::File(path.clone()));
        c.batch = 100;
        c.flush = Duration::from_millis(20);
        let mut r = Recorder::new(c).unwrap();
        for i in 0..3 {
            let (a, p) = frame(i);
            r.record("image", 0, &p, a.as_ref()).unwrap();
        }
        assert!(r.flush_deadline().is_some());
        // Not flushed yet: the file has the schema (header) only.
        assert_eq!(AnyReader::open(&path).unwrap().count(), 0);
        std::thread::sleep(Duration::from_millis(30));
        r.tick().unwrap();
        assert!(r.flush_deadline().is_none());
        // Flushed but not finished (as after kill -9): all 3 readable.
        let mut r2 = AnyReader::open(&path).unwrap();
        assert_eq!(r2.by_ref().filter(|m| m.is_ok()).count(), 3);
        if ext == "mcap" {
            assert!(r2.truncated().is_some(), "no summary yet: reported as cut");
        }
        r.finish().unwrap();
    }

    #[test]
    fn rotation_by_time() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(OutTarget::Folder(d.path().join("recs")));
        c.rotate_after = Some(Duration::from_millis(30));
        let mut r = Recorder::new(c).unwrap();
        for i in 0..4 {
            let (a, p) = frame(i);
            r.record("image", 0, &p, a.as_ref()).unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
        r.finish().unwrap();
        assert_eq!(r.files.len(), 4);
        for f in &r.files {
            assert_eq!(AnyReader::open(f).unwrap().count(), 1);
        }
    }
}
