//! Small helpers every node of the project uses: typed env vars that fail
//! with one clear line, the start of a node ([`start`]), the ordered event
//! loop ([`next_step`], [`for_each_input`]), sending a frame, lingering at
//! the end.

use std::str::FromStr;
use std::time::{Duration, Instant};

use dora_node_api::futures::future::{select, Either};
use dora_node_api::futures::StreamExt;
use dora_node_api::{DoraNode, Event, EventStream, MetadataParameters};
use eyre::{bail, Context, Result};

use crate::arrow::array::ArrayRef;

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

/// The start every node shares: logging, then its configuration (`config`,
/// usually `Config::from_env`; an error reads `<node>: bad configuration: ...`,
/// before dora is contacted), then the dora node and its event stream.
pub fn start<C>(
    node: &str,
    config: impl FnOnce() -> Result<C>,
) -> Result<(C, DoraNode, EventStream)> {
    init_logging();
    let cfg = config().wrap_err_with(|| format!("{node}: bad configuration"))?;
    let (dora, events) = DoraNode::init_from_env()?;
    Ok((cfg, dora, events))
}

/// One step of the ordered event loop ([`next_step`]).
#[derive(Debug)]
pub enum Step {
    /// A message on input `id`.
    Input {
        id: String,
        params: MetadataParameters,
        data: ArrayRef,
    },
    /// Input `id` will receive nothing more.
    Closed(String),
    /// The wait given to [`next_step`] passed without an event.
    Timeout,
    /// The stream has ended: every event has been read.
    End,
}

/// The next input or input closing, in arrival order, waiting at most `wait`
/// (`None`: as long as it takes).
///
/// Events are read with `StreamExt::next`, which keeps their order (dora
/// 1.1's `recv` may hand out `Stop` before the last inputs); `Stop` and the
/// other events are passed over (stream errors logged), so a loop that runs
/// until [`Step::End`] reads every input that reached the node.
pub fn next_step(events: &mut EventStream, wait: Option<Duration>) -> Step {
    loop {
        let event = match wait {
            None => dora_node_api::futures::executor::block_on(events.next()),
            Some(wait) => match dora_node_api::futures::executor::block_on(select(
                futures_timer::Delay::new(wait),
                events.next(),
            )) {
                Either::Left(_) => return Step::Timeout,
                Either::Right((event, _)) => event,
            },
        };
        match event {
            None => return Step::End,
            Some(Event::Input { id, metadata, data }) => {
                return Step::Input {
                    id: id.to_string(),
                    params: metadata.parameters,
                    data: data.as_array().clone(),
                }
            }
            Some(Event::InputClosed { id }) => return Step::Closed(id.to_string()),
            Some(Event::Error(e)) => tracing::warn!("event stream error: {e}"),
            Some(_) => {}
        }
    }
}

/// The loop of a sink: `on` gets every [`Step::Input`] and [`Step::Closed`],
/// in arrival order, until the stream ends (see [`next_step`]).
pub fn for_each_input(
    events: &mut EventStream,
    mut on: impl FnMut(Step) -> Result<()>,
) -> Result<()> {
    loop {
        match next_step(events, None) {
            Step::End => return Ok(()),
            Step::Timeout => {}
            step => on(step)?,
        }
    }
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
