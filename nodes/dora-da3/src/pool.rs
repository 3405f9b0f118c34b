//! One model replica per device, each on its own thread; work goes to an
//! idle replica and results come back in dispatch order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, Sender};
use da3::Da3Model;
use eyre::Result;

use crate::config::Config;
use crate::engine::{infer, UnitOut, WorkUnit};

/// A finished unit, or why it failed (with the frames it held).
pub struct Finished {
    pub replica: usize,
    pub seq: u64,
    pub result: std::result::Result<UnitOut, (String, Vec<String>)>,
}

pub struct Pool {
    senders: Vec<Sender<WorkUnit>>,
    in_flight: Vec<usize>,
    pub results: Receiver<Finished>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

fn describe(unit: &WorkUnit) -> Vec<String> {
    unit.views
        .iter()
        .map(|v| {
            format!(
                "{}#{}",
                v.input,
                v.info.frame_id.map_or("?".into(), |i| i.to_string())
            )
        })
        .collect()
}

impl Pool {
    /// Starts one worker thread per model.
    pub fn start(models: Vec<Da3Model>, cfg: Arc<Config>) -> Self {
        let (res_tx, results) = unbounded();
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for (idx, model) in models.into_iter().enumerate() {
            let (tx, rx) = unbounded::<WorkUnit>();
            let res_tx = res_tx.clone();
            let cfg = cfg.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("da3-replica-{idx}"))
                    .spawn(move || {
                        for unit in rx {
                            let t0 = Instant::now();
                            let result = match infer(&model, &cfg, &unit) {
                                Ok(views) => Ok(UnitOut {
                                    seq: unit.seq,
                                    views,
                                    emit: unit.emit.clone(),
                                    chain_key: unit.chain_key.clone(),
                                    replica: idx,
                                    infer_ms: t0.elapsed().as_secs_f64() * 1e3,
                                }),
                                Err(e) => Err((format!("{e:#}"), describe(&unit))),
                            };
                            if res_tx
                                .send(Finished {
                                    replica: idx,
                                    seq: unit.seq,
                                    result,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                    })
                    .expect("spawn replica thread"),
            );
            senders.push(tx);
        }
        Self {
            in_flight: vec![0; senders.len()],
            senders,
            results,
            handles,
        }
    }

    /// The idle replica with the lowest index, if any.
    pub fn idle(&self) -> Option<usize> {
        self.in_flight.iter().position(|&n| n == 0)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().sum()
    }

    pub fn dispatch(&mut self, replica: usize, unit: WorkUnit) -> Result<()> {
        self.in_flight[replica] += 1;
        self.senders[replica]
            .send(unit)
            .map_err(|_| eyre::eyre!("replica {replica} has stopped"))
    }

    pub fn done(&mut self, replica: usize) {
        self.in_flight[replica] = self.in_flight[replica].saturating_sub(1);
    }

    /// Stops the workers after their current unit.
    pub fn shutdown(self) {
        drop(self.senders);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// Releases results in sequence order.
pub struct Reorder<T> {
    next: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            next: 0,
            waiting: BTreeMap::new(),
        }
    }
}

impl<T> Reorder<T> {
    pub fn insert(&mut self, seq: u64, item: T) {
        self.waiting.insert(seq, item);
    }

    pub fn pop(&mut self) -> Option<T> {
        let item = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_releases_in_sequence() {
        let mut r = Reorder::default();
        r.insert(2, "c");
        r.insert(1, "b");
        assert_eq!(r.pop(), None);
        r.insert(0, "a");
        assert_eq!(r.pop(), Some("a"));
        assert_eq!(r.pop(), Some("b"));
        assert_eq!(r.pop(), Some("c"));
        assert_eq!(r.pop(), None);
    }
}
