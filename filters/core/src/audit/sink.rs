//! The collector sink's queue: records wait in a bounded queue, leave in batches, come back
//! to the front when a batch fails, and are dropped (counted) when the queue is full or a batch
//! has used its attempts. The filter crate sends; this decides what and when.

use super::config::{AuditConfig, CollectorConfig, Format};
use super::Record;
use std::collections::VecDeque;

pub struct Queue {
    records: VecDeque<Record>,
    capacity: usize,
    /// The batch being sent and how many attempts it has had.
    in_flight: Option<(Vec<Record>, u32)>,
    pub dropped: u64,
    pub sent: u64,
}

/// What to send now.
pub struct Batch {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue {
            records: VecDeque::new(),
            capacity,
            in_flight: None,
            dropped: 0,
            sent: 0,
        }
    }

    /// Adds a record; false (and counted as dropped) when the queue is full.
    pub fn push(&mut self, r: Record) -> bool {
        if self.records.len() >= self.capacity {
            self.dropped += 1;
            return false;
        }
        self.records.push_back(r);
        true
    }

    pub fn depth(&self) -> usize {
        self.records.len() + self.in_flight.as_ref().map_or(0, |(b, _)| b.len())
    }

    /// The batch to send now: the unfinished one again (a retry), else the next records.
    /// The caller sends at most one at a time and reports each with [`Self::finished`].
    pub fn next_batch(&mut self, c: &CollectorConfig) -> Option<Batch> {
        if self.in_flight.is_none() {
            if self.records.is_empty() {
                return None;
            }
            let n = self.records.len().min(c.batch_size);
            self.in_flight = Some((self.records.drain(..n).collect(), 0));
        }
        let (batch, _) = self.in_flight.as_ref()?;
        Some(Batch {
            content_type: content_type(c.format),
            body: encode(c.format, batch),
        })
    }

    /// The collector acknowledged the batch (`ok`) or not (error status, timeout, call not
    /// started). A failed batch is kept for the next [`Self::next_batch`] until it has used
    /// its attempts, then dropped. Returns how many records were dropped.
    pub fn finished(&mut self, ok: bool, c: &CollectorConfig) -> u64 {
        let Some((batch, attempts)) = self.in_flight.take() else {
            return 0;
        };
        if ok {
            self.sent += batch.len() as u64;
            return 0;
        }
        if attempts + 1 >= c.attempts {
            self.dropped += batch.len() as u64;
            return batch.len() as u64;
        }
        self.in_flight = Some((batch, attempts + 1));
        0
    }
}

pub fn content_type(format: Format) -> &'static str {
    match format {
        Format::Json => "application/x-ndjson",
        Format::Fhir => "application/fhir+json",
    }
}

/// Records as the collector takes them: JSON lines, or a FHIR batch Bundle of AuditEvents.
pub fn encode(format: Format, records: &[Record]) -> Vec<u8> {
    match format {
        Format::Json => {
            let mut out = Vec::new();
            for r in records {
                if let Ok(line) = serde_json::to_vec(r) {
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                }
            }
            out
        }
        Format::Fhir => serde_json::to_vec(&super::fhir::batch(records)).unwrap_or_default(),
    }
}

/// The compiled audit policy: config plus decoded keys.
pub struct AuditPolicy {
    pub config: AuditConfig,
    pub chain_key: Vec<u8>,
    pub ids: Option<super::IdHasher>,
}

impl AuditPolicy {
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::config::ConfigError> {
        let config = AuditConfig::from_json(bytes)?;
        let chain_key = super::config::decode_key("chain", &config.chain)?;
        let ids = match &config.hash_ids {
            Some(k) => Some(super::IdHasher::new(super::config::decode_key(
                "hashIds", k,
            )?)),
            None => None,
        };
        Ok(AuditPolicy {
            config,
            chain_key,
            ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{record, Facts};

    fn collector(batch: usize, attempts: u32) -> CollectorConfig {
        serde_json::from_value(serde_json::json!({"cluster": "c", "path": "/p", "batchSize": batch, "attempts": attempts})).unwrap()
    }

    fn r() -> Record {
        record(
            &Facts {
                status: 200,
                ..Facts::default()
            },
            "/fhir/r4",
            None,
        )
    }

    #[test]
    fn records_leave_in_batches_one_at_a_time() {
        let c = collector(2, 3);
        let mut q = Queue::new(10);
        for _ in 0..5 {
            assert!(q.push(r()));
        }
        let b = q.next_batch(&c).unwrap();
        assert_eq!(b.body.iter().filter(|&&x| x == b'\n').count(), 2);
        assert_eq!(
            q.next_batch(&c).unwrap().body,
            b.body,
            "the unfinished batch again, nothing new"
        );
        assert_eq!(q.finished(true, &c), 0);
        assert_eq!((q.sent, q.depth()), (2, 3));
    }

    #[test]
    fn failed_batches_are_retried_then_dropped_and_counted() {
        let c = collector(10, 2);
        let mut q = Queue::new(10);
        q.push(r());
        q.next_batch(&c).unwrap();
        assert_eq!(q.finished(false, &c), 0, "kept for a second attempt");
        assert!(q.next_batch(&c).is_some());
        assert_eq!(q.finished(false, &c), 1, "attempts used: dropped");
        assert_eq!((q.dropped, q.depth()), (1, 0));
        assert!(q.next_batch(&c).is_none());
    }

    #[test]
    fn a_full_queue_drops_new_records_and_counts_them() {
        let mut q = Queue::new(2);
        assert!(q.push(r()) && q.push(r()));
        assert!(!q.push(r()));
        assert_eq!(q.dropped, 1);
    }

    #[test]
    fn the_fhir_format_is_a_batch_bundle() {
        let body = encode(Format::Fhir, &[r(), r()]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["entry"].as_array().map(Vec::len)),
            (Some("batch"), Some(2))
        );
    }
}
