//! Root: compiles the configuration, owns this worker's chain and collector queue, and
//! flushes the queue on a timer.

use crate::http::AuditFilter;
use fhirgate_core::audit::chain::Chain;
use fhirgate_core::audit::sink::{AuditPolicy, Batch, Queue};
use fhirgate_core::audit::Record;
use fhirgate_core::pipeline::Stage;
use fhirgate_proxy::{count, host, StageRoot};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

pub const FILTER: &str = "fhirgate.audit";

pub struct Worker {
    pub policy: AuditPolicy,
    pub chain: RefCell<Chain>,
    pub queue: RefCell<Queue>,
}

impl Worker {
    /// Seals a record, logs it and (with `queue`) queues it for the collector.
    pub fn emit(&self, record: Record, queue: bool) -> Record {
        let (sealed, line) = self.chain.borrow_mut().seal_line(record);
        if self.policy.config.log {
            log::info!("{FILTER}: {line}");
        }
        if sealed.break_glass {
            // The alert stream: emergency access is logged at warning level and counted apart.
            log::warn!(
                "{FILTER}: ALERT break-glass access (stream {} record {})",
                sealed.stream,
                sealed.seq
            );
            count(FILTER, "break_glass", "");
        }
        count(FILTER, "events", "");
        if queue
            && self.policy.config.collector.is_some()
            && !self.queue.borrow_mut().push(sealed.clone())
        {
            count(FILTER, "dropped", "queue_full");
        }
        sealed
    }
}

#[derive(Default)]
pub struct AuditRoot {
    worker: Option<Rc<Worker>>,
    /// The batch call under way.
    in_flight: Option<u32>,
}

impl AuditRoot {
    fn send(&mut self, batch: Batch) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some(c) = worker.policy.config.collector.as_ref() else {
            return;
        };
        let headers = vec![
            (":method", "POST"),
            (":path", c.path.as_str()),
            (":authority", c.authority.as_str()),
            ("content-type", batch.content_type),
        ];
        match host::dispatch(
            &c.cluster,
            headers,
            Some(&batch.body),
            Duration::from_millis(c.timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => {
                log::warn!("{FILTER}: collector call could not start: {status:?}");
                count(FILTER, "sink_errors", "");
                // A failed attempt: retried on the next tick until its attempts are used.
                let dropped = worker.queue.borrow_mut().finished(false, c);
                for _ in 0..dropped {
                    count(FILTER, "dropped", "attempts_used");
                }
            }
        }
    }
}

impl StageRoot for AuditRoot {
    fn call_response(&mut self, token_id: u32, _body_size: usize) -> bool {
        if self.in_flight != Some(token_id) {
            return false;
        }
        self.in_flight = None;
        let Some(worker) = self.worker.clone() else {
            return true;
        };
        let Some(c) = worker.policy.config.collector.as_ref() else {
            return true;
        };
        let ok = host::call_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|s| (200..300).contains(&s));
        if !ok {
            count(FILTER, "sink_errors", "");
        }
        let dropped = worker.queue.borrow_mut().finished(ok, c);
        for _ in 0..dropped {
            count(FILTER, "dropped", "attempts_used");
        }
        // More waiting: send the next batch now rather than a tick later.
        if ok {
            let next = worker.queue.borrow_mut().next_batch(c);
            if let Some(batch) = next {
                self.send(batch);
            }
        }
        true
    }

    fn configure(&mut self, config: &[u8]) -> bool {
        fhirgate_proxy::declare(
            FILTER,
            &[
                ("events", ""),
                ("sink_errors", ""),
                ("dropped", "queue_full"),
                ("dropped", "attempts_used"),
                ("fail_closed", "refused"),
                ("break_glass", ""),
                ("denied", ""),
            ],
        );
        // Defined now, so it exists from the start (and in a host that defines metrics only
        // at configuration).
        fhirgate_proxy::gauge(FILTER, "queue_depth", 0);
        let Some(policy) = fhirgate_proxy::load_config(config, FILTER, AuditPolicy::from_json)
        else {
            return false;
        };
        let started = host::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // One stream per worker VM and configuration: the start time in nanoseconds tells
        // the workers (and restarts) apart.
        let stream = format!("{started:x}");
        let chain = Chain::new(
            stream,
            policy.config.chain.kid.clone(),
            policy.chain_key.clone(),
        );
        let capacity = policy.config.collector.as_ref().map_or(0, |c| c.queue_size);
        self.worker = Some(Rc::new(Worker {
            policy,
            chain: RefCell::new(chain),
            queue: RefCell::new(Queue::new(capacity)),
        }));
        true
    }

    fn tick_period(&self) -> Option<Duration> {
        let worker = self.worker.as_ref()?;
        let c = worker.policy.config.collector.as_ref()?;
        Some(Duration::from_millis(c.flush_interval_ms))
    }

    fn tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some(c) = worker.policy.config.collector.as_ref() else {
            return;
        };
        fhirgate_proxy::gauge(FILTER, "queue_depth", worker.queue.borrow().depth() as u64);
        if self.in_flight.is_some() {
            return;
        }
        let batch = worker.queue.borrow_mut().next_batch(c);
        if let Some(batch) = batch {
            self.send(batch);
        }
    }

    fn create(&self) -> Box<dyn Stage> {
        Box::new(AuditFilter::new(self.worker.clone()))
    }
}
