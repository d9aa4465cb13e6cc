//! The native module's state: configurations, each worker's pipeline root, streams.
//!
//! Envoy creates a configuration on its main thread and runs streams on its workers. The
//! pipeline's roots (the stages' caches, chains and queues) are single-threaded, as in the Wasm
//! module's one-VM-per-worker: each worker builds its own root from the configuration the
//! first time it sees a stream of it. What Wasm shared between workers through host calls
//! (rate-limit buckets, break-glass nonces) is process-wide shared data ([`crate::host`]).
//!
//! A root's own calls (JWKS refresh, audit batches, Consent prefetch) are not tied to a
//! request: the worker hands them to the main thread, which sends them as configuration-level
//! callouts and puts the answers in the worker's inbox. The worker delivers them, and runs its
//! root's due ticks, at the start of its next hook. Envoy gives HTTP-filter modules no timer on
//! workers, so a thread of the module wakes the main thread every [`IDLE_PERIOD`] through each
//! configuration's scheduler; the main thread then serves the roots of idle workers itself
//! (their answers, their due ticks), under the worker thread's lock, which keeps a root and
//! its streams on one thread at a time ([`abi::WorkerLock`]). A busy worker serves its own.

use crate::abi::{
    self, ConfigHandle, Filter, HeaderKind, LogLevel, Scheduler, Status, ThreadLock, WorkerLock,
};
use crate::guard;
use crate::host::{self, CallAnswer, Current, InBody, Inbox, Metrics, NativeHost, Owner, Relayed};
use fhirgate::GatewayRoot;
use fhirgate_core::{IssueType, Rejection};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::Action;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

/// Once, when Envoy loads the module: Envoy's callbacks, the host, the logger, the panic hook.
pub fn program_init() -> bool {
    if let Err(missing) = abi::bind_callbacks() {
        let line = format!(
            "fhirgate native module {}: built for Envoy's dynamic-module ABI {} (Envoy 1.40), \
             but this Envoy does not export {missing}: refusing to load",
            env!("CARGO_PKG_VERSION"),
            abi::ABI_VERSION
        );
        if missing == "envoy_dynamic_module_callback_log" {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            abi::log(LogLevel::Error, &line);
        }
        return false;
    }
    fhirgate_proxy::native::install(&NativeHost);
    guard::install_panic_hook();
    if log::set_logger(&EnvoyLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    abi::log(
        LogLevel::Info,
        &format!(
            "fhirgate native module {} for Envoy's dynamic-module ABI {}",
            env!("CARGO_PKG_VERSION"),
            abi::ABI_VERSION
        ),
    );
    true
}

struct EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => LogLevel::Error,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Info => LogLevel::Info,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Trace => LogLevel::Trace,
        };
        abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// One filter configuration, shared by the main thread and the workers.
pub struct Config {
    id: u64,
    configuration: Vec<u8>,
    metrics: Arc<Metrics>,
    handle: ConfigHandle,
    scheduler: Arc<Scheduler>,
    /// The workers' roots, for the main thread to serve while they are idle.
    workers: Mutex<Vec<Weak<WorkerLock<Worker>>>>,
    /// Root calls waiting for the main thread.
    pending: Mutex<Vec<Relayed>>,
    /// Root calls under way: Envoy's callout id → the pipeline's token and the worker's inbox.
    in_flight: Mutex<HashMap<u64, (u32, Arc<Inbox>)>>,
}

pub type ConfigRef = Arc<Config>;

/// Envoy creates a configuration (main thread): the pipeline configures once here, so a bad
/// configuration is refused at load with the field named (the stages log it), and the
/// metrics it declares are defined while Envoy still allows it.
pub fn config_new(handle: ConfigHandle, _name: &[u8], configuration: &[u8]) -> Option<ConfigRef> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let metrics = Arc::new(Metrics::default());
    let current = Current {
        configuration: configuration.to_vec(),
        defining: Some(handle),
        metrics: Some(metrics.clone()),
        owner: Owner::Root,
        ..Current::default()
    };
    let (configured, _) = host::with_current(current, || {
        // This configuration defines its own metrics: ids the main thread cached for an
        // earlier one would skip that.
        fhirgate_proxy::forget_metric_ids();
        let mut root = GatewayRoot::default();
        root.on_configure(configuration.len())
    });
    if !configured {
        abi::log(LogLevel::Error, "fhirgate: configuration refused");
        return None;
    }
    // Without it the roots' calls (JWKS, audit batches) could never be sent.
    let Some(scheduler) = handle.scheduler() else {
        abi::log(
            LogLevel::Error,
            "fhirgate: configuration refused: Envoy gave no scheduler",
        );
        return None;
    };
    let config = Arc::new(Config {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        configuration: configuration.to_vec(),
        metrics,
        handle,
        scheduler: Arc::new(scheduler),
        workers: Mutex::default(),
        pending: Mutex::default(),
        in_flight: Mutex::default(),
    });
    lock(waking()).insert(config.id, config.scheduler.clone());
    start_idle_timer();
    Some(config)
}

/// A scheduler event: root calls to send.
const RELAY: u64 = 0;
/// A scheduler event: the idle timer's, to serve idle workers' roots.
const IDLE: u64 = 1;
/// How often the main thread serves idle workers' roots: the granularity of their ticks
/// (JWKS and revocation refreshes, audit batches, Consent change polls) with no traffic.
pub const IDLE_PERIOD: Duration = Duration::from_millis(200);

/// The schedulers the idle timer wakes, by configuration. A configuration removes its own when
/// it is dropped (on whichever thread held its last reference: Envoy's main thread, or a
/// worker whose stream outlived Envoy's handle), before its scheduler is deleted; the timer
/// commits only while holding this lock, so it never commits a deleted scheduler. The timer
/// never holds a reference of its own past the lock.
fn waking() -> &'static Mutex<HashMap<u64, Arc<Scheduler>>> {
    static WAKING: OnceLock<Mutex<HashMap<u64, Arc<Scheduler>>>> = OnceLock::new();
    WAKING.get_or_init(Mutex::default)
}

fn start_idle_timer() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("fhirgate-idle".to_string())
            .spawn(|| loop {
                std::thread::sleep(IDLE_PERIOD);
                for scheduler in lock(waking()).values() {
                    scheduler.commit(IDLE);
                }
            });
        if spawned.is_err() {
            abi::log(
                LogLevel::Error,
                "fhirgate: no idle timer thread; roots progress only with traffic",
            );
        }
    });
}

impl Drop for Config {
    fn drop(&mut self) {
        let waker = lock(waking()).remove(&self.id);
        drop(waker);
    }
}

/// Main thread: a scheduler event.
pub fn scheduled(config: &Config, event: u64) {
    if event == IDLE {
        serve_idle(config);
    }
    relay_calls(config);
}

/// Main thread: serves the roots of the workers that are idle now (a busy worker serves its
/// own at its next hook).
fn serve_idle(config: &Config) {
    let workers: Vec<Arc<WorkerLock<Worker>>> = {
        let mut workers = lock(&config.workers);
        workers.retain(|w| w.strong_count() > 0);
        workers.iter().filter_map(Weak::upgrade).collect()
    };
    for worker in workers {
        // Busy (None): it serves its root at its next hook.
        let _ = worker.try_hold(|cell| {
            if guard::catching(|| serve_root(config, cell, None)).is_none() {
                mark_broken(cell);
                abi::log(LogLevel::Error, "fhirgate: an idle root failed");
            }
        });
    }
}

/// Main thread: sends the root calls the workers handed over.
pub fn relay_calls(config: &Config) {
    let calls = std::mem::take(&mut *lock(&config.pending));
    for call in calls {
        let headers: Vec<(&str, &str)> = call
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match config
            .handle
            .callout(&call.cluster, &headers, &call.body, call.timeout_ms)
        {
            Some(id) => {
                lock(&config.in_flight).insert(id, (call.token, call.inbox));
            }
            // Not sent: answered as a failed call, as a Wasm host would.
            None => lock(&call.inbox).push((call.token, CallAnswer::default())),
        }
    }
}

/// Main thread: a relayed call's answer, to its worker's inbox; delivered now if the worker
/// is idle (an audit batch's acknowledgement lets the next go at once).
pub fn relayed_answer(config: &Config, callout_id: u64, answer: CallAnswer) {
    let relayed = lock(&config.in_flight).remove(&callout_id);
    if let Some((token, inbox)) = relayed {
        lock(&inbox).push((token, answer));
        // What the root sends next goes with the scheduler's next event.
        serve_idle(config);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A worker's pipeline root for one configuration.
pub struct Worker {
    root: GatewayRoot,
    inbox: Arc<Inbox>,
    tick_period: Option<Duration>,
    next_tick: SystemTime,
    /// A panic left the root half-updated: the worker's next stream builds a new one.
    broken: bool,
}

type SharedWorker = Arc<WorkerLock<Worker>>;

thread_local! {
    /// This worker's roots, by configuration id, with their configuration (gone once Envoy
    /// destroyed it: then the root goes).
    static WORKERS: RefCell<HashMap<u64, (Weak<Config>, SharedWorker)>> = RefCell::new(HashMap::new());
    /// The lock of this worker thread's roots.
    static THREAD_LOCK: Arc<ThreadLock> = Arc::default();
}

/// A root a panic left half-updated: the worker's next stream builds a new one.
fn mark_broken(cell: &RefCell<Worker>) {
    if let Ok(mut worker) = cell.try_borrow_mut() {
        worker.broken = true;
    }
}

fn worker_for(config: &ConfigRef, filter: Filter) -> Option<SharedWorker> {
    let known = WORKERS.with(|w| w.borrow().get(&config.id).map(|(_, w)| w.clone()));
    if let Some(worker) = known {
        let broken = worker.hold(|cell| cell.try_borrow().is_ok_and(|w| w.broken));
        if !broken {
            return Some(worker);
        }
    }
    // A new configuration on this worker (or a broken root): the roots of replaced ones go.
    WORKERS.with(|w| {
        let mut workers = w.borrow_mut();
        workers.remove(&config.id);
        workers.retain(|_, (config, _)| config.strong_count() > 0)
    });
    let inbox: Arc<Inbox> = Arc::default();
    let current = Current {
        filter: Some(filter),
        configuration: config.configuration.clone(),
        metrics: Some(config.metrics.clone()),
        owner: Owner::Root,
        inbox: Some(inbox.clone()),
        ..Current::default()
    };
    let mut root = GatewayRoot::default();
    let (configured, after) =
        host::with_current(current, || root.on_configure(config.configuration.len()));
    if !configured {
        return None;
    }
    let worker = Arc::new(WorkerLock::new(
        THREAD_LOCK.with(Arc::clone),
        Worker {
            root,
            inbox,
            tick_period: after.tick_period,
            next_tick: SystemTime::now(),
            broken: false,
        },
    ));
    hand_over(config, after.root_calls);
    lock(&config.workers).push(Arc::downgrade(&worker));
    WORKERS.with(|w| {
        w.borrow_mut()
            .insert(config.id, (Arc::downgrade(config), worker.clone()))
    });
    Some(worker)
}

/// Root calls to the main thread.
fn hand_over(config: &Config, calls: Vec<Relayed>) {
    if calls.is_empty() {
        return;
    }
    lock(&config.pending).extend(calls);
    config.scheduler.commit(RELAY);
}

pub fn stream_new(config: &ConfigRef, filter: Filter) -> Option<Stream> {
    let worker = worker_for(config, filter);
    let context = worker.as_ref().and_then(|w| {
        w.hold(|cell| {
            cell.try_borrow()
                .ok()
                .and_then(|w| w.root.create_http_context(0))
        })
    });
    Some(Stream {
        inner: RefCell::new(Inner {
            config: config.clone(),
            worker,
            filter,
            context,
            calls: HashMap::new(),
            started: SystemTime::now(),
            failed: false,
            completed: false,
        }),
        complete_pending: Cell::new(false),
    })
}

/// One request. Envoy may call `stream_complete` while another of its hooks is still running
/// (a local reply completes the stream); that call only marks the completion, which the
/// running hook finishes.
pub struct Stream {
    inner: RefCell<Inner>,
    complete_pending: Cell<bool>,
}

struct Inner {
    config: ConfigRef,
    /// `None`: the worker's root could not configure; the stream is refused (503).
    worker: Option<SharedWorker>,
    filter: Filter,
    context: Option<Box<dyn HttpContext>>,
    /// The stream's calls under way: Envoy's callout id → the pipeline's token.
    calls: HashMap<u64, u32>,
    started: SystemTime,
    /// The pipeline failed (a panic, no root): the stream was answered 503 and is let be.
    failed: bool,
    completed: bool,
}

impl Drop for Inner {
    /// The context shares the root's state: it goes under the worker's lock.
    fn drop(&mut self) {
        let (Some(worker), Some(context)) = (self.worker.take(), self.context.take()) else {
            return;
        };
        worker.hold(|_| drop(context));
    }
}

fn status(action: Action) -> Status {
    match action {
        Action::Continue => Status::Continue,
        _ => Status::Stop,
    }
}

impl Stream {
    pub fn request_headers(&self, end_of_stream: bool) -> Status {
        self.hook(None, |c, _| {
            status(c.on_http_request_headers(0, end_of_stream))
        })
    }

    pub fn request_body(&self, end_of_stream: bool) -> Status {
        self.hook(Some(InBody::Request), |c, filter| {
            let size = host::body_size(filter, InBody::Request);
            status(c.on_http_request_body(size, end_of_stream))
        })
    }

    pub fn request_trailers(&self) -> Status {
        self.hook(None, |c, _| status(c.on_http_request_trailers(0)))
    }

    pub fn response_headers(&self, end_of_stream: bool) -> Status {
        self.hook(None, |c, _| {
            status(c.on_http_response_headers(0, end_of_stream))
        })
    }

    pub fn response_body(&self, end_of_stream: bool) -> Status {
        self.hook(Some(InBody::Response), |c, filter| {
            let size = host::body_size(filter, InBody::Response);
            status(c.on_http_response_body(size, end_of_stream))
        })
    }

    pub fn response_trailers(&self) -> Status {
        self.hook(None, |c, _| status(c.on_http_response_trailers(0)))
    }

    pub fn callout_done(&self, callout_id: u64, answer: CallAnswer) {
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return;
        };
        let Some(token) = inner.calls.remove(&callout_id) else {
            return;
        };
        let headers = answer.headers.len();
        let body = answer.body.len();
        drop(inner);
        self.hook_with(None, Some(answer), |c, _| {
            c.on_http_call_response(token, headers, body, 0);
            Status::Continue
        });
    }

    /// The stream is done (before Envoy's access log): the pipeline's log callback.
    pub fn complete(&self) {
        match self.inner.try_borrow_mut() {
            Ok(inner) => {
                drop(inner);
                self.finish();
            }
            // Inside another of this stream's hooks: it finishes when that hook returns.
            Err(_) => self.complete_pending.set(true),
        }
    }

    fn finish(&self) {
        let done = match self.inner.try_borrow_mut() {
            Ok(mut inner) => std::mem::replace(&mut inner.completed, true),
            Err(_) => return,
        };
        if !done {
            // Every request is logged, a failed one too (its record says how it ended).
            self.run_with(None, None, true, |c, _| {
                c.on_log();
                Status::Continue
            });
            // What it left to send (its audit record) goes with its root's next tick, on this
            // worker or, idle, from the main thread, batched as in the Wasm module.
        }
    }

    fn hook(
        &self,
        in_body: Option<InBody>,
        f: impl FnOnce(&mut dyn HttpContext, Filter) -> Status,
    ) -> Status {
        self.hook_with(in_body, None, f)
    }

    /// A hook of this stream; a completion Envoy announced inside it runs after it.
    fn hook_with(
        &self,
        in_body: Option<InBody>,
        answer: Option<CallAnswer>,
        f: impl FnOnce(&mut dyn HttpContext, Filter) -> Status,
    ) -> Status {
        let status = self.run_with(in_body, answer, false, f);
        if self.complete_pending.replace(false) {
            self.finish();
        }
        status
    }

    /// Runs the pipeline for one hook: the worker's root first (relayed answers, due ticks),
    /// then `f` with this stream as the host's context; a panic answers 503.
    /// `logging`: the log callback, which runs on a failed stream too and answers nothing.
    fn run_with(
        &self,
        in_body: Option<InBody>,
        answer: Option<CallAnswer>,
        logging: bool,
        f: impl FnOnce(&mut dyn HttpContext, Filter) -> Status,
    ) -> Status {
        // Held (a hook inside a hook) or failed: nothing more passes.
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return Status::Stop;
        };
        if inner.failed && !logging {
            return Status::Stop;
        }
        let inner = &mut *inner;
        let filter = inner.filter;
        let (Some(worker), Some(context)) = (inner.worker.clone(), inner.context.as_mut()) else {
            if !std::mem::replace(&mut inner.failed, true) {
                refuse(
                    filter,
                    "the gateway's pipeline could not start on this worker",
                );
            }
            return Status::Stop;
        };
        let config = inner.config.clone();
        let started = inner.started;
        let (result, after) = worker.hold(|cell| {
            let current = Current {
                filter: Some(filter),
                in_body,
                owner: Owner::Stream,
                metrics: Some(config.metrics.clone()),
                answer,
                inbox: cell.try_borrow().ok().map(|w| w.inbox.clone()),
                started: Some(started),
                ..Current::default()
            };
            let (result, after) = host::with_current(current, || {
                guard::catching(|| {
                    serve_root(&config, cell, Some(filter));
                    #[cfg(feature = "test-hooks")]
                    if !logging {
                        test_panic(filter);
                    }
                    f(context.as_mut(), filter)
                })
            });
            if result.is_none() {
                mark_broken(cell);
            }
            (result, after)
        });
        inner.calls.extend(after.stream_calls);
        hand_over(&config, after.root_calls);
        match result {
            Some(status) => status,
            None => {
                let failed_before = std::mem::replace(&mut inner.failed, true);
                if !failed_before && !logging {
                    refuse(filter, "the gateway failed on this request");
                }
                Status::Stop
            }
        }
    }
}

/// The test build's panic trigger: a request with `x-fhirgate-test-panic` panics inside the
/// pipeline, as a bug would (the 503 and the rebuilt root are tested end to end).
#[cfg(feature = "test-hooks")]
#[allow(clippy::panic)]
fn test_panic(filter: Filter) {
    if filter
        .header(HeaderKind::Request, "x-fhirgate-test-panic")
        .is_some()
    {
        panic!("x-fhirgate-test-panic");
    }
}

/// A worker's root, before a stream's hook (`filter`) or while the worker is idle (main
/// thread, no stream): answers relayed to it, then its due tick.
fn serve_root(config: &Config, cell: &RefCell<Worker>, filter: Option<Filter>) {
    // Borrowed: a hook inside a hook, whose outer hook served it.
    let Ok(mut worker) = cell.try_borrow_mut() else {
        return;
    };
    // Half-updated by a panic: not run again (its worker builds a new one at its next stream).
    if worker.broken {
        return;
    }
    let worker = &mut *worker;
    let answers = std::mem::take(&mut *lock(&worker.inbox));
    let now = SystemTime::now();
    let tick_due = worker.tick_period.is_some() && now >= worker.next_tick;
    if answers.is_empty() && !tick_due {
        return;
    }
    let root_context = |answer: Option<CallAnswer>| Current {
        filter,
        // Without a stream (main thread) metrics are counted through the configuration.
        config: filter.is_none().then_some(config.handle),
        owner: Owner::Root,
        metrics: Some(config.metrics.clone()),
        answer,
        inbox: Some(worker.inbox.clone()),
        ..Current::default()
    };
    let mut calls = Vec::new();
    for (token, answer) in answers {
        let (headers, body) = (answer.headers.len(), answer.body.len());
        let (_, after) = host::with_current(root_context(Some(answer)), || {
            worker.root.on_http_call_response(token, headers, body, 0)
        });
        calls.extend(after.root_calls);
    }
    if let (true, Some(period)) = (tick_due, worker.tick_period) {
        worker.next_tick = now + period;
        let (_, after) = host::with_current(root_context(None), || worker.root.on_tick());
        calls.extend(after.root_calls);
    }
    hand_over(config, calls);
}

/// A hook of a stream whose creation failed: the request is answered 503 (once: not when a
/// response is already under way), and nothing passes.
pub fn refuse_unbuilt(filter: Filter) -> Status {
    if filter.header(HeaderKind::Response, ":status").is_none() {
        refuse(
            filter,
            "the gateway's pipeline could not start for this request",
        );
    }
    Status::Stop
}

/// Answers 503 with an OperationOutcome; the reason is logged, never the request.
fn refuse(filter: Filter, why: &str) {
    abi::log(LogLevel::Error, &format!("fhirgate: {why}; answered 503"));
    let rejection = Rejection::new(503, "gateway-failure", IssueType::Exception, why);
    let headers = rejection.response_headers();
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    filter.send_response(503, &pairs, &rejection.body(), "fhirgate_failure");
}
