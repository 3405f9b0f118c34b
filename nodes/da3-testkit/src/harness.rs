//! Drives a node through `dora_node_api::integration_testing`: no daemon, the
//! node's own `run` function, inputs given as timed events.
//!
//! Each payload travels as an Arrow IPC file (the `ArrowFile` input form), so
//! any Arrow type, nulls, NaN and infinities reach the node exactly as built;
//! metadata travels as dora's typed JSON (finite floats only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use da3_msg::arrow::array::{Array, ArrayRef, RecordBatch};
use da3_msg::arrow::datatypes::{Field, Schema};
use da3_msg::arrow::ipc::writer::FileWriter;
use da3_msg::MetadataParameters;
use dora_node_api::integration_testing::{
    drain_outputs, output_channel, IntegrationTestInput, OutputJson, OutputReceiver, TestingInput,
    TestingOptions, TestingOutput,
};
use dora_node_api::{DoraNode, EventStream};
use eyre::{Context, Result};
use serde_json::{json, Value};

/// The events of one run, their payload files in `dir`.
pub struct Events {
    dir: PathBuf,
    events: Vec<Value>,
}

impl Events {
    /// Payload files go to `dir` (a temporary folder of the test).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            events: Vec::new(),
        }
    }

    /// Inputs queued so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Queues one input message at `t` seconds after the start.
    pub fn input(
        &mut self,
        t: f64,
        input: &str,
        array: &ArrayRef,
        params: &MetadataParameters,
    ) -> Result<()> {
        let path = self
            .dir
            .join(format!("payload-{:06}.arrow", self.events.len()));
        write_ipc_file(&path, array.as_ref())?;
        self.events.push(json!({
            "time_offset_secs": t,
            "type": "Input",
            "id": input,
            "metadata": params,
            "path": path,
            "batch_index": 0,
            "column": "data",
        }));
        Ok(())
    }

    /// Starts node `id` with these inputs (each with a deep queue, so that
    /// dora drops nothing) and outputs.
    pub fn start(
        self,
        id: &str,
        inputs: &[&str],
        outputs: &[&str],
    ) -> Result<(DoraNode, EventStream, OutputReceiver)> {
        let input_map: serde_json::Map<String, Value> = inputs
            .iter()
            .map(|i| {
                (
                    i.to_string(),
                    json!({"source": format!("src/{i}"), "queue_size": 100_000}),
                )
            })
            .collect();
        let spec = json!({
            "id": id,
            "env": null,
            "outputs": outputs,
            "inputs": input_map,
            "events": self.events,
        });
        let input: IntegrationTestInput =
            serde_json::from_value(spec).wrap_err("bad integration-test input")?;
        let (tx, rx) = output_channel();
        let (node, stream) = DoraNode::init_testing(
            TestingInput::Input(input),
            TestingOutput::ToChannel(tx),
            TestingOptions {
                skip_output_time_offsets: true,
            },
        )
        .wrap_err("cannot start the node in testing mode")?;
        Ok((node, stream, rx))
    }
}

/// The set-up every bad-input test starts with: a temporary folder, the
/// harness's [`Events`] with their payload files in its `payloads` folder,
/// and the seeded PRNG that picks the broken messages.
pub struct BadInputRun {
    /// Removed when the run is dropped; the test's own files go here too.
    pub dir: tempfile::TempDir,
    pub events: Events,
    pub rng: crate::Rng,
}

impl BadInputRun {
    pub fn new(seed: u64) -> Result<Self> {
        let dir = tempfile::tempdir().wrap_err("cannot create a temporary folder")?;
        let payloads = dir.path().join("payloads");
        std::fs::create_dir_all(&payloads)
            .wrap_err_with(|| format!("cannot create `{}`", payloads.display()))?;
        Ok(Self {
            events: Events::new(&payloads),
            dir,
            rng: crate::Rng::new(seed),
        })
    }
}

/// What a node sent, once it has finished.
pub fn outputs(rx: &mut OutputReceiver) -> Vec<OutputJson> {
    drain_outputs(rx)
}

/// Writes `array` as an Arrow IPC file with one batch of one column `data`.
pub fn write_ipc_file(path: &Path, array: &dyn Array) -> Result<()> {
    let array: ArrayRef = da3_msg::arrow::array::make_array(array.to_data());
    let schema = Arc::new(Schema::new(vec![Field::new(
        "data",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema.clone(), vec![array])?;
    let f = std::fs::File::create(path)
        .wrap_err_with(|| format!("cannot create `{}`", path.display()))?;
    let mut w = FileWriter::try_new(f, &schema)?;
    w.write(&batch)?;
    w.finish()?;
    Ok(())
}

/// Figures of one bad-input run, printed by every node's test.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Figures {
    pub node: &'static str,
    pub tried: u64,
    pub bad: u64,
    pub rejected: u64,
    pub good: u64,
    pub good_out: u64,
    pub crashed: u64,
}

impl Figures {
    pub fn print(&self) {
        println!(
            "bad-input figures: node={} inputs_tried={} bad={} rejected={} good={} good_outputs={} crashed={}",
            self.node, self.tried, self.bad, self.rejected, self.good, self.good_out, self.crashed
        );
    }
}

/// Runs `f` (a node's run), turning a panic into an error so that the test
/// can report it as a crash.
pub fn catch_crash<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(eyre::eyre!("the node panicked: {why}"))
        }
    }
}
