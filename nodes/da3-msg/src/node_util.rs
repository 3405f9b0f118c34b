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
///
/// Nodes read their knobs through [`Env`], which checks them against the
/// node's declared list; these free functions are for test binaries.
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
    parse_opt(name, raw_var(name)?)
}

/// Reads a boolean env var: `1/true/yes/on` or `0/false/no/off`.
pub fn env_bool(name: &str, default: bool) -> Result<bool> {
    parse_bool(name, raw_var(name).unwrap_or(None), default)
}

fn raw_var(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => bail!("invalid {name}: {e}"),
    }
}

fn parse_opt<T: FromStr>(name: &str, raw: Option<String>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match raw {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => match v.trim().parse::<T>() {
            Ok(x) => Ok(Some(x)),
            Err(e) => bail!("invalid {name}={v:?}: {e}"),
        },
    }
}

fn parse_bool(name: &str, raw: Option<String>, default: bool) -> Result<bool> {
    match raw {
        None => Ok(default),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(default),
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => bail!("invalid {name}={v:?}: expected 1/0, true/false, yes/no or on/off"),
        },
    }
}

/// Default of `CONF_PERCENTILE` (dora-da3 and depth-export).
pub const CONF_PERCENTILE_DEFAULT: f64 = 40.0;

/// The env vars of one node, declared up front: the node's `ENV_VARS`
/// (what its `dora-node.yml` lists; `tests/tests/manifests.rs` compares the
/// two) and the old names it still accepts.
///
/// Every read goes through this reader. In debug builds (tests) reading a
/// name that is not declared panics, and so does [`Env::finish`] when a
/// declared name was never read: the list is the code's.
pub struct Env {
    declared: Vec<&'static str>,
    renamed: &'static [(&'static str, &'static str)],
    asked: std::cell::RefCell<Vec<&'static str>>,
}

impl Env {
    /// A reader for the names of `lists` (a node's own list and the shared
    /// ones it reads, e.g. [`crate::source::SourceConfig::ENV_VARS`]).
    pub fn new(lists: &[&[&'static str]]) -> Self {
        Self {
            declared: lists.iter().flat_map(|l| l.iter().copied()).collect(),
            renamed: &[],
            asked: Default::default(),
        }
    }

    /// Old names still accepted, as `(old, new)`: when `new` is unset and
    /// `old` is set, `old` is read with a deprecation warning (so a graph
    /// written for the old name keeps doing what it did).
    pub fn with_renamed(mut self, renamed: &'static [(&'static str, &'static str)]) -> Self {
        self.renamed = renamed;
        self
    }

    fn raw(&self, name: &'static str) -> Result<(&'static str, Option<String>)> {
        debug_assert!(
            self.declared.contains(&name),
            "env var {name} is read but not declared in the node's ENV_VARS (and dora-node.yml)"
        );
        self.asked.borrow_mut().push(name);
        let v = raw_var(name)?;
        if v.is_none() {
            for &(old, _) in self.renamed.iter().filter(|(_, new)| *new == name) {
                if let Some(v) = raw_var(old)? {
                    tracing::warn!("{old} is deprecated here: it was renamed {name}");
                    return Ok((old, Some(v)));
                }
            }
        }
        Ok((name, v))
    }

    /// `name` as `T`; absent or empty gives `default`; a value that does not
    /// parse is `invalid NAME=value: why`.
    pub fn or<T: FromStr>(&self, name: &'static str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// `name` as `T`, `None` when absent or empty.
    pub fn opt<T: FromStr>(&self, name: &'static str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        let (read, raw) = self.raw(name)?;
        parse_opt(read, raw)
    }

    /// A boolean: `1/true/yes/on` or `0/false/no/off`; absent or empty gives `default`.
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool> {
        let (read, raw) = self.raw(name)?;
        parse_bool(read, raw, default)
    }

    /// A percentile in `0..=100` (one range for every node that takes one).
    pub fn percentile(&self, name: &'static str, default: f64) -> Result<f64> {
        let p: f64 = self.or(name, default)?;
        if !(0.0..=100.0).contains(&p) {
            bail!("invalid {name}={p}: must be 0..=100");
        }
        Ok(p)
    }

    /// Ends the parse: in debug builds, checks every declared name was read.
    pub fn finish(self) {
        let asked = self.asked.borrow();
        let unread: Vec<_> = self
            .declared
            .iter()
            .filter(|n| !asked.contains(n))
            .collect();
        debug_assert!(
            unread.is_empty(),
            "env vars declared in ENV_VARS but never read: {unread:?}"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    // Env vars are process-wide: each test uses names no other test touches.

    #[test]
    fn env_reads_declared_names_and_old_ones_with_a_warning() {
        std::env::set_var("DA3T_OLD", "7");
        std::env::set_var("DA3T_FLAG", "yes");
        std::env::set_var("DA3T_PCT", "100");
        let env = Env::new(&[&["DA3T_NEW", "DA3T_FLAG", "DA3T_PCT", "DA3T_UNSET"]])
            .with_renamed(&[("DA3T_OLD", "DA3T_NEW")]);
        assert_eq!(env.or::<u32>("DA3T_NEW", 1).unwrap(), 7, "old name read");
        assert!(env.flag("DA3T_FLAG", false).unwrap());
        assert_eq!(env.percentile("DA3T_PCT", 40.0).unwrap(), 100.0);
        assert_eq!(env.opt::<String>("DA3T_UNSET").unwrap(), None);
        env.finish();
        std::env::set_var("DA3T_PCT", "100.5");
        let env = Env::new(&[&["DA3T_PCT"]]);
        let e = env.percentile("DA3T_PCT", 40.0).unwrap_err().to_string();
        assert!(e.contains("invalid DA3T_PCT=100.5: must be 0..=100"), "{e}");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not declared")]
    fn reading_an_undeclared_name_panics_in_debug() {
        let env = Env::new(&[&["DA3T_A"]]);
        let _ = env.opt::<String>("DA3T_B");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "never read")]
    fn a_declared_name_never_read_panics_in_debug() {
        let env = Env::new(&[&["DA3T_C", "DA3T_D"]]);
        let _ = env.opt::<String>("DA3T_C");
        env.finish();
    }
}
