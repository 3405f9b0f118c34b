//! The messages of an MCAP file in file order, from any byte source, linked
//! to their channels and schemas, without needing the summary.
//!
//! The `mcap` crate's [`LinearReader`] does the framing (records, chunks,
//! decompression, chunk / data / summary CRCs, the record length limit).
//! The three records that carry messages are then read here rather than by
//! `mcap::parse_record`: its string and map parsers (binrw) allocate the
//! length a damaged file announces (up to 4 GiB) before checking it against
//! the record (mcap 0.26), which the fuzz test's allocation bound catches.
//! Every length here is checked against the record's bytes first. Other
//! records (header, metadata, indexes, statistics, attachments) are not
//! parsed; schemas and channels repeated in the summary must equal the first
//! ones.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;

use eyre::{bail, eyre, Result};
use mcap::records::op;
use mcap::sans_io::{LinearReadEvent, LinearReader, LinearReaderOptions};
use mcap::{Channel, Message, Schema};

/// A cursor over one record's bytes; every read is bounds-checked.
struct Fields<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            bail!(
                "{} record: a field of {n} bytes, only {} left",
                self.what,
                self.buf.len()
            );
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    /// A `u32`-length-prefixed byte string.
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        let what = self.what;
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| eyre!("{what} record: a string that is not UTF-8"))
    }
}

fn parse_schema(data: &[u8]) -> Result<Schema<'static>> {
    let mut f = Fields {
        buf: data,
        what: "schema",
    };
    let id = f.u16()?;
    if id == 0 {
        bail!("schema record with id 0");
    }
    Ok(Schema {
        id,
        name: f.string()?,
        encoding: f.string()?,
        data: Cow::Owned(f.bytes()?.to_vec()),
    })
}

/// A channel record: the channel (schema not linked yet) and its schema id.
fn parse_channel(data: &[u8]) -> Result<(Channel<'static>, u16)> {
    let mut f = Fields {
        buf: data,
        what: "channel",
    };
    let id = f.u16()?;
    let schema_id = f.u16()?;
    let topic = f.string()?;
    let message_encoding = f.string()?;
    let mut map = Fields {
        buf: f.bytes()?,
        what: "channel metadata",
    };
    let mut metadata = BTreeMap::new();
    while !map.buf.is_empty() {
        metadata.insert(map.string()?, map.string()?);
    }
    let channel = Channel {
        id,
        topic,
        schema: None,
        message_encoding,
        metadata,
    };
    Ok((channel, schema_id))
}

/// Reads MCAP messages in file order; yields nothing after the first error.
pub struct McapMessages<R: Read> {
    source: R,
    reader: LinearReader,
    schemas: Schemas,
    channels: Channels,
    done: bool,
}

impl<R: Read> McapMessages<R> {
    /// `options`: what the framing checks (CRCs, record length limit...).
    pub fn new(source: R, options: LinearReaderOptions) -> Self {
        Self {
            source,
            reader: LinearReader::new_with_options(options.with_emit_chunks(false)),
            schemas: Schemas::new(),
            channels: Channels::new(),
            done: false,
        }
    }
}

type Schemas = HashMap<u16, Arc<Schema<'static>>>;
type Channels = HashMap<u16, Arc<Channel<'static>>>;

/// Handles one record; `Some` for a message.
fn record(
    schemas: &mut Schemas,
    channels: &mut Channels,
    opcode: u8,
    data: &[u8],
) -> Result<Option<Message<'static>>> {
    {
        match opcode {
            op::SCHEMA => {
                let s = parse_schema(data)?;
                match schemas.get(&s.id) {
                    Some(old) if **old != s => bail!("schema {} defined twice, differently", s.id),
                    Some(_) => {}
                    None => {
                        schemas.insert(s.id, Arc::new(s));
                    }
                }
            }
            op::CHANNEL => {
                let (mut c, schema_id) = parse_channel(data)?;
                if schema_id != 0 {
                    let s = schemas.get(&schema_id).ok_or_else(|| {
                        eyre!(
                            "channel `{}` names schema {schema_id}, not defined before",
                            c.topic
                        )
                    })?;
                    c.schema = Some(s.clone());
                }
                match channels.get(&c.id) {
                    Some(old) if **old != c => bail!("channel {} defined twice, differently", c.id),
                    Some(_) => {}
                    None => {
                        channels.insert(c.id, Arc::new(c));
                    }
                }
            }
            op::MESSAGE => {
                let mut f = Fields {
                    buf: data,
                    what: "message",
                };
                let channel_id = f.u16()?;
                let sequence = f.u32()?;
                let log_time = f.u64()?;
                let publish_time = f.u64()?;
                let channel = channels
                    .get(&channel_id)
                    .ok_or_else(|| eyre!("a message on channel {channel_id}, not defined before"))?
                    .clone();
                return Ok(Some(Message {
                    channel,
                    sequence,
                    log_time,
                    publish_time,
                    data: Cow::Owned(f.buf.to_vec()),
                }));
            }
            _ => {}
        }
        Ok(None)
    }
}

impl<R: Read> Iterator for McapMessages<R> {
    type Item = Result<Message<'static>>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let event = match self.reader.next_event() {
                None => break,
                Some(Err(e)) => Err(eyre!(e)),
                Some(Ok(LinearReadEvent::ReadRequest(need))) => {
                    let n = loop {
                        match self.source.read(self.reader.insert(need)) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            r => break r,
                        }
                    };
                    match n {
                        Ok(n) => {
                            self.reader.notify_read(n);
                            continue;
                        }
                        Err(e) => Err(eyre!(e)),
                    }
                }
                Some(Ok(LinearReadEvent::Record { opcode, data })) => {
                    match record(&mut self.schemas, &mut self.channels, opcode, data) {
                        Ok(None) => continue,
                        Ok(Some(m)) => Ok(m),
                        Err(e) => Err(e),
                    }
                }
            };
            if event.is_err() {
                self.done = true;
            }
            return Some(event);
        }
        self.done = true;
        None
    }
}
