//! MCAP recordings (`.mcap`), the second container of the `recorder` node
//! beside Arrow IPC ([`crate::recording`]); `replay` reads both.
//!
//! Every recorded message is one `da3.Record` message (protobuf, schema
//! [`RECORD_SCHEMA`], descriptor [`record_descriptor`]) on topic
//! `<stream>/record`: the input id, `seq`, `recv_ns`, the metadata as typed
//! JSON and the Arrow type, as in the Arrow format. Before it come the
//! message's Foxglove views ([`crate::foxglove_map`]): on topic `<stream>`
//! a `RawImage`, `CompressedImage`, `CameraCalibration` or `PointCloud`, on
//! `<stream>/calibration` and `<stream>/pose` its intrinsics and pose. When
//! the message on `<stream>` holds the payload exactly, the record names that
//! topic (`payload_topic`) and carries no payload; otherwise `payload` is the
//! Arrow IPC stream of [`crate::recording::encode_payload`] (status strings,
//! the camera's 21 values, anything that is not a da3 message). All the
//! MCAP messages of one recorded message share its `sequence` (`seq`, modulo
//! 2^32) and `log_time` (`recv_ns`); `publish_time` is the capture time
//! (`stamp_ns`, else `recv_ns`).
//!
//! Crash safety: chunks are built in memory and written whole at each
//! [`McapRecordingWriter::flush`] (the file is flushed too), so a killed
//! recorder leaves complete chunks followed at most by a cut one, and no
//! summary. [`McapRecordingReader`] reads linearly, never needing the summary:
//! a cut or damaged file reads up to its last good chunk, with a warning.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use da3_msg::arrow::array::Array;
use da3_msg::{FrameInfo, MetadataParameters};
use eyre::{bail, eyre, Context, Result};
use mcap::records::MessageHeader;
use mcap::sans_io::LinearReaderOptions;
use prost::bytes::Bytes;
use prost::Message as _;

use crate::foxglove_map::{map_message, rebuild_payload, FoxKind};
use crate::mcap_messages::McapMessages;
use crate::recording::{
    decode_metadata, decode_payload, encode_metadata, encode_payload, RecordedMessage,
};

/// File extension of MCAP recordings.
pub const EXTENSION: &str = "mcap";
/// The first bytes of every MCAP file.
pub const MAGIC: &[u8; 8] = b"\x89MCAP0\r\n";
/// Schema name of the records.
pub const RECORD_SCHEMA: &str = "da3.Record";
/// Topic suffix of the records of a stream (`<stream>/record`).
pub const RECORD_SUFFIX: &str = "record";
/// Name of the MCAP metadata record that marks a da3 recording.
pub const METADATA_NAME: &str = "da3-recording";
/// Largest MCAP record read back (a message, a chunk's content): bigger
/// lengths in a file are refused before anything is allocated for them. The
/// writer leaves out a message that would exceed it.
pub const MAX_RECORD: usize = 256 << 20;

/// One recorded message (see the module docs). Its protobuf descriptor is
/// [`record_descriptor`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// The input id the message arrived on.
    #[prost(string, tag = "1")]
    pub stream: String,
    /// Arrival order in this file, from 0.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// Receive time, nanoseconds since the UNIX epoch.
    #[prost(int64, tag = "3")]
    pub recv_ns: i64,
    /// The metadata parameters as typed JSON (`{"frame_id": {"Integer": 5}}`).
    #[prost(string, tag = "4")]
    pub metadata: String,
    /// The payload's Arrow type, as displayed by Arrow (`UInt8`, `Float32`...).
    #[prost(string, tag = "5")]
    pub arrow_type: String,
    /// The payload as an Arrow IPC stream (one batch, one column `data`);
    /// empty when `payload_topic` is set.
    #[prost(bytes = "vec", tag = "6")]
    pub payload: Vec<u8>,
    /// The topic whose message with the same `sequence` holds the payload.
    #[prost(string, tag = "7")]
    pub payload_topic: String,
}

/// The `da3.Record` schema: a serialized protobuf `FileDescriptorSet`.
pub fn record_descriptor() -> Vec<u8> {
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
    let field = |name: &str, number: i32, ty: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        json_name: Some(name.into()),
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("da3/Record.proto".into()),
        package: Some("da3".into()),
        message_type: vec![DescriptorProto {
            name: Some("Record".into()),
            field: vec![
                field("stream", 1, Type::String),
                field("seq", 2, Type::Uint64),
                field("recv_ns", 3, Type::Int64),
                field("metadata", 4, Type::String),
                field("arrow_type", 5, Type::String),
                field("payload", 6, Type::Bytes),
                field("payload_topic", 7, Type::String),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    };
    prost_types::FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

/// Chunk compression of MCAP recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Lz4,
    None,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "zstd" => Self::Zstd,
            "lz4" => Self::Lz4,
            "none" => Self::None,
            _ => return None,
        })
    }

    fn mcap(self) -> Option<mcap::Compression> {
        match self {
            Self::Zstd => Some(mcap::Compression::Zstd),
            Self::Lz4 => Some(mcap::Compression::Lz4),
            Self::None => None,
        }
    }
}

/// Counts what goes through to the file (the MCAP writer owns it). In
/// non-seeking mode the MCAP writer only asks for its position.
struct Counting<W> {
    inner: W,
    count: Arc<AtomicU64>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write + Seek> Seek for Counting<W> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        if pos == SeekFrom::Current(0) {
            return Ok(self.count.load(Ordering::Relaxed));
        }
        let at = self.inner.seek(pos)?;
        self.count.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

/// Appends messages to an MCAP recording; see the module docs.
pub struct McapRecordingWriter<W: Write + Seek> {
    writer: mcap::Writer<Counting<W>>,
    count: Arc<AtomicU64>,
    /// A handle on the file, for `fsync`.
    file: Option<File>,
    schemas: HashMap<&'static str, u16>,
    /// (topic, schema name) -> channel id.
    channels: HashMap<(String, &'static str), u16>,
    pending: usize,
    pending_bytes: usize,
    next_seq: u64,
    written: u64,
    chunks: u64,
}

impl McapRecordingWriter<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: &Path, compression: Compression) -> Result<Self> {
        let f = File::create(path)
            .wrap_err_with(|| format!("cannot create recording `{}`", path.display()))?;
        let sync = f
            .try_clone()
            .wrap_err_with(|| format!("cannot open `{}` twice", path.display()))?;
        let mut w = Self::new(BufWriter::with_capacity(1 << 20, f), compression)?;
        w.file = Some(sync);
        Ok(w)
    }

    /// `fsync`s the file (after a [`flush`](Self::flush)).
    pub fn sync(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        Ok(())
    }
}

impl<W: Write + Seek> McapRecordingWriter<W> {
    /// Starts a recording on `w` (at its start): writes the magic, the header
    /// and a metadata record naming the format, and flushes them.
    pub fn new(w: W, compression: Compression) -> Result<Self> {
        let count = Arc::new(AtomicU64::new(0));
        let counting = Counting {
            inner: w,
            count: count.clone(),
        };
        // Chunks in memory, written whole at `flush` (no seeking back into a
        // chunk on disk), never cut by size in between (`push` does no I/O).
        let opts = mcap::WriteOptions::new()
            .compression(compression.mcap())
            .disable_seeking(true)
            .chunk_size(None);
        let mut writer = opts
            .create(counting)
            .wrap_err("cannot start the MCAP recording")?;
        let meta = [
            ("format", crate::recording::FORMAT_NAME),
            ("version", crate::recording::FORMAT_VERSION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
        writer
            .write_metadata(&mcap::records::Metadata {
                name: METADATA_NAME.into(),
                metadata: meta,
            })
            .wrap_err("cannot write the MCAP metadata")?;
        writer.flush().wrap_err("cannot flush the recording")?;
        Ok(Self {
            writer,
            count,
            file: None,
            schemas: HashMap::new(),
            channels: HashMap::new(),
            pending: 0,
            pending_bytes: 0,
            next_seq: 0,
            written: 0,
            chunks: 0,
        })
    }

    fn channel(&mut self, topic: &str, schema: &'static str, kind: Option<FoxKind>) -> Result<u16> {
        if let Some(&id) = self.channels.get(&(topic.to_string(), schema)) {
            return Ok(id);
        }
        let schema_id = match self.schemas.get(schema) {
            Some(&id) => id,
            None => {
                let id = match kind {
                    Some(k) => {
                        let s = k.schema();
                        self.writer.add_schema(&s.name, &s.encoding, &s.data)?
                    }
                    None => {
                        self.writer
                            .add_schema(RECORD_SCHEMA, "protobuf", &record_descriptor())?
                    }
                };
                self.schemas.insert(schema, id);
                id
            }
        };
        let id = self
            .writer
            .add_channel(schema_id, topic, "protobuf", &BTreeMap::new())?;
        self.channels.insert((topic.to_string(), schema), id);
        Ok(id)
    }

    /// Adds one message to the current chunk; returns its `seq`. Fails only
    /// when the message cannot be encoded (nothing of it is written then).
    pub fn push(
        &mut self,
        stream: &str,
        recv_ns: i64,
        params: &MetadataParameters,
        data: &dyn Array,
    ) -> Result<u64> {
        let metadata = encode_metadata(params)?;
        let log_time = recv_ns.max(0) as u64;
        let stamp = FrameInfo::read(params)
            .ok()
            .and_then(|i| i.stamp_ns)
            .unwrap_or(log_time);
        let mapped = map_message(stream, stamp, params, data);
        let payload = match mapped.payload_topic {
            Some(_) => Vec::new(),
            None => encode_payload(data)
                .wrap_err_with(|| format!("cannot encode a `{stream}` payload"))?,
        };
        let seq = self.next_seq;
        let record = Record {
            stream: stream.to_string(),
            seq,
            recv_ns,
            metadata,
            arrow_type: data.data_type().to_string(),
            payload,
            payload_topic: mapped.payload_topic.unwrap_or_default(),
        }
        .encode_to_vec();
        let biggest = mapped.messages.iter().map(|m| m.data.len()).max();
        if biggest.unwrap_or(0).max(record.len()) > MAX_RECORD - 64 {
            bail!(
                "a `{stream}` message over {} MiB cannot be recorded in MCAP",
                MAX_RECORD >> 20
            );
        }
        let header = |channel_id| MessageHeader {
            channel_id,
            sequence: seq as u32,
            log_time,
            publish_time: stamp,
        };
        let mut bytes = record.len();
        for m in &mapped.messages {
            let ch = self.channel(&m.topic, m.kind.name(), Some(m.kind))?;
            self.writer.write_to_known_channel(&header(ch), &m.data)?;
            bytes += m.data.len();
        }
        let ch = self.channel(&format!("{stream}/{RECORD_SUFFIX}"), RECORD_SCHEMA, None)?;
        self.writer.write_to_known_channel(&header(ch), &record)?;
        self.pending += 1;
        self.pending_bytes += bytes + 64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Messages in the current, not yet written chunk.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Approximate (uncompressed) size of the current chunk.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Messages written to the file in complete chunks.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Chunks written.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Bytes written to the file so far.
    pub fn bytes_written(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the current chunk (if any) and flushes the file.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().wrap_err("cannot write an MCAP chunk")?;
        if self.pending > 0 {
            self.written += self.pending as u64;
            self.chunks += 1;
            self.pending = 0;
            self.pending_bytes = 0;
        }
        Ok(())
    }

    /// Flushes, writes the summary and footer, and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.flush()?;
        self.writer
            .finish()
            .wrap_err("cannot end the MCAP recording")?;
        let mut inner = self.writer.into_inner().inner;
        inner.flush().wrap_err("cannot flush the recording")?;
        Ok(inner)
    }

    /// The bytes so far, as a killed recorder leaves them (no chunk in
    /// progress, no summary). For tests.
    pub fn abandon(self) -> W {
        self.writer.into_inner().inner
    }
}

/// One record without its payload decoded (for statistics).
#[derive(Debug, Clone)]
pub struct RecordInfo {
    pub stream: String,
    pub seq: u64,
    pub recv_ns: i64,
    pub arrow_type: String,
    /// Bytes of the payload as stored (in the record or in the message holding it).
    pub payload_len: usize,
}

/// A record and, when it names one, the message holding its payload.
struct RawRecord {
    record: Record,
    payload_msg: Option<(FoxKind, Vec<u8>)>,
}

/// Reads an MCAP recording message by message; see the module docs.
///
/// Iterating yields one `Result` per record (`Err` for a record that does
/// not decode, or whose payload message is missing or damaged); a file cut
/// short or damaged ends at its last good chunk, with a warning and
/// [`truncated`](Self::truncated) set. Other MCAP messages (Foxglove views
/// without a record, other schemas) are passed over.
pub struct McapRecordingReader<R: Read> {
    messages: McapMessages<std::io::Chain<Cursor<[u8; 8]>, R>>,
    label: String,
    /// Topic -> the last message that can hold a payload: (sequence, kind, data).
    payloads: HashMap<String, (u32, FoxKind, Vec<u8>)>,
    truncated: Option<String>,
    done: bool,
    records: u64,
}

impl McapRecordingReader<BufReader<File>> {
    /// Opens an MCAP recording file.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path)
            .wrap_err_with(|| format!("cannot open recording `{}`", path.display()))?;
        Self::new(
            BufReader::with_capacity(1 << 20, f),
            &path.display().to_string(),
        )
    }
}

impl<R: Read> McapRecordingReader<R> {
    /// Checks the magic of `r`; `label` names the source in messages.
    pub fn new(r: R, label: &str) -> Result<Self> {
        Self::with_limit(r, label, MAX_RECORD)
    }

    /// Like [`new`](Self::new), refusing records (and chunk contents) over
    /// `max_record` bytes before allocating them.
    pub fn with_limit(mut r: R, label: &str, max_record: usize) -> Result<Self> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|e| {
            eyre!("`{label}` is not an MCAP recording (empty or cut before its magic): {e}")
        })?;
        if &magic != MAGIC {
            bail!("`{label}` is not an MCAP recording (it does not start with the MCAP magic)");
        }
        let options = LinearReaderOptions::default()
            .with_prevalidate_chunk_crcs(true)
            .with_validate_data_section_crc(true)
            .with_validate_summary_section_crc(true)
            .with_record_length_limit(max_record);
        let source = Cursor::new(magic).chain(r);
        Ok(Self {
            messages: McapMessages::new(source, options),
            label: label.to_string(),
            payloads: HashMap::new(),
            truncated: None,
            done: false,
            records: 0,
        })
    }

    /// Why reading stopped early, when the file is cut short or damaged.
    pub fn truncated(&self) -> Option<&str> {
        self.truncated.as_deref()
    }

    /// Records read so far (decodable or not).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The next record, with its payload message; `None` at the end.
    fn next_raw(&mut self) -> Option<Result<RawRecord>> {
        loop {
            if self.done {
                return None;
            }
            let m = match self.messages.next() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    let why = format!(
                        "`{}` ends early or is damaged (recorder killed?): read up to its last complete chunk ({} records): {e}",
                        self.label, self.records
                    );
                    tracing::warn!("{why}");
                    self.truncated = Some(why);
                    return None;
                }
                Some(Ok(m)) => m,
            };
            let Some(schema) = m.channel.schema.as_ref() else {
                continue;
            };
            if schema.name == RECORD_SCHEMA {
                self.records += 1;
                return Some(self.raw_record(&m));
            }
            if let Some(kind) = FoxKind::from_name(&schema.name).filter(|k| k.holds_payload()) {
                self.payloads.insert(
                    m.channel.topic.clone(),
                    (m.sequence, kind, m.data.into_owned()),
                );
            }
        }
    }

    fn raw_record(&mut self, m: &mcap::Message<'static>) -> Result<RawRecord> {
        if m.channel.message_encoding != "protobuf" {
            bail!(
                "a record on `{}` has message encoding `{}`, expected protobuf",
                m.channel.topic,
                m.channel.message_encoding
            );
        }
        let record = Record::decode(&m.data[..])
            .wrap_err_with(|| format!("a record on `{}` does not decode", m.channel.topic))?;
        let payload_msg = if record.payload_topic.is_empty() {
            None
        } else {
            match self.payloads.remove(&record.payload_topic) {
                Some((seq, kind, data)) if seq == m.sequence => Some((kind, data)),
                _ => bail!(
                    "message {} on `{}`: its payload message on `{}` is missing",
                    record.seq,
                    record.stream,
                    record.payload_topic
                ),
            }
        };
        Ok(RawRecord {
            record,
            payload_msg,
        })
    }

    /// The next record without decoding metadata or payload (for statistics).
    pub fn next_info(&mut self) -> Option<Result<RecordInfo>> {
        Some(self.next_raw()?.map(|r| {
            RecordInfo {
                payload_len: r
                    .payload_msg
                    .as_ref()
                    .map_or(r.record.payload.len(), |(_, d)| d.len()),
                stream: r.record.stream,
                seq: r.record.seq,
                recv_ns: r.record.recv_ns,
                arrow_type: r.record.arrow_type,
            }
        }))
    }
}

fn decode_record(raw: RawRecord) -> Result<RecordedMessage> {
    let RawRecord {
        record: r,
        payload_msg,
    } = raw;
    let what = || format!("message {} on `{}`", r.seq, r.stream);
    let metadata = decode_metadata(&r.metadata).wrap_err_with(what)?;
    let data = match payload_msg {
        None => decode_payload(&r.payload).wrap_err_with(what)?,
        Some((kind, bytes)) => {
            rebuild_payload(kind.name(), Bytes::from(bytes), &r.arrow_type).wrap_err_with(what)?
        }
    };
    if data.data_type().to_string() != r.arrow_type {
        bail!(
            "{}: the payload is {}, the record says {}",
            what(),
            data.data_type(),
            r.arrow_type
        );
    }
    Ok(RecordedMessage {
        stream: r.stream,
        seq: r.seq,
        recv_ns: r.recv_ns,
        metadata,
        arrow_type: r.arrow_type,
        data,
    })
}

impl<R: Read> Iterator for McapRecordingReader<R> {
    type Item = Result<RecordedMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_raw()?.and_then(decode_record))
    }
}

/// What [`recover`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// MCAP messages copied (Foxglove views and records).
    pub messages: u64,
    /// Why the input ended early, when it did.
    pub stopped: Option<String>,
}

/// Copies every message of the complete chunks of `input` (any MCAP file,
/// typically one cut short by a killed recorder, which has no summary) into a
/// finished MCAP file `output`, with a summary and footer that indexed readers
/// (Rerun, Foxglove, `mcap` Python's seeking reader) need. Schemas, channels,
/// sequences and times are kept; compression is `compression`.
pub fn recover(input: &Path, output: &Path, compression: Compression) -> Result<Recovered> {
    let f = File::open(input).wrap_err_with(|| format!("cannot open `{}`", input.display()))?;
    let options = LinearReaderOptions::default()
        .with_prevalidate_chunk_crcs(true)
        .with_record_length_limit(MAX_RECORD);
    let reader = McapMessages::new(BufReader::new(f), options);
    let out =
        File::create(output).wrap_err_with(|| format!("cannot create `{}`", output.display()))?;
    let mut w = mcap::WriteOptions::new()
        .compression(compression.mcap())
        .create(BufWriter::new(out))
        .wrap_err("cannot start the MCAP file")?;
    let mut n = 0;
    let mut stopped = None;
    for m in reader {
        match m {
            Ok(m) => {
                w.write(&m).wrap_err("cannot write a message")?;
                n += 1;
            }
            Err(e) => {
                stopped = Some(format!(
                    "`{}` ends early or is damaged after {n} messages: {e}",
                    input.display()
                ));
                break;
            }
        }
    }
    w.finish().wrap_err("cannot end the MCAP file")?;
    w.into_inner().flush()?;
    Ok(Recovered {
        messages: n,
        stopped,
    })
}

#[cfg(test)]
#[path = "mcap_recording_tests.rs"]
mod tests;
