//! Small helpers every node of the project uses: typed env vars that fail
//! with one clear line, logging set-up, sending a frame, lingering at the end.

use std::str::FromStr;
use std::time::{Duration, Instant};

use dora_node_api::{DoraNode, Event, EventStream};
use eyre::{bail, Result};

/// Reads env var `name` as `T`; absent or empty gives `default`.
/// A value that does not parse stops with `invalid NAME=value: why`.
pub fn env_or<T: FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    Ok(env_opt(name)?.unwrap_or(default))
}

/// Reads env var `name` as `T`, `None` when absent or empty.
pub fn env_opt<T: FromStr>(name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => match v.trim().parse::<T>() {
            Ok(x) => Ok(Some(x)),
            Err(e) => bail!("invalid {name}={v:?}: {e}"),
        },
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => bail!("invalid {name}: {e}"),
    }
}

/// Reads a boolean env var: `1/true/yes/on` or `0/false/no/off`.
pub fn env_bool(name: &str, default: bool) -> Result<bool> {
    match std::env::var(name) {
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(default),
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => bail!("invalid {name}={v:?}: expected 1/0, true/false, yes/no or on/off"),
        },
        Err(_) => Ok(default),
    }
}

/// Logs to stderr (dora collects it), level from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Nanoseconds since the UNIX epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The input ids of the node, as declared in the dataflow.
pub fn input_ids(node: &DoraNode) -> Vec<String> {
    node.node_config()
        .inputs
        .keys()
        .map(|k| k.to_string())
        .collect()
}

/// Sends one frame on `output`.
pub fn send_frame(node: &mut DoraNode, output: &str, frame: &crate::ImageFrame) -> Result<()> {
    let (array, params) = frame.to_message();
    node.send_output(output.to_owned().into(), params, array)?;
    Ok(())
}

/// After a finite source sent its last frame: keep the node alive for up to
/// `dur` (or until `Stop`) so dora delivers the frames still in flight
/// (dora 1.1 can drop the last messages of a node that exits at once).
pub fn linger(events: &mut EventStream, dur: Duration) {
    let deadline = Instant::now() + dur;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match events.recv_timeout(left) {
            None | Some(Event::Stop(_)) => return,
            Some(_) => {}
        }
    }
}
