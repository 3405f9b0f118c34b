//! `slow-sink`: a test-only sink like `msg-dump` that takes `DELAY_MS`
//! milliseconds per message (a slow consumer) and adds its arrival time
//! (`arrival_ns`) to each JSON line of `OUT_FILE`.

use std::io::Write;
use std::time::Duration;

use da3_msg::node_util::{env_opt, env_or, init_logging, now_ns};
use dora_node_api::futures::StreamExt;
use dora_node_api::{DoraNode, Event};
use eyre::{Context, Result};

fn main() -> Result<()> {
    init_logging();
    let delay = Duration::from_millis(env_or("DELAY_MS", 0)?);
    let out: Option<String> = env_opt("OUT_FILE")?;
    let mut out = match &out {
        Some(p) => Some(std::fs::File::create(p).wrap_err_with(|| format!("cannot create {p}"))?),
        None => None,
    };
    let (_node, mut events) = DoraNode::init_from_env()?;
    let mut n = 0u64;
    while let Some(event) = dora_node_api::futures::executor::block_on(events.next()) {
        if let Event::Input { id, metadata, data } = event {
            let arrival = now_ns();
            let array = data.as_array();
            let mut rec = msg_dump::record(id.as_str(), &metadata.parameters, array.as_ref());
            rec["arrival_ns"] = serde_json::json!(arrival);
            if let Some(f) = out.as_mut() {
                writeln!(f, "{rec}")?;
                f.flush()?;
            }
            n += 1;
            std::thread::sleep(delay);
        }
    }
    tracing::info!("slow-sink: {n} messages");
    Ok(())
}
