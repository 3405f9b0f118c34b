//! Damaged MCAP recordings given to `replay` (through `integration_testing`):
//! files cut short, bit flips anywhere, record lengths set huge, wrong magic,
//! and files whose framing is valid but one record cannot be read back (its
//! payload message missing or damaged, its protobuf, metadata, Arrow payload
//! or type wrong). Each is damaged by construction (`da3_testkit::bad::mcap_files`),
//! so what replay must do is known: refuse the file with an error naming it,
//! send what it can read and count the file as cut or damaged, or skip and
//! count exactly the one bad message. It must never crash, and never send a
//! message that differs from the good recording's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use da3_msg::arrow::array::{ArrayRef, UInt8Array};
use da3_msg::MetadataParameters;
use da3_testkit::bad::mcap_files::{good_messages, good_recording, Expect, McapKit};
use da3_testkit::harness::{catch_crash, outputs, Events, Figures};
use da3_testkit::Rng;
use dora_node_api::dora_core::config::DataId;
use recorder::mcap_recording::Compression;
use replay::{Config, Pace, Summary};
use serde_json::Value;

const N_BAD: usize = 280;

/// What one replay of `bytes` did: its result and the outputs it sent
/// (`id`, `data`, `data_type` of each, in order).
fn replay_bytes(dir: &Path, name: &str, bytes: &[u8]) -> (eyre::Result<Summary>, Vec<Value>) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let streams: Vec<String> = good_messages().into_iter().map(|m| m.0).collect();
    let outs: Vec<&str> = streams.iter().map(String::as_str).collect();
    let payloads = dir.join(format!("{name}-payloads"));
    std::fs::create_dir_all(&payloads).unwrap();
    // One tick per message (PACE=tick): more ticks than the recording holds.
    let mut ticks = Events::new(&payloads);
    let tick: ArrayRef = Arc::new(UInt8Array::from(vec![0u8]));
    for _ in 0..2 * outs.len() {
        ticks
            .input(0.0, "tick", &tick, &MetadataParameters::new())
            .unwrap();
    }
    let (mut node, mut events, mut rx) = ticks.start("replay", &["tick"], &outs).unwrap();
    let config = Config {
        files: vec![path],
        pace: Pace::Tick,
        looping: false,
        streams: None,
        rename: BTreeMap::new(),
        linger: Duration::ZERO,
    };
    let declared = outs.iter().map(|o| DataId::from(o.to_string())).collect();
    let r = catch_crash(|| replay::run_with_outputs(&mut node, &mut events, &config, &declared));
    drop(node);
    let sent = outputs(&mut rx)
        .into_iter()
        .map(|o| serde_json::json!({"id": o["id"], "data": o["data"], "data_type": o["data_type"]}))
        .collect();
    (r, sent)
}

/// `sub` is `all` with some elements left out, in order.
fn is_subsequence(sub: &[Value], all: &[Value]) -> bool {
    let mut it = all.iter();
    sub.iter().all(|s| it.any(|a| a == s))
}

#[test]
fn damaged_mcap_recordings_are_refused_or_read_up_to_the_damage_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0xDA3_00C4);
    let kits = [Compression::Zstd, Compression::None]
        .map(|c| McapKit::new(good_recording(c).unwrap()).unwrap());
    // The good recordings: every message, in order.
    let n_good = good_messages().len();
    let mut baseline = Vec::new();
    for (i, kit) in kits.iter().enumerate() {
        let (r, sent) = replay_bytes(dir.path(), &format!("good-{i}.mcap"), kit.good());
        let s = r.expect("the good recording replays");
        assert_eq!((s.bad, s.damaged), (0, 0));
        assert_eq!(sent.len(), n_good, "every good message sent");
        baseline.push(sent);
    }
    assert_eq!(
        baseline[0], baseline[1],
        "same messages whatever the compression"
    );
    let baseline = &baseline[0];

    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let (mut noticed, mut good, mut good_out) = (0u64, 0u64, 0u64);
    let (mut refused, mut damaged, mut one_bad) = (0u64, 0u64, 0u64);
    for i in 0..N_BAD {
        let case = kits[rng.index(kits.len())].bad(&mut rng).unwrap();
        let name = format!("bad-{i:03}.mcap");
        let (r, sent) = replay_bytes(dir.path(), &name, &case.bytes);
        let e = by_kind.entry(case.kind).or_default();
        e.0 += 1;
        let what = format!("case {i} ({}, {:?})", case.kind, case.expect);
        if let Err(err) = &r {
            assert!(
                !err.to_string().contains("panicked"),
                "{what}: crashed: {err:#}"
            );
        }
        assert!(
            is_subsequence(&sent, baseline),
            "{what}: sent a message the good recording does not hold"
        );
        match case.expect {
            Expect::Refused => {
                let err = r.err().unwrap_or_else(|| panic!("{what}: not refused"));
                assert!(
                    err.to_string().contains(&name),
                    "{what}: the error names no file: {err:#}"
                );
                assert!(sent.is_empty(), "{what}");
                noticed += 1;
                refused += 1;
            }
            Expect::Damaged => {
                let s = r.unwrap_or_else(|e| panic!("{what}: {e:#}"));
                assert_eq!(
                    s.damaged,
                    1,
                    "{what}: not reported as cut or damaged ({} sent)",
                    sent.len()
                );
                noticed += 1;
                damaged += 1;
            }
            Expect::BadMessage(seq) => {
                let s = r.unwrap_or_else(|e| panic!("{what}: {e:#}"));
                assert_eq!((s.bad, s.damaged), (1, 0), "{what}");
                let mut want = baseline.clone();
                want.remove(seq as usize);
                assert_eq!(sent, want, "{what}: every other message, unchanged");
                good += want.len() as u64;
                good_out += sent.len() as u64;
                noticed += 1;
                one_bad += 1;
            }
        }
        e.1 += 1;
    }
    println!(
        "replay (mcap): {refused} files refused, {damaged} read up to the damage and counted, {one_bad} with one bad message skipped and counted"
    );
    for (kind, (n, ok)) in &by_kind {
        println!("  {kind}: {n} files, {ok} as expected");
    }
    Figures {
        node: "replay (mcap)",
        tried: N_BAD as u64,
        bad: N_BAD as u64,
        rejected: noticed,
        good,
        good_out,
        crashed: 0,
    }
    .print();
    assert_eq!(noticed, N_BAD as u64);
    assert!(
        by_kind.len() >= 12,
        "every kind of damage tried: {by_kind:?}"
    );
}
