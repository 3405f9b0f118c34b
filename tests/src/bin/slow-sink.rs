//! `slow-sink`: a test-only sink like `msg-dump` that takes `DELAY_MS`
//! milliseconds per message (a slow consumer) and adds its arrival time
//! (`arrival_ns`) to each JSON line of `OUT_FILE`.
//!
//! `DIE_AFTER=N` makes it a failing consumer for the fault tests: on its first
//! run (dora's restart count 0) it exits with code 3 after writing N lines;
//! a run restarted by dora's `restart_policy` does not die. With `DIE_AFTER`
//! set each line also carries `restart` (dora's restart count of the process
//! that wrote it). `OUT_FILE` is appended to, so a restarted sink keeps the
//! lines of the runs before it.

use std::io::Write;
use std::time::Duration;

use da3_msg::node_util::{env_opt, env_or, init_logging, now_ns};
use dora_node_api::futures::StreamExt;
use dora_node_api::{DoraNode, Event};
use eyre::{Context, Result};

fn main() -> Result<()> {
    init_logging();
    let delay = Duration::from_millis(env_or("DELAY_MS", 0)?);
    let die_after: Option<u64> = env_opt("DIE_AFTER")?;
    let out: Option<String> = env_opt("OUT_FILE")?;
    let mut out = match &out {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .wrap_err_with(|| format!("cannot open {p}"))?,
        ),
        None => None,
    };
    let (node, mut events) = DoraNode::init_from_env()?;
    let restart = node.restart_count();
    let mut n = 0u64;
    while let Some(event) = dora_node_api::futures::executor::block_on(events.next()) {
        if let Event::Input { id, metadata, data } = event {
            let arrival = now_ns();
            let array = data.as_array();
            let mut rec = msg_dump::record(id.as_str(), &metadata.parameters, array.as_ref());
            rec["arrival_ns"] = serde_json::json!(arrival);
            if die_after.is_some() {
                rec["restart"] = serde_json::json!(restart);
            }
            if let Some(f) = out.as_mut() {
                writeln!(f, "{rec}")?;
                f.flush()?;
            }
            n += 1;
            if restart == 0 && die_after.is_some_and(|d| n >= d) {
                tracing::error!("slow-sink: DIE_AFTER={n} reached, exiting with code 3");
                std::process::exit(3);
            }
            std::thread::sleep(delay);
        }
    }
    tracing::info!("slow-sink: {n} messages (restart {restart})");
    Ok(())
}
