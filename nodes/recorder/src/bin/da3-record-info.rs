//! `da3-record-info FILE...`: streams, message counts, time span and rates of
//! recordings, Arrow IPC or MCAP (several files, e.g. rotated ones, are also
//! summed up). A file cut short (killed recorder) is read up to its last
//! complete batch or chunk.

use std::collections::BTreeMap;
use std::path::PathBuf;

use std::path::Path;

use eyre::Result;
use recorder::format::Format;
use recorder::mcap_recording::McapRecordingReader;
use recorder::recording::{row_infos, RecordingReader};

#[derive(Default, Clone)]
struct Stats {
    count: u64,
    bytes: u64,
    first_ns: Option<i64>,
    last_ns: Option<i64>,
    arrow_type: String,
}

impl Stats {
    fn add(&mut self, recv_ns: i64, bytes: usize, ty: &str) {
        self.count += 1;
        self.bytes += bytes as u64;
        self.first_ns = Some(self.first_ns.map_or(recv_ns, |f| f.min(recv_ns)));
        self.last_ns = Some(self.last_ns.map_or(recv_ns, |l| l.max(recv_ns)));
        if self.arrow_type.is_empty() {
            self.arrow_type = ty.to_string();
        } else if self.arrow_type != ty && !self.arrow_type.ends_with(" (mixed)") {
            self.arrow_type.push_str(" (mixed)");
        }
    }
    fn merge(&mut self, o: &Stats) {
        self.count += o.count;
        self.bytes += o.bytes;
        for t in [o.first_ns, o.last_ns].into_iter().flatten() {
            self.first_ns = Some(self.first_ns.map_or(t, |f| f.min(t)));
            self.last_ns = Some(self.last_ns.map_or(t, |l| l.max(t)));
        }
        if self.arrow_type.is_empty() {
            self.arrow_type = o.arrow_type.clone();
        }
    }
    fn span_s(&self) -> f64 {
        match (self.first_ns, self.last_ns) {
            (Some(f), Some(l)) => (l - f) as f64 / 1e9,
            _ => 0.0,
        }
    }
}

fn utc(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S%.3f UTC")
        .to_string()
}

fn print_table(streams: &BTreeMap<String, Stats>) {
    let mut all = Stats::default();
    for s in streams.values() {
        all.merge(s);
    }
    match (all.first_ns, all.last_ns) {
        (Some(f), Some(l)) => println!(
            "  {} messages, {:.3} s: {} .. {}",
            all.count,
            all.span_s(),
            utc(f),
            utc(l)
        ),
        _ => println!("  no messages"),
    }
    if streams.is_empty() {
        return;
    }
    let w = streams.keys().map(String::len).max().unwrap_or(6).max(6);
    println!(
        "  {:<w$}  {:>8}  {:>9}  {:>9}  {:>12}  arrow type",
        "stream", "messages", "span s", "rate Hz", "avg bytes"
    );
    for (name, s) in streams {
        let span = s.span_s();
        let rate = if s.count > 1 && span > 0.0 {
            format!("{:.2}", (s.count - 1) as f64 / span)
        } else {
            "-".into()
        };
        println!(
            "  {name:<w$}  {:>8}  {:>9.3}  {:>9}  {:>12}  {}",
            s.count,
            span,
            rate,
            s.bytes / s.count.max(1),
            s.arrow_type
        );
    }
}

/// Reads an Arrow IPC recording's rows into `streams` (printing its batch count).
fn arrow_file(f: &Path, streams: &mut BTreeMap<String, Stats>) -> Result<()> {
    let mut r = RecordingReader::open(f)?;
    let mut res = Ok(());
    while let Some(b) = r.next_batch() {
        match row_infos(&b) {
            Ok(rows) => {
                for row in rows {
                    streams.entry(row.stream.to_string()).or_default().add(
                        row.recv_ns,
                        row.payload_len,
                        row.arrow_type,
                    );
                }
            }
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    println!("  arrow, {} complete batches", r.batches());
    if let Some(why) = r.truncated() {
        println!("  TRUNCATED: {why}");
    }
    res
}

/// Reads an MCAP recording's records into `streams` (payloads not decoded).
fn mcap_file(f: &Path, streams: &mut BTreeMap<String, Stats>) -> Result<()> {
    let mut r = McapRecordingReader::open(f)?;
    let mut bad = 0;
    while let Some(info) = r.next_info() {
        match info {
            Ok(i) => {
                streams
                    .entry(i.stream)
                    .or_default()
                    .add(i.recv_ns, i.payload_len, &i.arrow_type)
            }
            Err(e) => {
                bad += 1;
                println!("  bad record: {e:#}");
            }
        }
    }
    println!("  mcap, {} records ({bad} bad)", r.records());
    if let Some(why) = r.truncated() {
        println!("  TRUNCATED: {why}");
    }
    if bad > 0 {
        eyre::bail!("{bad} records do not decode");
    }
    Ok(())
}

fn main() -> Result<()> {
    let files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if files.is_empty() || files.iter().any(|f| f == "-h" || f == "--help") {
        eprintln!("usage: da3-record-info FILE.arrows|FILE.mcap...");
        std::process::exit(2);
    }
    let mut total: BTreeMap<String, Stats> = BTreeMap::new();
    let mut failed = 0;
    for f in &files {
        println!("{}:", f.display());
        let mut streams: BTreeMap<String, Stats> = BTreeMap::new();
        let read = match Format::of_file(f) {
            Ok(Format::Arrow) => arrow_file(f, &mut streams),
            Ok(Format::Mcap) => mcap_file(f, &mut streams),
            Err(e) => Err(e),
        };
        if let Err(e) = read {
            println!("  error: {e:#}");
            failed += 1;
            if streams.is_empty() {
                continue;
            }
        }
        print_table(&streams);
        for (k, s) in &streams {
            total.entry(k.clone()).or_default().merge(s);
        }
    }
    if files.len() > 1 {
        println!("all {} files:", files.len());
        print_table(&total);
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
