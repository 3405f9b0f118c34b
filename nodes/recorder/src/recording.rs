//! The recording format of the `recorder` node, read back by `replay`
//! (which depends on this crate for it).
//!
//! A recording is one Arrow IPC **stream** file (`.arrows`), readable as is by
//! `pyarrow.ipc.open_stream`, polars (`pl.read_ipc_stream`) or DuckDB. Each
//! record batch holds some messages, one row each:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `stream` | Utf8 | the input id the message arrived on |
//! | `seq` | UInt64 | arrival order in this file, from 0 |
//! | `recv_ns` | Int64 | receive time, nanoseconds since the UNIX epoch |
//! | `metadata` | Utf8 | the message's `MetadataParameters` as typed JSON: `{"frame_id": {"Integer": 5}}` |
//! | `arrow_type` | Utf8 | the payload's Arrow type, as displayed by Arrow (`UInt8`, `Float32`, `Struct(...)`) |
//! | `payload` | LargeBinary | the payload array as an Arrow IPC stream of a one-column batch (column `data`) |
//!
//! The payload encoding keeps any Arrow type (primitive, Utf8, Struct, nested)
//! and its values byte for byte; the typed metadata JSON keeps every
//! `Parameter` variant, so a replay restores messages exactly. (A `Float`
//! metadata value that is NaN or infinite cannot be stored in JSON and is
//! written as `null`: such a message is reported as undecodable on read.)
//!
//! The writer appends one batch per [`RecordingWriter::flush`] and flushes the
//! file, so a killed recorder loses at most the messages not yet flushed; the
//! reader stops at the last complete batch of a truncated file with a warning.

use std::fs::File;
use std::io::{BufReader, BufWriter, Cursor, Read, Write};
use std::path::Path;
use std::sync::Arc;

use eyre::{bail, eyre, Context, Result};

use da3_msg::arrow::array::{
    Array, ArrayRef, Int64Array, Int64Builder, LargeBinaryArray, LargeBinaryBuilder, RecordBatch,
    StringArray, StringBuilder, UInt64Array, UInt64Builder,
};
use da3_msg::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use da3_msg::arrow::error::ArrowError;
use da3_msg::arrow::ipc::reader::StreamReader;
use da3_msg::arrow::ipc::writer::StreamWriter;
use da3_msg::MetadataParameters;

/// File extension of recordings.
pub const EXTENSION: &str = "arrows";
/// Schema metadata key naming the format (value [`FORMAT_NAME`]).
pub const FORMAT_KEY: &str = "format";
/// Value of [`FORMAT_KEY`].
pub const FORMAT_NAME: &str = "da3-recording";
/// Schema metadata key of the format version (value [`FORMAT_VERSION`]).
pub const VERSION_KEY: &str = "version";
/// Current format version.
pub const FORMAT_VERSION: &str = "1";

pub const COL_STREAM: &str = "stream";
pub const COL_SEQ: &str = "seq";
pub const COL_RECV_NS: &str = "recv_ns";
pub const COL_METADATA: &str = "metadata";
pub const COL_ARROW_TYPE: &str = "arrow_type";
pub const COL_PAYLOAD: &str = "payload";

/// The schema of every recording batch.
pub fn schema() -> SchemaRef {
    let meta = [
        (FORMAT_KEY.to_string(), FORMAT_NAME.to_string()),
        (VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
    ]
    .into_iter()
    .collect();
    Arc::new(
        Schema::new(vec![
            Field::new(COL_STREAM, DataType::Utf8, false),
            Field::new(COL_SEQ, DataType::UInt64, false),
            Field::new(COL_RECV_NS, DataType::Int64, false),
            Field::new(COL_METADATA, DataType::Utf8, false),
            Field::new(COL_ARROW_TYPE, DataType::Utf8, false),
            Field::new(COL_PAYLOAD, DataType::LargeBinary, false),
        ])
        .with_metadata(meta),
    )
}

/// Encodes one payload array as an Arrow IPC stream of a one-column batch.
pub fn encode_payload(array: &dyn Array) -> Result<Vec<u8>> {
    let array: ArrayRef = da3_msg::arrow::array::make_array(array.to_data());
    let field = Field::new("data", array.data_type().clone(), true);
    let schema = Arc::new(Schema::new(vec![field]));
    let batch = RecordBatch::try_new(schema.clone(), vec![array])
        .wrap_err("cannot wrap the payload in a record batch")?;
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &schema)?;
        w.write(&batch)?;
        w.finish()?;
    }
    Ok(buf)
}

/// Decodes a payload written by [`encode_payload`].
///
/// Any bytes are safe: lengths declared inside the stream are checked against
/// `bytes.len()` before anything is allocated for them (see [`GuardedIpc`]).
pub fn decode_payload(bytes: &[u8]) -> Result<ArrayRef> {
    let guarded = GuardedIpc::new(Cursor::new(bytes), bytes.len() as u64);
    let mut r = no_panic("payload", || StreamReader::try_new(guarded, None))?
        .wrap_err("payload is not an Arrow IPC stream")?;
    let batch = no_panic("payload", || r.next())?
        .ok_or_else(|| eyre!("payload holds no record batch"))?
        .wrap_err("cannot read the payload batch")?;
    if batch.num_columns() != 1 {
        bail!(
            "payload batch has {} columns, expected 1",
            batch.num_columns()
        );
    }
    Ok(batch.column(0).clone())
}

/// Runs an Arrow IPC read, turning a panic into an error.
///
/// arrow-ipc 59 is not hardened against malformed input: on damaged bytes
/// that pass the framing checks of [`GuardedIpc`] it can panic (unsupported
/// type ids in a schema, `unwrap`s on missing flatbuffer fields, validity or
/// offset buffers shorter than the lengths they announce). A damaged recording
/// must give an error, never take the node down, so every IPC read of this
/// module goes through here. (The panic message is still printed by the panic
/// hook.)
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        eyre!("{what}: malformed Arrow IPC data (the Arrow reader gave up: {why})")
    })
}

/// Largest flatbuffer header of one IPC message; real ones are a few KiB.
pub const MAX_IPC_HEADER: u64 = 16 << 20;

/// An Arrow IPC stream read through a check of its framing.
///
/// The Arrow reader allocates what a message's prefix and header announce
/// (up to 2 GiB of header, any `bodyLength` of body) before it reads them, so
/// a few corrupt bytes could make it allocate gigabytes or abort. This reader
/// sits in front of it: at each message boundary it reads the prefix and the
/// header itself, and refuses (an `InvalidData` I/O error, which the Arrow
/// reader reports as an error) a header over [`MAX_IPC_HEADER`], a negative
/// body length, or lengths larger than what is left of the input (`len`: the
/// file or buffer size, `u64::MAX` when unknown). Well-formed streams pass
/// byte for byte.
pub struct GuardedIpc<R: Read> {
    inner: R,
    /// Bytes the input can still deliver (beyond those read from `inner`).
    left: u64,
    /// Prefix and header of the current message, not yet handed out.
    head: Vec<u8>,
    head_pos: usize,
    /// Body bytes of the current message still to pass through.
    body_left: u64,
}

impl<R: Read> GuardedIpc<R> {
    /// `len`: how many bytes `inner` holds at most (`u64::MAX` when unknown).
    pub fn new(inner: R, len: u64) -> Self {
        Self {
            inner,
            left: len,
            head: Vec::new(),
            head_pos: 0,
            body_left: 0,
        }
    }

    /// Reads up to `n` more bytes into `head`; returns how many came.
    fn fill(&mut self, n: usize) -> std::io::Result<usize> {
        let start = self.head.len();
        self.head.resize(start + n, 0);
        let mut got = 0;
        while got < n {
            match self.inner.read(&mut self.head[start + got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.head.truncate(start + got);
                    return Err(e);
                }
            }
        }
        self.head.truncate(start + got);
        self.left = self.left.saturating_sub(got as u64);
        Ok(got)
    }

    /// At a message boundary: reads and checks the next prefix and header.
    fn next_message(&mut self) -> std::io::Result<()> {
        let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        self.head.clear();
        self.head_pos = 0;
        if self.fill(4)? < 4 {
            return Ok(()); // end of input: the Arrow reader decides
        }
        let mut len_at = 0;
        if self.head[..4] == [0xff; 4] {
            len_at = 4;
            if self.fill(4)? < 4 {
                return Ok(());
            }
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.head[len_at..len_at + 4]);
        let meta_len = i32::from_le_bytes(len);
        if meta_len <= 0 {
            return Ok(()); // end-of-stream marker, or an error the Arrow reader reports
        }
        let meta_len = meta_len as u64;
        if meta_len > MAX_IPC_HEADER || meta_len > self.left {
            return Err(invalid(format!(
                "IPC message header of {meta_len} bytes, but at most {} bytes are left",
                self.left.min(MAX_IPC_HEADER)
            )));
        }
        let at = self.head.len();
        if self.fill(meta_len as usize)? < meta_len as usize {
            return Ok(()); // cut short: the Arrow reader reports it
        }
        let message = da3_msg::arrow::ipc::root_as_message(&self.head[at..])
            .map_err(|e| invalid(format!("IPC message header does not parse: {e}")))?;
        let body = message.bodyLength();
        if body < 0 || body as u64 > self.left {
            return Err(invalid(format!(
                "IPC message body of {body} bytes, but only {} bytes are left",
                self.left
            )));
        }
        // Every buffer of a batch must lie inside the body.
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        if let Some(buffers) = batch.and_then(|b| b.buffers()) {
            for b in buffers.iter() {
                let end = b.offset().checked_add(b.length());
                if b.offset() < 0 || b.length() < 0 || end.is_none_or(|e| e > body) {
                    return Err(invalid(format!(
                        "IPC buffer at {} of {} bytes lies outside the {body}-byte message body",
                        b.offset(),
                        b.length()
                    )));
                }
            }
        }
        self.body_left = body as u64;
        Ok(())
    }
}

impl<R: Read> Read for GuardedIpc<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.head_pos >= self.head.len() && self.body_left == 0 {
            self.next_message()?;
        }
        if self.head_pos < self.head.len() {
            let n = out.len().min(self.head.len() - self.head_pos);
            out[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            return Ok(n);
        }
        if self.body_left == 0 {
            return Ok(0);
        }
        let n = (out.len() as u64).min(self.body_left) as usize;
        let k = self.inner.read(&mut out[..n])?;
        self.body_left -= k as u64;
        self.left = self.left.saturating_sub(k as u64);
        Ok(k)
    }
}

/// Typed JSON of metadata parameters (serde of dora's `Parameter`).
pub fn encode_metadata(params: &MetadataParameters) -> Result<String> {
    serde_json::to_string(params).wrap_err("cannot encode metadata as JSON")
}

/// Parses metadata written by [`encode_metadata`].
pub fn decode_metadata(json: &str) -> Result<MetadataParameters> {
    serde_json::from_str(json).wrap_err("metadata column is not typed-parameter JSON")
}

/// One recorded message.
#[derive(Debug, Clone)]
pub struct RecordedMessage {
    pub stream: String,
    pub seq: u64,
    pub recv_ns: i64,
    pub metadata: MetadataParameters,
    pub arrow_type: String,
    pub data: ArrayRef,
}

/// Counts the bytes going through a writer.
pub struct CountingWriter<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> CountingWriter<W> {
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Appends messages to a recording; see the module docs.
pub struct RecordingWriter<W: Write> {
    writer: StreamWriter<CountingWriter<W>>,
    stream: StringBuilder,
    seq: UInt64Builder,
    recv_ns: Int64Builder,
    metadata: StringBuilder,
    arrow_type: StringBuilder,
    payload: LargeBinaryBuilder,
    pending: usize,
    pending_bytes: usize,
    next_seq: u64,
    written: u64,
    batches: u64,
}

impl RecordingWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the schema.
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path)
            .wrap_err_with(|| format!("cannot create recording `{}`", path.display()))?;
        Self::new(BufWriter::with_capacity(1 << 20, f))
    }

    /// `fsync`s the file (after a [`flush`](Self::flush)).
    pub fn sync(&mut self) -> Result<()> {
        self.writer.get_mut().get_ref().get_ref().sync_data()?;
        Ok(())
    }
}

impl<W: Write> RecordingWriter<W> {
    /// Starts a recording on `w`: writes the schema and flushes it.
    pub fn new(w: W) -> Result<Self> {
        let counting = CountingWriter { inner: w, count: 0 };
        let mut writer = StreamWriter::try_new(counting, &schema())
            .wrap_err("cannot write the recording schema")?;
        writer.flush().wrap_err("cannot flush the recording")?;
        Ok(Self {
            writer,
            stream: StringBuilder::new(),
            seq: UInt64Builder::new(),
            recv_ns: Int64Builder::new(),
            metadata: StringBuilder::new(),
            arrow_type: StringBuilder::new(),
            payload: LargeBinaryBuilder::new(),
            pending: 0,
            pending_bytes: 0,
            next_seq: 0,
            written: 0,
            batches: 0,
        })
    }

    /// Adds one message to the current batch; returns its `seq`.
    pub fn push(
        &mut self,
        stream: &str,
        recv_ns: i64,
        params: &MetadataParameters,
        data: &dyn Array,
    ) -> Result<u64> {
        let meta = encode_metadata(params)?;
        let payload =
            encode_payload(data).wrap_err_with(|| format!("cannot encode a `{stream}` payload"))?;
        let seq = self.next_seq;
        self.stream.append_value(stream);
        self.seq.append_value(seq);
        self.recv_ns.append_value(recv_ns);
        self.metadata.append_value(&meta);
        self.arrow_type.append_value(data.data_type().to_string());
        self.pending_bytes += payload.len() + meta.len() + stream.len() + 32;
        self.payload.append_value(&payload);
        self.pending += 1;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Messages in the current, not yet written batch.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Approximate size of the current batch.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Messages written to the file in complete batches.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Batches written.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Bytes written to the file so far.
    pub fn bytes_written(&self) -> u64 {
        self.writer.get_ref().count()
    }

    /// Ends the current batch (if any) and flushes the file.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending > 0 {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(self.stream.finish()),
                Arc::new(self.seq.finish()),
                Arc::new(self.recv_ns.finish()),
                Arc::new(self.metadata.finish()),
                Arc::new(self.arrow_type.finish()),
                Arc::new(self.payload.finish()),
            ];
            let batch = RecordBatch::try_new(schema(), columns)?;
            self.writer
                .write(&batch)
                .wrap_err("cannot write a recording batch")?;
            self.written += self.pending as u64;
            self.batches += 1;
            self.pending = 0;
            self.pending_bytes = 0;
        }
        self.writer.flush().wrap_err("cannot flush the recording")?;
        Ok(())
    }

    /// Flushes, writes the end-of-stream marker and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.flush()?;
        self.writer.finish().wrap_err("cannot end the recording")?;
        let counting = self.writer.into_inner()?;
        Ok(counting.inner)
    }
}

/// One row of a batch, without decoding metadata or payload.
#[derive(Debug, Clone, Copy)]
pub struct RowInfo<'a> {
    pub stream: &'a str,
    pub seq: u64,
    pub recv_ns: i64,
    pub arrow_type: &'a str,
    pub payload_len: usize,
}

struct Columns<'a> {
    stream: &'a StringArray,
    seq: &'a UInt64Array,
    recv_ns: &'a Int64Array,
    metadata: &'a StringArray,
    arrow_type: &'a StringArray,
    payload: &'a LargeBinaryArray,
}

fn columns(batch: &RecordBatch) -> Result<Columns<'_>> {
    fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| eyre!("not a da3 recording: column `{name}` is missing or mistyped"))
    }
    Ok(Columns {
        stream: col(batch, COL_STREAM)?,
        seq: col(batch, COL_SEQ)?,
        recv_ns: col(batch, COL_RECV_NS)?,
        metadata: col(batch, COL_METADATA)?,
        arrow_type: col(batch, COL_ARROW_TYPE)?,
        payload: col(batch, COL_PAYLOAD)?,
    })
}

/// The rows of a recording batch, cheaply (for statistics).
pub fn row_infos(batch: &RecordBatch) -> Result<Vec<RowInfo<'_>>> {
    let c = columns(batch)?;
    Ok((0..batch.num_rows())
        .map(|i| RowInfo {
            stream: c.stream.value(i),
            seq: c.seq.value(i),
            recv_ns: c.recv_ns.value(i),
            arrow_type: c.arrow_type.value(i),
            payload_len: c.payload.value(i).len(),
        })
        .collect())
}

/// Decodes row `i` of a recording batch.
pub fn decode_row(batch: &RecordBatch, i: usize) -> Result<RecordedMessage> {
    let c = columns(batch)?;
    let stream = c.stream.value(i).to_string();
    let seq = c.seq.value(i);
    let metadata = decode_metadata(c.metadata.value(i))
        .wrap_err_with(|| format!("message {seq} on `{stream}`"))?;
    let data = decode_payload(c.payload.value(i))
        .wrap_err_with(|| format!("message {seq} on `{stream}`"))?;
    Ok(RecordedMessage {
        stream,
        seq,
        recv_ns: c.recv_ns.value(i),
        metadata,
        arrow_type: c.arrow_type.value(i).to_string(),
        data,
    })
}

/// Reads a recording batch by batch or message by message; see the module docs.
///
/// Iterating yields one `Result` per message (`Err` for a row that does not
/// decode); a file cut short ends at its last complete batch, with a warning
/// and [`truncated`](Self::truncated) set.
pub struct RecordingReader<R: Read> {
    reader: StreamReader<GuardedIpc<R>>,
    label: String,
    batch: Option<RecordBatch>,
    row: usize,
    truncated: Option<String>,
    done: bool,
    batches: u64,
}

impl RecordingReader<BufReader<File>> {
    /// Opens a recording file.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path)
            .wrap_err_with(|| format!("cannot open recording `{}`", path.display()))?;
        let len = f
            .metadata()
            .wrap_err_with(|| format!("cannot read the size of `{}`", path.display()))?
            .len();
        Self::with_len(
            BufReader::with_capacity(1 << 20, f),
            &path.display().to_string(),
            len,
        )
    }
}

impl<R: Read> RecordingReader<R> {
    /// Reads the schema from `r`; `label` names the source in messages.
    pub fn new(r: R, label: &str) -> Result<Self> {
        Self::with_len(r, label, u64::MAX)
    }

    /// Like [`new`](Self::new) for a source of at most `len` bytes: lengths
    /// declared in the file are checked against it before anything is
    /// allocated for them, so damaged bytes cannot make the reader allocate
    /// more than the file holds.
    pub fn with_len(r: R, label: &str, len: u64) -> Result<Self> {
        let reader = no_panic(label, || StreamReader::try_new(GuardedIpc::new(r, len), None))?
            .map_err(|e| {
                eyre!("`{label}` is not an Arrow IPC stream recording (empty or cut before its schema?): {e}")
            })?;
        let s = reader.schema();
        for (name, ty) in [
            (COL_STREAM, DataType::Utf8),
            (COL_SEQ, DataType::UInt64),
            (COL_RECV_NS, DataType::Int64),
            (COL_METADATA, DataType::Utf8),
            (COL_ARROW_TYPE, DataType::Utf8),
            (COL_PAYLOAD, DataType::LargeBinary),
        ] {
            match s.field_with_name(name) {
                Ok(f) if *f.data_type() == ty => {}
                Ok(f) => bail!(
                    "`{label}` is not a da3 recording: column `{name}` is {}, expected {ty}",
                    f.data_type()
                ),
                Err(_) => bail!("`{label}` is not a da3 recording: no column `{name}`"),
            }
        }
        Ok(Self {
            reader,
            label: label.to_string(),
            batch: None,
            row: 0,
            truncated: None,
            done: false,
            batches: 0,
        })
    }

    /// Why reading stopped early, when the file is truncated or damaged.
    pub fn truncated(&self) -> Option<&str> {
        self.truncated.as_deref()
    }

    /// Complete batches read so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// The next complete batch; `None` at the end (or at a truncated tail).
    pub fn next_batch(&mut self) -> Option<RecordBatch> {
        if self.done {
            return None;
        }
        let next = no_panic(&self.label, || self.reader.next())
            .unwrap_or_else(|e| Some(Err(ArrowError::ExternalError(e.into()))));
        match next {
            Some(Ok(b)) => {
                self.batches += 1;
                Some(b)
            }
            Some(Err(e)) => {
                self.done = true;
                let why = format!(
                    "`{}` ends with an incomplete batch (recorder killed?): read up to its last complete batch ({} batches): {e}",
                    self.label, self.batches
                );
                tracing::warn!("{why}");
                self.truncated = Some(why);
                None
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

impl<R: Read> Iterator for RecordingReader<R> {
    type Item = Result<RecordedMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = &self.batch {
                if self.row < b.num_rows() {
                    let i = self.row;
                    self.row += 1;
                    return Some(decode_row(b, i));
                }
            }
            self.batch = Some(self.next_batch()?);
            self.row = 0;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use da3_msg::arrow::array::StringArray;
    use da3_msg::{
        CameraMsg, DepthKind, DepthMap, FrameInfo, ImageFrame, Intrinsics, Parameter, PointCloud,
        Pose,
    };

    fn info(i: u64) -> FrameInfo {
        FrameInfo {
            frame_id: Some(i),
            stamp_ns: Some(1_700_000_000_000_000_000 + i),
            camera: Some("cam".into()),
            last: i == 4,
        }
    }

    /// One message of every kind (image, depth, confidence, camera, points,
    /// a status with every metadata type); also used by the MCAP tests.
    pub(crate) fn messages() -> Vec<(String, MetadataParameters, ArrayRef)> {
        let mut out = Vec::new();
        let mut img = ImageFrame::rgb8(4, 3, (0..36).collect());
        img.info = info(0);
        img.intrinsics = Some(Intrinsics {
            fx: 3.0,
            fy: 3.5,
            cx: 2.0,
            cy: 1.5,
        });
        let (a, p) = img.to_message();
        out.push(("image".to_string(), p, a));
        let depth = DepthMap {
            kind: DepthKind::Depth,
            width: 3,
            height: 2,
            values: vec![0.5, 1.0, f32::NAN, -0.0, 1e-30, f32::INFINITY],
            info: info(1),
            intrinsics: None,
            pose: Some(Pose {
                position: [1.0, 2.0, 3.0],
                orientation: [0.0, 0.0, 0.0, 1.0],
            }),
            is_metric: true,
        };
        let (a, p) = depth.to_message();
        out.push(("depth".to_string(), p, a));
        let mut conf = depth.clone();
        conf.kind = DepthKind::Confidence;
        let (a, p) = conf.to_message();
        out.push(("confidence".to_string(), p, a));
        let cam = CameraMsg {
            extrinsics: [1.0, 0.0, 0.0, 0.1, 0.0, 1.0, 0.0, 0.2, 0.0, 0.0, 1.0, 0.3],
            intrinsics: [100.0, 0.0, 32.0, 0.0, 100.0, 24.0, 0.0, 0.0, 1.0],
            width: 64,
            height: 48,
            info: info(2),
            is_metric: false,
        };
        let (a, p) = cam.to_message();
        out.push(("camera".to_string(), p, a));
        let pts = PointCloud {
            xyz: vec![[1.0, 2.0, 3.0], [-1.0, 0.5, 7.0]],
            rgb: vec![[255, 0, 10], [1, 2, 3]],
            info: info(3),
            is_metric: true,
        };
        let (a, p) = pts.to_message();
        out.push(("points".to_string(), p, a));
        let mut p = MetadataParameters::new();
        p.insert("n".into(), Parameter::Integer(-5));
        p.insert("ok".into(), Parameter::Bool(true));
        p.insert("f".into(), Parameter::Float(0.1));
        p.insert("li".into(), Parameter::ListInt(vec![1, -2]));
        p.insert(
            "ls".into(),
            Parameter::ListString(vec!["a".into(), "".into()]),
        );
        p.insert("lf".into(), Parameter::ListFloat(vec![1e300, -0.0]));
        let ts: Parameter =
            serde_json::from_str(r#"{"Timestamp":"2026-11-21T08:09:07.123456789Z"}"#).unwrap();
        assert!(matches!(ts, Parameter::Timestamp(_)));
        p.insert("t".into(), ts);
        let a: ArrayRef = Arc::new(StringArray::from(vec![r#"{"fps": 12.5}"#]));
        out.push(("status".to_string(), p, a));
        out
    }

    pub(crate) fn bytes_of(a: &dyn Array) -> Vec<Vec<u8>> {
        let d = a.to_data();
        let mut v: Vec<Vec<u8>> = d.buffers().iter().map(|b| b.as_slice().to_vec()).collect();
        for c in d.child_data() {
            v.extend(bytes_of(&da3_msg::arrow::array::make_array(c.clone())));
        }
        v
    }

    /// `got` holds `msgs`, pushed at recv_ns 1000 + i, exactly: stream, seq, time, metadata,
    /// Arrow type, values and bytes; typed back into the da3 messages (both formats' tests).
    pub(crate) fn assert_round_trip(
        got: &[RecordedMessage],
        msgs: &[(String, MetadataParameters, ArrayRef)],
    ) {
        assert_eq!(got.len(), msgs.len());
        for (i, (m, (s, p, a))) in got.iter().zip(msgs).enumerate() {
            assert_eq!(&m.stream, s);
            assert_eq!(m.seq, i as u64);
            assert_eq!(m.recv_ns, 1000 + i as i64);
            assert_eq!(&m.metadata, p, "{s}: metadata");
            assert_eq!(m.data.data_type(), a.data_type(), "{s}");
            assert_eq!(m.arrow_type, a.data_type().to_string());
            assert_eq!(m.data.len(), a.len());
            assert_eq!(m.data.to_data(), a.to_data(), "{s}: values");
            assert_eq!(
                bytes_of(m.data.as_ref()),
                bytes_of(a.as_ref()),
                "{s}: bytes"
            );
        }
        let img = ImageFrame::from_message(got[0].data.as_ref(), &got[0].metadata).unwrap();
        assert_eq!(img.data, (0..36).collect::<Vec<u8>>());
        let pts = PointCloud::from_message(got[4].data.as_ref(), &got[4].metadata).unwrap();
        assert_eq!(pts.rgb[0], [255, 0, 10]);
    }

    fn write_all(msgs: &[(String, MetadataParameters, ArrayRef)], batch: usize) -> Vec<u8> {
        let mut w = RecordingWriter::new(Vec::new()).unwrap();
        for (i, (s, p, a)) in msgs.iter().enumerate() {
            assert_eq!(w.push(s, 1000 + i as i64, p, a.as_ref()).unwrap(), i as u64);
            if w.pending() >= batch {
                w.flush().unwrap();
            }
        }
        w.finish().unwrap()
    }

    #[test]
    fn every_message_kind_round_trips_exactly() {
        let msgs = messages();
        let bytes = write_all(&msgs, 2);
        let r = RecordingReader::new(Cursor::new(bytes), "mem").unwrap();
        let got: Vec<RecordedMessage> = r.map(|m| m.unwrap()).collect();
        assert_round_trip(&got, &msgs);
    }

    #[test]
    fn truncated_file_reads_up_to_the_last_complete_batch() {
        let msgs = messages();
        let mut w = RecordingWriter::new(Vec::new()).unwrap();
        let mut ends = vec![w.bytes_written()];
        for (i, (s, p, a)) in msgs.iter().enumerate() {
            w.push(s, i as i64, p, a.as_ref()).unwrap();
            if i % 2 == 1 {
                w.flush().unwrap();
                ends.push(w.bytes_written());
            }
        }
        // No finish: like a killed recorder (no end-of-stream marker).
        w.flush().unwrap();
        let full = w.writer.get_ref().inner.clone();
        let full_len = full.len();
        // Cut anywhere: never a panic, always the complete batches before the cut.
        for cut in 0..full_len {
            let r = RecordingReader::new(Cursor::new(full[..cut].to_vec()), "cut");
            let Ok(mut r) = r else { continue };
            let n = r.by_ref().inspect(|m| assert!(m.is_ok())).count();
            let complete = ends.iter().filter(|&&e| e as usize <= cut).count() - 1;
            assert_eq!(n, complete * 2, "cut at {cut}");
            // (a cut inside the next message's 8-byte length prefix reads as a clean end)
            let last_end = ends.iter().filter(|&&e| e as usize <= cut).max().unwrap();
            if cut as u64 > last_end + 8 {
                assert!(r.truncated().is_some(), "cut at {cut} not reported");
            }
        }
        // The whole unfinished file: every message, not truncated.
        let mut r = RecordingReader::new(Cursor::new(full), "full").unwrap();
        assert_eq!(r.by_ref().count(), msgs.len());
        assert!(r.truncated().is_none());
    }

    #[test]
    fn metadata_floats_round_trip_exactly() {
        let mut p = MetadataParameters::new();
        p.insert("f".into(), Parameter::Float(100535.93453410221));
        p.insert(
            "focal".into(),
            Parameter::ListFloat(vec![0.1 + 0.2, 525.123456789012]),
        );
        let back = decode_metadata(&encode_metadata(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn not_a_recording_is_a_clear_error() {
        let e = RecordingReader::new(Cursor::new(Vec::new()), "x.arrows")
            .err()
            .unwrap();
        assert!(e.to_string().contains("x.arrows"), "{e}");
        let payload = encode_payload(&StringArray::from(vec!["a"])).unwrap();
        let e = RecordingReader::new(Cursor::new(payload), "p")
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a da3 recording"), "{e}");
    }
}
