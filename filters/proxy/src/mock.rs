//! A host for native tests: the functions of proxy-wasm's `hostcalls` that fhirgate uses, with
//! the same signatures, over one thread-local [`MockHost`] a test sets up and inspects. In
//! native builds [`crate::host`] calls these instead of Envoy, so the stages and the module's
//! pipeline run as they do in Envoy — pausing, dispatching calls, being resumed, replying.

use proxy_wasm::types::{BufferType, Bytes, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A call a stage dispatched.
#[derive(Clone, Debug)]
pub struct Dispatched {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Dispatched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A local reply a stage sent.
#[derive(Clone, Debug)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    /// The OperationOutcome's reason code.
    pub fn reason(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v.pointer("/issue/0/details/coding/0/code")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
pub struct MockHost {
    pub now: Duration,
    pub plugin_configuration: Vec<u8>,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// Properties by path joined with `.` (`source.address`, `fhirgate.passed`).
    pub properties: HashMap<String, Vec<u8>>,
    pub dispatched: Vec<Dispatched>,
    /// Every dispatch fails to start (a cluster that does not exist).
    pub refuse_dispatch: bool,
    /// The answer the current call callback reads.
    pub call_headers: Vec<(String, String)>,
    pub call_body: Vec<u8>,
    pub local_reply: Option<LocalReply>,
    pub resumed_requests: u32,
    pub resumed_responses: u32,
    pub route_cache_clears: u32,
    pub tick_period: Option<Duration>,
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    metric_names: Vec<String>,
    pub metrics: HashMap<String, u64>,
    /// Host calls made since the last reset (what each crosses the VM boundary for: the
    /// benchmark's "host calls per request").
    pub host_calls: u64,
    next_token: u32,
}

thread_local! {
    static HOST: RefCell<MockHost> = RefCell::new(MockHost {
        now: Duration::from_secs(1_790_000_000),
        ..Default::default()
    });
}

/// Runs `f` on this thread's mock host.
pub fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// A fresh host: no request, no calls, no shared data, counters at zero (the metrics this
/// thread defined stay defined, as in Envoy).
pub fn reset() {
    with(|h| {
        let metric_names = std::mem::take(&mut h.metric_names);
        *h = MockHost {
            now: Duration::from_secs(1_790_000_000),
            metric_names,
            ..Default::default()
        }
    });
}

/// Sets the answer the next call callback reads (status and body).
pub fn answer_call(status: u16, body: &[u8]) {
    with(|h| {
        h.call_headers = vec![(":status".into(), status.to_string())];
        h.call_body = body.to_vec();
    });
}

/// A call that failed in transport (timeout, reset): no headers, no body.
pub fn fail_call() {
    with(|h| {
        h.call_headers.clear();
        h.call_body.clear();
    });
}

impl MockHost {
    pub fn request_header(&self, name: &str) -> Option<&str> {
        header(&self.request_headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<&str> {
        header(&self.response_headers, name)
    }

    pub fn property(&self, path: &str) -> Option<&str> {
        self.properties
            .get(path)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// How many metrics were defined (each `define_metric` call).
    pub fn defined_metrics(&self) -> usize {
        self.metric_names.len()
    }

    pub fn metric(&self, name: &str) -> u64 {
        self.metrics.get(name).copied().unwrap_or(0)
    }

    fn metric_name(&self, id: u32) -> Result<String, Status> {
        self.metric_names
            .get(id as usize)
            .cloned()
            .ok_or(Status::NotFound)
    }

    fn map(&mut self, map: MapType) -> Result<&mut Vec<(String, String)>, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request_headers),
            MapType::HttpResponseHeaders => Ok(&mut self.response_headers),
            MapType::HttpCallResponseHeaders => Ok(&mut self.call_headers),
            _ => Err(Status::NotFound),
        }
    }
}

fn header<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One host call as Envoy would count it: tallied, then run on the host.
fn call<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
    with(|h| {
        h.host_calls += 1;
        f(h)
    })
}

pub fn get_current_time() -> Result<SystemTime, Status> {
    Ok(UNIX_EPOCH + call(|h| h.now))
}

pub fn get_map_value(map: MapType, key: &str) -> Result<Option<String>, Status> {
    call(|h| Ok(header(h.map(map)?, key).map(str::to_string)))
}

pub fn set_map_value(map: MapType, key: &str, value: Option<&str>) -> Result<(), Status> {
    call(|h| {
        let pairs = h.map(map)?;
        pairs.retain(|(k, _)| k != key);
        if let Some(value) = value {
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(())
    })
}

pub fn get_map_bytes(map: MapType) -> Result<Vec<(String, Bytes)>, Status> {
    call(|h| {
        Ok(h.map(map)?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect())
    })
}

pub fn get_buffer(
    buffer: BufferType,
    start: usize,
    max_size: usize,
) -> Result<Option<Bytes>, Status> {
    call(|h| {
        let bytes = match buffer {
            BufferType::HttpRequestBody => &h.request_body,
            BufferType::HttpResponseBody => &h.response_body,
            BufferType::HttpCallResponseBody => &h.call_body,
            BufferType::PluginConfiguration => &h.plugin_configuration,
            _ => return Err(Status::NotFound),
        };
        let end = start.saturating_add(max_size).min(bytes.len());
        Ok(bytes.get(start..end).map(<[u8]>::to_vec))
    })
}

pub fn set_buffer(
    buffer: BufferType,
    start: usize,
    size: usize,
    value: &[u8],
) -> Result<(), Status> {
    call(|h| {
        let bytes = match buffer {
            BufferType::HttpRequestBody => &mut h.request_body,
            BufferType::HttpResponseBody => &mut h.response_body,
            _ => return Err(Status::BadArgument),
        };
        let end = start.saturating_add(size).min(bytes.len());
        if start > bytes.len() {
            return Err(Status::BadArgument);
        }
        bytes.splice(start..end, value.iter().copied());
        Ok(())
    })
}

pub fn get_property(path: Vec<&str>) -> Result<Option<Bytes>, Status> {
    call(|h| Ok(h.properties.get(&path.join(".")).cloned()))
}

pub fn set_property(path: Vec<&str>, value: Option<&[u8]>) -> Result<(), Status> {
    call(|h| {
        match value {
            Some(v) => h.properties.insert(path.join("."), v.to_vec()),
            None => h.properties.remove(&path.join(".")),
        };
        Ok(())
    })
}

pub fn dispatch_http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    _trailers: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<u32, Status> {
    call(|h| {
        if h.refuse_dispatch {
            return Err(Status::BadArgument);
        }
        h.next_token += 1;
        let token = h.next_token;
        h.dispatched.push(Dispatched {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    })
}

pub fn resume_http_request() -> Result<(), Status> {
    call(|h| h.resumed_requests += 1);
    Ok(())
}

pub fn resume_http_response() -> Result<(), Status> {
    call(|h| h.resumed_responses += 1);
    Ok(())
}

pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    call(|h| h.tick_period = Some(period));
    Ok(())
}

pub fn define_metric(_kind: MetricType, name: &str) -> Result<u32, Status> {
    call(|h| {
        let id = h.metric_names.len() as u32;
        h.metric_names.push(name.to_string());
        Ok(id)
    })
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    call(|h| {
        let name = h.metric_name(id)?;
        *h.metrics.entry(name).or_default() += offset.max(0) as u64;
        Ok(())
    })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    call(|h| {
        let name = h.metric_name(id)?;
        h.metrics.insert(name, value);
        Ok(())
    })
}

pub fn send_http_response(
    status: u32,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
) -> Result<(), Status> {
    call(|h| {
        h.local_reply = Some(LocalReply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.unwrap_or_default().to_vec(),
        });
        Ok(())
    })
}

pub fn call_foreign_function(
    name: &str,
    _arguments: Option<&[u8]>,
) -> Result<Option<Bytes>, Status> {
    call(|h| match name {
        "clear_route_cache" => {
            h.route_cache_clears += 1;
            Ok(None)
        }
        _ => Err(Status::NotFound),
    })
}

pub fn get_shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
    call(|h| {
        Ok(h.shared
            .get(key)
            .map_or((None, None), |(v, cas)| (Some(v.clone()), Some(*cas))))
    })
}

pub fn set_shared_data(key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), Status> {
    call(|h| {
        let current = h.shared.get(key).map(|(_, c)| *c);
        if cas.is_some_and(|c| c != 0 && Some(c) != current) {
            return Err(Status::CasMismatch);
        }
        match value {
            Some(v) => {
                let next = current.unwrap_or(0) + 1;
                h.shared.insert(key.to_string(), (v.to_vec(), next));
            }
            None => {
                h.shared.remove(key);
            }
        }
        Ok(())
    })
}

/// Natively the proxy-wasm SDK still links its imports from the host (its trait objects'
/// default methods and its dispatcher name them). Nothing here calls them — every host call
/// goes through [`crate::host`] to this mock — so each stub only reports a failure.
mod abi_stubs {
    macro_rules! stubs {
        ($($name:ident),* $(,)?) => {$(
            #[no_mangle]
            pub extern "C" fn $name() -> u32 {
                // Status::InternalFailure
                10
            }
        )*};
    }
    stubs!(
        proxy_add_header_map_value,
        proxy_call_foreign_function,
        proxy_close_stream,
        proxy_continue_stream,
        proxy_define_metric,
        proxy_dequeue_shared_queue,
        proxy_done,
        proxy_enqueue_shared_queue,
        proxy_get_buffer_bytes,
        proxy_get_current_time_nanoseconds,
        proxy_get_header_map_pairs,
        proxy_get_header_map_value,
        proxy_get_log_level,
        proxy_get_metric,
        proxy_get_property,
        proxy_get_shared_data,
        proxy_get_status,
        proxy_grpc_call,
        proxy_grpc_cancel,
        proxy_grpc_close,
        proxy_grpc_send,
        proxy_grpc_stream,
        proxy_http_call,
        proxy_increment_metric,
        proxy_log,
        proxy_record_metric,
        proxy_register_shared_queue,
        proxy_remove_header_map_value,
        proxy_replace_header_map_value,
        proxy_resolve_shared_queue,
        proxy_send_local_response,
        proxy_set_buffer_bytes,
        proxy_set_effective_context,
        proxy_set_header_map_pairs,
        proxy_set_property,
        proxy_set_shared_data,
        proxy_set_tick_period_milliseconds,
    );
}
