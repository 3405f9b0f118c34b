//! The two recording containers behind one interface: Arrow IPC streams
//! ([`crate::recording`], `.arrows`) and MCAP ([`crate::mcap_recording`],
//! `.mcap`). Readers tell them apart by their first bytes, not their names.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use da3_msg::arrow::array::Array;
use da3_msg::MetadataParameters;
use eyre::{Context, Result};

use crate::mcap_recording::{self, Compression, McapRecordingReader, McapRecordingWriter};
use crate::recording::{self, RecordedMessage, RecordingReader, RecordingWriter};

/// A recording container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Arrow IPC stream (`.arrows`).
    Arrow,
    /// MCAP with Foxglove schemas (`.mcap`).
    Mcap,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "arrow" | "arrows" => Some(Self::Arrow),
            "mcap" => Some(Self::Mcap),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Arrow => "arrow",
            Self::Mcap => "mcap",
        }
    }

    /// The file extension of recordings of this format.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Arrow => recording::EXTENSION,
            Self::Mcap => mcap_recording::EXTENSION,
        }
    }

    /// The format a file name's extension says, if any.
    pub fn of_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?;
        [Self::Arrow, Self::Mcap]
            .into_iter()
            .find(|f| f.extension().eq_ignore_ascii_case(ext))
    }

    /// The format of an existing file: MCAP when it starts with the MCAP
    /// magic (or, too short to tell, is named `.mcap`), else Arrow.
    pub fn of_file(path: &Path) -> Result<Self> {
        let mut head = Vec::with_capacity(8);
        File::open(path)
            .wrap_err_with(|| format!("cannot open recording `{}`", path.display()))?
            .take(8)
            .read_to_end(&mut head)
            .wrap_err_with(|| format!("cannot read `{}`", path.display()))?;
        let mcap_named = Self::of_extension(path) == Some(Self::Mcap);
        Ok(
            if head[..] == mcap_recording::MAGIC[..] || (head.len() < 8 && mcap_named) {
                Self::Mcap
            } else {
                Self::Arrow
            },
        )
    }
}

/// A recording being written, in either format.
pub enum AnyWriter {
    Arrow(Box<RecordingWriter<BufWriter<File>>>),
    Mcap(Box<McapRecordingWriter<BufWriter<File>>>),
}

impl AnyWriter {
    /// Creates (or truncates) `path`. `compression` applies to MCAP.
    pub fn create(path: &Path, format: Format, compression: Compression) -> Result<Self> {
        Ok(match format {
            Format::Arrow => Self::Arrow(Box::new(RecordingWriter::create(path)?)),
            Format::Mcap => Self::Mcap(Box::new(McapRecordingWriter::create(path, compression)?)),
        })
    }

    pub fn push(
        &mut self,
        stream: &str,
        recv_ns: i64,
        params: &MetadataParameters,
        data: &dyn Array,
    ) -> Result<u64> {
        match self {
            Self::Arrow(w) => w.push(stream, recv_ns, params, data),
            Self::Mcap(w) => w.push(stream, recv_ns, params, data),
        }
    }

    pub fn pending(&self) -> usize {
        match self {
            Self::Arrow(w) => w.pending(),
            Self::Mcap(w) => w.pending(),
        }
    }

    pub fn pending_bytes(&self) -> usize {
        match self {
            Self::Arrow(w) => w.pending_bytes(),
            Self::Mcap(w) => w.pending_bytes(),
        }
    }

    pub fn written(&self) -> u64 {
        match self {
            Self::Arrow(w) => w.written(),
            Self::Mcap(w) => w.written(),
        }
    }

    pub fn bytes_written(&self) -> u64 {
        match self {
            Self::Arrow(w) => w.bytes_written(),
            Self::Mcap(w) => w.bytes_written(),
        }
    }

    /// Writes the pending messages (a batch, a chunk) and flushes the file.
    pub fn flush(&mut self) -> Result<()> {
        match self {
            Self::Arrow(w) => w.flush(),
            Self::Mcap(w) => w.flush(),
        }
    }

    /// `fsync`s the file (after a flush).
    pub fn sync(&mut self) -> Result<()> {
        match self {
            Self::Arrow(w) => w.sync(),
            Self::Mcap(w) => w.sync(),
        }
    }

    /// Flushes and ends the file (Arrow: end-of-stream marker; MCAP: summary and footer).
    pub fn finish(self) -> Result<()> {
        match self {
            Self::Arrow(w) => (*w).finish().map(drop),
            Self::Mcap(w) => (*w).finish().map(drop),
        }
    }
}

/// A recording being read, in either format: one `Result` per message.
pub enum AnyReader {
    Arrow(RecordingReader<BufReader<File>>),
    Mcap(McapRecordingReader<BufReader<File>>),
}

impl AnyReader {
    /// Opens a recording of either format (see [`Format::of_file`]).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(match Format::of_file(path)? {
            Format::Arrow => Self::Arrow(RecordingReader::open(path)?),
            Format::Mcap => Self::Mcap(McapRecordingReader::open(path)?),
        })
    }

    pub fn format(&self) -> Format {
        match self {
            Self::Arrow(_) => Format::Arrow,
            Self::Mcap(_) => Format::Mcap,
        }
    }

    /// Why reading stopped early, when the file is cut short or damaged.
    pub fn truncated(&self) -> Option<&str> {
        match self {
            Self::Arrow(r) => r.truncated(),
            Self::Mcap(r) => r.truncated(),
        }
    }

    /// MCAP: the `da3.Record` messages read so far (none in an MCAP file
    /// the recorder did not write); Arrow: `None`.
    pub fn mcap_records(&self) -> Option<u64> {
        match self {
            Self::Arrow(_) => None,
            Self::Mcap(r) => Some(r.records()),
        }
    }
}

impl Iterator for AnyReader {
    type Item = Result<RecordedMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Arrow(r) => r.next(),
            Self::Mcap(r) => r.next(),
        }
    }
}
