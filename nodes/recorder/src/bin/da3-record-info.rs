//! `da3-record-info FILE...`: streams, message counts, time span and rates of
//! recordings (several files, e.g. rotated ones, are also summed up). A file
//! cut short (killed recorder) is read up to its last complete batch.

use std::collections::BTreeMap;
use std::path::PathBuf;

use eyre::Result;
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

fn main() -> Result<()> {
    let files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if files.is_empty() || files.iter().any(|f| f == "-h" || f == "--help") {
        eprintln!("usage: da3-record-info FILE.arrows...");
        std::process::exit(2);
    }
    let mut total: BTreeMap<String, Stats> = BTreeMap::new();
    let mut failed = 0;
    for f in &files {
        println!("{}:", f.display());
        let mut r = match RecordingReader::open(f) {
            Ok(r) => r,
            Err(e) => {
                println!("  error: {e:#}");
                failed += 1;
                continue;
            }
        };
        let mut streams: BTreeMap<String, Stats> = BTreeMap::new();
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
                    println!("  error: {e:#}");
                    failed += 1;
                    break;
                }
            }
        }
        println!("  {} complete batches", r.batches());
        if let Some(why) = r.truncated() {
            println!("  TRUNCATED: {why}");
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
