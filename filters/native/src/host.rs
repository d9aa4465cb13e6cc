//! The proxy-wasm host calls the pipeline makes, answered by Envoy through the dynamic-module
//! ABI ([`crate::abi`]). What a call acts on — which stream, which configuration, the answer
//! of which dispatched call — is this thread's [`Current`], set by [`crate::module`] around
//! every hook it hands to the pipeline.

use crate::abi::{Attribute, BodyKind, ConfigHandle, Filter, HeaderKind};
pub use crate::metrics::Metrics;
use fhirgate_proxy::native::Host;
use proxy_wasm::types::{BufferType, Bytes, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A dispatched call's answer (no headers: it failed or timed out).
#[derive(Default)]
pub struct CallAnswer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Answers of calls relayed through the main thread, waiting for their worker.
pub type Inbox = Mutex<Vec<(u32, CallAnswer)>>;

/// A call a worker's root dispatched: the main thread sends it (configuration-level calls
/// are not tied to a request) and puts the answer in the worker's inbox.
pub struct Relayed {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
    pub inbox: Arc<Inbox>,
}

/// Who the pipeline is running for, and so where a dispatched call's answer goes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Owner {
    /// A stream's hook: its calls are the stream's, answered in its `callout_done` hook.
    #[default]
    Stream,
    /// A worker's root (ticks, answers to its calls): relayed through the main thread.
    Root,
}

/// Which body the running hook received a chunk of.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InBody {
    Request,
    Response,
}

/// What the host calls of this thread act on.
#[derive(Default)]
pub struct Current {
    pub filter: Option<Filter>,
    pub in_body: Option<InBody>,
    pub owner: Owner,
    /// The plugin configuration, while a root configures.
    pub configuration: Vec<u8>,
    /// While Envoy creates a configuration (main thread): metrics are defined through it.
    pub defining: Option<ConfigHandle>,
    /// Metric ids by name: being defined, or the configuration's.
    pub metrics: Option<Arc<Metrics>>,
    /// The configuration, for metrics counted outside any stream (a root on the main thread).
    pub config: Option<ConfigHandle>,
    pub tick_period: Option<Duration>,
    /// The answer being delivered to the pipeline.
    pub answer: Option<CallAnswer>,
    /// Calls the stream dispatched in this hook: Envoy's callout id, the pipeline's token.
    pub stream_calls: Vec<(u64, u32)>,
    /// Calls the root dispatched in this hook.
    pub root_calls: Vec<Relayed>,
    pub inbox: Option<Arc<Inbox>>,
    /// When the stream started (Envoy's `request.time`).
    pub started: Option<SystemTime>,
}

thread_local! {
    static CURRENT: RefCell<Current> = RefCell::new(Current::default());
}

/// Runs `f` with `current` as this thread's context, and gives back what it became.
pub fn with_current<R>(current: Current, f: impl FnOnce() -> R) -> (R, Current) {
    /// Puts the previous context back even when `f` unwinds, so no stream's handle outlives
    /// its hook in the thread's context.
    struct Restore(Option<Current>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                let _ = CURRENT.try_with(|c| {
                    if let Ok(mut c) = c.try_borrow_mut() {
                        *c = previous;
                    }
                });
            }
        }
    }
    let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), current));
    let mut restore = Restore(Some(previous));
    let result = f();
    let previous = restore.0.take().unwrap_or_default();
    let after = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
    (result, after)
}

/// Reads the context; `None` when it is in use (never: host calls do not nest).
fn current<R>(f: impl FnOnce(&mut Current) -> R) -> Option<R> {
    CURRENT.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

fn filter() -> Result<Filter, Status> {
    current(|c| c.filter).flatten().ok_or(Status::NotFound)
}

/// Adds to a counter or sets a gauge of the running stream's configuration.
/// Through the stream when there is one, else through the configuration (main thread).
fn update_metric(id: u32, value: u64) -> Result<(), Status> {
    let (filter, config, metrics) =
        current(|c| (c.filter, c.config, c.metrics.clone())).ok_or(Status::NotFound)?;
    let target = metrics.and_then(|m| m.target(id)).ok_or(Status::NotFound)?;
    let labels: Vec<&str> = target.label_value.as_deref().into_iter().collect();
    let (id, gauge) = (target.envoy_id, target.gauge);
    let updated = match (filter, config) {
        (Some(filter), _) => filter.update_metric(gauge, id, &labels, value),
        (None, Some(config)) => config.update_metric(gauge, id, &labels, value),
        (None, None) => false,
    };
    if updated {
        Ok(())
    } else {
        Err(Status::NotFound)
    }
}

impl crate::metrics::Define for ConfigHandle {
    fn define(&self, name: &str, gauge: bool, label: Option<&str>) -> Option<usize> {
        ConfigHandle::define(*self, name, gauge, label)
    }
}

/// Tokens are process-wide: a worker's root makes calls on its worker and, while the worker
/// is idle, on the main thread; their answers are matched by token.
fn next_token() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    loop {
        let token = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if token != 0 {
            return token;
        }
    }
}

/// Values by key, each with the version its compare-and-swap checks.
type SharedData = Mutex<HashMap<String, (Vec<u8>, u32)>>;

/// Process-wide shared data (proxy-wasm's, across every worker), with its compare-and-swap.
fn shared() -> &'static SharedData {
    static SHARED: OnceLock<SharedData> = OnceLock::new();
    SHARED.get_or_init(Mutex::default)
}

fn header_kind(map: MapType) -> Result<HeaderKind, Status> {
    match map {
        MapType::HttpRequestHeaders => Ok(HeaderKind::Request),
        MapType::HttpResponseHeaders => Ok(HeaderKind::Response),
        _ => Err(Status::NotFound),
    }
}

/// The fhirgate properties live in Envoy's filter state under the names the Wasm module's
/// properties get there, so the routes and the access log read them the same way.
fn filter_state_key(path: &[&str]) -> Option<String> {
    match path {
        [name] if name.starts_with("fhirgate.") => Some(format!("wasm.{name}")),
        _ => None,
    }
}

fn nanos(t: SystemTime) -> Vec<u8> {
    let ns = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    ns.to_le_bytes().to_vec()
}

/// The body so far: what was buffered, and the chunk this hook received.
fn body_bytes(which: InBody) -> Result<Vec<u8>, Status> {
    let filter = filter()?;
    let in_body = current(|c| c.in_body).flatten();
    let (buffered, received) = match which {
        InBody::Request => (BodyKind::BufferedRequest, BodyKind::ReceivedRequest),
        InBody::Response => (BodyKind::BufferedResponse, BodyKind::ReceivedResponse),
    };
    let mut out = Vec::new();
    filter.read_body(buffered, &mut out);
    if in_body == Some(which) && !filter.received_is_buffered(which == InBody::Request) {
        filter.read_body(received, &mut out);
    }
    Ok(out)
}

/// The size [`body_bytes`] would have.
pub fn body_size(filter: Filter, which: InBody) -> usize {
    let (buffered, received) = match which {
        InBody::Request => (BodyKind::BufferedRequest, BodyKind::ReceivedRequest),
        InBody::Response => (BodyKind::BufferedResponse, BodyKind::ReceivedResponse),
    };
    // When an earlier filter buffered the body, what this hook "received" is that buffer.
    if filter.received_is_buffered(which == InBody::Request) {
        return filter.body_size(buffered);
    }
    filter.body_size(buffered) + filter.body_size(received)
}

pub struct NativeHost;

impl Host for NativeHost {
    fn get_current_time(&self) -> Result<SystemTime, Status> {
        Ok(SystemTime::now())
    }

    fn get_map_value(&self, map: MapType, key: &str) -> Result<Option<String>, Status> {
        if map == MapType::HttpCallResponseHeaders {
            return Ok(current(|c| {
                c.answer.as_ref().and_then(|a| {
                    a.headers
                        .iter()
                        .find(|(k, _)| k == key)
                        .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
                })
            })
            .flatten());
        }
        let kind = header_kind(map)?;
        Ok(filter()?
            .header(kind, key)
            .and_then(|v| String::from_utf8(v).ok()))
    }

    fn set_map_value(&self, map: MapType, key: &str, value: Option<&str>) -> Result<(), Status> {
        let kind = header_kind(map)?;
        if filter()?.set_header(kind, key, value) {
            Ok(())
        } else {
            Err(Status::BadArgument)
        }
    }

    fn get_map_bytes(&self, map: MapType) -> Result<Vec<(String, Bytes)>, Status> {
        let kind = header_kind(map)?;
        Ok(filter()?.headers(kind))
    }

    fn get_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Bytes>, Status> {
        let mut bytes = match buffer {
            BufferType::HttpRequestBody => body_bytes(InBody::Request)?,
            BufferType::HttpResponseBody => body_bytes(InBody::Response)?,
            BufferType::HttpCallResponseBody => {
                current(|c| c.answer.as_ref().map(|a| a.body.clone()))
                    .flatten()
                    .unwrap_or_default()
            }
            BufferType::PluginConfiguration => {
                current(|c| c.configuration.clone()).unwrap_or_default()
            }
            _ => return Err(Status::NotFound),
        };
        // The bytes were copied out of Envoy already: cut them to the range, no second copy.
        if start > bytes.len() {
            return Ok(None);
        }
        bytes.truncate(start.saturating_add(max_size));
        bytes.drain(..start);
        Ok(Some(bytes))
    }

    /// Replaces the whole body (the only replacement the stages make: from 0, all of it).
    fn set_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        _size: usize,
        value: &[u8],
    ) -> Result<(), Status> {
        let filter = filter()?;
        let which = match buffer {
            BufferType::HttpRequestBody => InBody::Request,
            BufferType::HttpResponseBody => InBody::Response,
            _ => return Err(Status::BadArgument),
        };
        if start != 0 {
            return Err(Status::BadArgument);
        }
        let (buffered, received) = match which {
            InBody::Request => (BodyKind::BufferedRequest, BodyKind::ReceivedRequest),
            InBody::Response => (BodyKind::BufferedResponse, BodyKind::ReceivedResponse),
        };
        let in_this_body = current(|c| c.in_body).flatten() == Some(which);
        filter.drain_body(buffered, usize::MAX);
        let target = if in_this_body && !filter.received_is_buffered(which == InBody::Request) {
            filter.drain_body(received, usize::MAX);
            received
        } else {
            buffered
        };
        if value.is_empty() || filter.append_body(target, value) {
            Ok(())
        } else {
            Err(Status::BadArgument)
        }
    }

    fn get_property(&self, path: Vec<&str>) -> Result<Option<Bytes>, Status> {
        let filter = filter()?;
        if let Some(key) = filter_state_key(&path) {
            return Ok(filter.filter_state(&key));
        }
        let started = current(|c| c.started).flatten();
        Ok(match path.as_slice() {
            ["request", "time"] => started.map(nanos),
            ["request", "duration"] => started.map(|s| {
                let d = SystemTime::now().duration_since(s).unwrap_or_default();
                (d.as_nanos() as u64).to_le_bytes().to_vec()
            }),
            ["source", "address"] => filter.attribute_string(Attribute::SourceAddress),
            ["response", "code"] => filter
                .attribute_int(Attribute::ResponseCode)
                .map(|c| c.to_le_bytes().to_vec()),
            // Envoy has no string form of `response.code_details` for dynamic modules. What the
            // consent stage asks it for is whether the answer came from the upstream: it did
            // when an upstream host was picked (an upstream error's body is then reduced).
            ["response", "code_details"] => filter
                .attribute_string(Attribute::UpstreamAddress)
                .filter(|a| !a.is_empty())
                .map(|_| b"via_upstream".to_vec()),
            ["connection", "uri_san_peer_certificate"] => {
                filter.attribute_string(Attribute::ConnectionUriSanPeerCertificate)
            }
            _ => None,
        })
    }

    fn set_property(&self, path: Vec<&str>, value: Option<&[u8]>) -> Result<(), Status> {
        let key = filter_state_key(&path).ok_or(Status::NotFound)?;
        if filter()?.set_filter_state(&key, value.unwrap_or_default()) {
            Ok(())
        } else {
            Err(Status::BadArgument)
        }
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        _trailers: Vec<(&str, &str)>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        let timeout_ms = timeout.as_millis() as u64;
        let body = body.unwrap_or_default();
        // Envoy's callouts need a host: `:authority` is it (a `host` added would double it).
        let owner = current(|c| c.owner).unwrap_or_default();
        let token = next_token();
        if owner == Owner::Root {
            let inbox = current(|c| c.inbox.clone())
                .flatten()
                .ok_or(Status::NotFound)?;
            let relayed = Relayed {
                token,
                cluster: cluster.to_string(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.to_vec(),
                timeout_ms,
                inbox,
            };
            current(|c| c.root_calls.push(relayed));
            return Ok(token);
        }
        let id = filter()?
            .callout(cluster, &headers, body, timeout_ms)
            .ok_or(Status::BadArgument)?;
        current(|c| c.stream_calls.push((id, token)));
        Ok(token)
    }

    fn resume_http_request(&self) -> Result<(), Status> {
        filter()?.continue_decoding();
        Ok(())
    }

    fn resume_http_response(&self) -> Result<(), Status> {
        filter()?.continue_encoding();
        Ok(())
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), Status> {
        current(|c| c.tick_period = Some(period));
        Ok(())
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        let (metrics, defining) =
            current(|c| (c.metrics.clone(), c.defining)).ok_or(Status::NotFound)?;
        let defining = defining.as_ref().map(|c| c as &dyn crate::metrics::Define);
        metrics
            .ok_or(Status::NotFound)?
            .define(defining, name, matches!(kind, MetricType::Gauge))
            .ok_or(Status::NotFound)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        update_metric(id, offset.max(0) as u64)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        update_metric(id, value)
    }

    fn send_http_response(
        &self,
        status: u32,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
    ) -> Result<(), Status> {
        filter()?.send_response(status, &headers, body.unwrap_or_default(), "fhirgate");
        Ok(())
    }

    fn call_foreign_function(
        &self,
        name: &str,
        _arguments: Option<&[u8]>,
    ) -> Result<Option<Bytes>, Status> {
        match name {
            "clear_route_cache" => {
                filter()?.clear_route_cache();
                Ok(None)
            }
            _ => Err(Status::NotFound),
        }
    }

    fn get_shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
        let shared = shared().lock().unwrap_or_else(PoisonError::into_inner);
        Ok(shared
            .get(key)
            .map_or((None, None), |(v, cas)| (Some(v.clone()), Some(*cas))))
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Result<(), Status> {
        let mut shared = shared().lock().unwrap_or_else(PoisonError::into_inner);
        let current = shared.get(key).map(|(_, c)| *c);
        if cas.is_some_and(|c| c != 0 && Some(c) != current) {
            return Err(Status::CasMismatch);
        }
        match value {
            Some(v) => {
                let next = current.unwrap_or(0).wrapping_add(1).max(1);
                shared.insert(key.to_string(), (v.to_vec(), next));
            }
            None => {
                shared.remove(key);
            }
        }
        Ok(())
    }
}
