//! `msg-dump`: a sink that records every message it receives as one JSON line:
//! the input id, every metadata parameter, the Arrow type, the length and an
//! FNV-1a 64 hash of the payload's values. Tests compare these lines with what
//! the sources should have sent; users point it at a port to see what flows.
//!
//! Env: `OUT_FILE` (JSONL path; default: stdout only as log lines),
//! `PRINT` (`1` to also log a one-line summary per message), `MAX_VALUES`
//! (also record the values of numeric payloads up to this length; 0).

use std::io::Write;

use da3_msg::arrow::array::{
    Array, Float32Array, Float64Array, StringArray, StructArray, UInt16Array, UInt8Array,
};
use da3_msg::node_util::{for_each_input, start, Env, Step};
use da3_msg::{Message, Parameter};
use dora_node_api::{EventStream, MetadataParameters};
use eyre::{Context, Result};
use serde_json::{json, Map, Value};

/// FNV-1a 64 of a byte string (also used by the tests to compute expectations).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn param_json(p: &Parameter) -> Value {
    match p {
        Parameter::Bool(b) => json!(b),
        Parameter::Integer(i) => json!(i),
        Parameter::String(s) => json!(s),
        Parameter::ListInt(v) => json!(v),
        Parameter::Float(f) => json!(f),
        Parameter::ListFloat(v) => json!(v),
        Parameter::ListString(v) => json!(v),
        Parameter::Timestamp(t) => json!(t.to_rfc3339()),
        #[allow(unreachable_patterns)]
        _ => Value::Null,
    }
}

/// Hash of the payload's logical values (little-endian bytes), or `None`
/// for types this sink does not hash.
pub fn payload_hash(data: &dyn Array) -> Option<u64> {
    let any = data.as_any();
    if let Some(a) = any.downcast_ref::<UInt8Array>() {
        return Some(fnv1a64(a.values()));
    }
    if let Some(a) = any.downcast_ref::<Float32Array>() {
        let b: Vec<u8> = a.values().iter().flat_map(|v| v.to_le_bytes()).collect();
        return Some(fnv1a64(&b));
    }
    if let Some(a) = any.downcast_ref::<UInt16Array>() {
        let b: Vec<u8> = a.values().iter().flat_map(|v| v.to_le_bytes()).collect();
        return Some(fnv1a64(&b));
    }
    if let Some(a) = any.downcast_ref::<Float64Array>() {
        let b: Vec<u8> = a.values().iter().flat_map(|v| v.to_le_bytes()).collect();
        return Some(fnv1a64(&b));
    }
    if let Some(a) = any.downcast_ref::<StringArray>() {
        let b: Vec<u8> = a
            .iter()
            .flat_map(|s| s.unwrap_or("").bytes().chain([0]))
            .collect();
        return Some(fnv1a64(&b));
    }
    if let Some(s) = any.downcast_ref::<StructArray>() {
        let mut b = Vec::new();
        for c in s.columns() {
            b.extend(payload_hash(c.as_ref())?.to_le_bytes());
        }
        return Some(fnv1a64(&b));
    }
    None
}

/// The values of a numeric payload as JSON numbers, when it has at most `max` of them.
pub fn payload_values(data: &dyn Array, max: usize) -> Option<Value> {
    if data.len() > max {
        return None;
    }
    let any = data.as_any();
    if let Some(a) = any.downcast_ref::<Float32Array>() {
        return Some(json!(a.values().to_vec()));
    }
    if let Some(a) = any.downcast_ref::<Float64Array>() {
        return Some(json!(a.values().to_vec()));
    }
    if let Some(a) = any.downcast_ref::<UInt8Array>() {
        return Some(json!(a.values().to_vec()));
    }
    if let Some(a) = any.downcast_ref::<UInt16Array>() {
        return Some(json!(a.values().to_vec()));
    }
    None
}

/// The JSON record of one message.
pub fn record(input: &str, params: &MetadataParameters, data: &dyn Array) -> Value {
    let meta: Map<String, Value> = params
        .iter()
        .map(|(k, v)| (k.clone(), param_json(v)))
        .collect();
    let mut rec = json!({
        "input": input,
        "arrow_type": format!("{}", data.data_type()),
        "len": data.len(),
        "metadata": meta,
    });
    if let Some(h) = payload_hash(data) {
        rec["hash"] = json!(format!("{h:016x}"));
    }
    if let Some(s) = data.as_any().downcast_ref::<StringArray>() {
        if s.len() == 1 {
            rec["text"] = json!(s.value(0));
        }
    }
    rec
}

/// Checks a message against the da3 conventions (`docs/messages.md`) when it
/// says what it is (`primitive` names a da3 message): `Some(why)` when it
/// breaks them. Messages without a known `primitive` are not judged
/// ([`Message::decode_claimed`]). Images are checked as messages (metadata,
/// payload type and size), not decoded; cameras must also be rigid motions
/// with positive focal lengths.
pub fn check(params: &MetadataParameters, data: &dyn Array) -> Option<String> {
    Message::decode_claimed(data, params)
        .err()
        .map(|e| e.to_string())
}

/// What [`run`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages recorded (every message received).
    pub messages: u64,
    /// Of those, messages that break the da3 conventions ([`check`]); their
    /// record carries the reason as `invalid`.
    pub invalid: u64,
}

/// Runs the sink until the event stream ends, in arrival order. Every message
/// is recorded; one that breaks the da3 conventions is also logged as a
/// warning and counted.
pub fn run(
    events: &mut EventStream,
    mut out: Option<std::fs::File>,
    print: bool,
    max_values: usize,
) -> Result<Summary> {
    let mut n = 0u64;
    let mut invalid = 0u64;
    for_each_input(events, |step| {
        match step {
            Step::Input { id, params, data } => {
                let mut rec = record(&id, &params, data.as_ref());
                if let Some(v) = payload_values(data.as_ref(), max_values) {
                    rec["values"] = v;
                }
                if let Some(why) = check(&params, data.as_ref()) {
                    invalid += 1;
                    tracing::warn!("input `{id}`: message breaks the da3 conventions: {why}");
                    rec["invalid"] = json!(why);
                }
                if print {
                    tracing::info!("{rec}");
                }
                if let Some(f) = out.as_mut() {
                    writeln!(f, "{rec}").wrap_err("cannot write OUT_FILE")?;
                    f.flush().wrap_err("cannot flush OUT_FILE")?;
                }
                n += 1;
            }
            Step::Closed(id) => tracing::debug!("input {id} closed"),
            _ => {}
        }
        Ok(())
    })?;
    Ok(Summary {
        messages: n,
        invalid,
    })
}

/// The env vars msg-dump reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[&["OUT_FILE", "PRINT", "MAX_VALUES"]];

/// Node configuration, from env vars.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// JSONL file to write (`OUT_FILE`).
    pub out_file: Option<String>,
    /// Also log a one-line summary per message (default: when there is no file).
    pub print: bool,
    /// Record the values of numeric payloads up to this length (0: none).
    pub max_values: usize,
}

impl Config {
    /// Reads the env vars; any invalid value is one clear error line.
    pub fn from_env() -> Result<Self> {
        let env = Env::new(ENV_VARS);
        let out_file: Option<String> = env.opt("OUT_FILE")?;
        let print = env.flag("PRINT", out_file.is_none())?;
        let max_values: usize = env.or("MAX_VALUES", 0)?;
        env.finish();
        Ok(Self {
            out_file,
            print,
            max_values,
        })
    }
}

pub fn lib_main() -> Result<()> {
    let (cfg, _node, mut events) = start("msg-dump", Config::from_env)?;
    let out = match &cfg.out_file {
        Some(p) => Some(
            std::fs::File::create(p).wrap_err_with(|| format!("cannot create OUT_FILE `{p}`"))?,
        ),
        None => None,
    };
    let s = run(&mut events, out, cfg.print, cfg.max_values)?;
    tracing::info!("msg-dump: {} messages, {} invalid", s.messages, s.invalid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn record_has_metadata_and_hash() {
        let f = da3_msg::ImageFrame::rgb8(1, 1, vec![1, 2, 3]);
        let (arr, params) = f.to_message();
        let r = record("image", &params, arr.as_ref());
        assert_eq!(r["metadata"]["encoding"], "rgb8");
        assert_eq!(r["len"], 3);
        assert_eq!(r["hash"], format!("{:016x}", fnv1a64(&[1, 2, 3])));
    }
}
