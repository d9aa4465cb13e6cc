//! Every host call fhirgate's stages make, in one place, none of which can panic.
//!
//! The proxy-wasm SDK's context helpers (`get_http_request_header`, `get_current_time`,
//! `get_property`, `resume_http_request` …) `unwrap` the host's status inside the SDK, where
//! clippy cannot see it: a host that refuses a call (a header read after the head went on, a
//! property it does not know) would abort the VM and every stream on it. These wrappers call
//! the SDK's raw `hostcalls` and turn a refusal into "absent" or a logged no-op. The SDK
//! helpers are banned by `clippy.toml` (`disallowed-methods`).
//!
//! Natively the same functions run on Envoy through the native module, or (tests, the CLI)
//! on [`crate::mock`], a host a test sets up and inspects ([`crate::native`]).

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::native as hostcalls;
#[cfg(target_arch = "wasm32")]
pub(crate) use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header names and values as Envoy gives them.
pub type HeaderPairs = Vec<(String, Vec<u8>)>;

thread_local! {
    /// The request headers as read in the current callback, kept up to date by fhirgate's own
    /// writes: the stages of one module read them once per callback, not once each.
    /// Shared: each stage that reads them holds the same pairs (a write copies them only
    /// while a stage still holds the older ones).
    static SNAPSHOT: RefCell<Option<Rc<HeaderPairs>>> = const { RefCell::new(None) };
}

/// Starts a callback: what the last one read may have changed since (Envoy, another filter).
pub fn begin_callback() {
    SNAPSHOT.with(|s| s.borrow_mut().take());
}

/// Applies a write (set, or remove with `None`) to the snapshot.
fn snapshot_write(name: &str, value: Option<&str>) {
    SNAPSHOT.with(|s| {
        if let Some(pairs) = s.borrow_mut().as_mut() {
            let pairs = Rc::make_mut(pairs);
            pairs.retain(|(k, _)| k != name);
            if let Some(value) = value {
                pairs.push((name.to_string(), value.as_bytes().to_vec()));
            }
        }
    });
}

/// The host's clock (the epoch if the host cannot tell).
pub fn now() -> SystemTime {
    hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request header (lower-case name), from this callback's snapshot when there is one.
pub fn request_header(name: &str) -> Option<String> {
    let cached = SNAPSHOT.with(|s| {
        s.borrow().as_ref().map(|pairs| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        })
    });
    match cached {
        Some(value) => value,
        None => hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten(),
    }
}

/// Sets (or with `None` removes) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) {
    snapshot_write(name, value);
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        log::debug!("request header {name} not set: {status:?}");
    }
}

/// Every request header: one host call per callback, then this callback's snapshot.
pub fn request_headers() -> Rc<HeaderPairs> {
    SNAPSHOT.with(|s| {
        let mut s = s.borrow_mut();
        match s.as_ref() {
            Some(pairs) => pairs.clone(),
            None => {
                let pairs = Rc::new(
                    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default(),
                );
                *s = Some(pairs.clone());
                pairs
            }
        }
    })
}

pub fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

pub fn set_response_header(name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value) {
        log::debug!("response header {name} not set: {status:?}");
    }
}

/// The response status, 0 when unknown.
pub fn response_status() -> u16 {
    response_header(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The request body buffered so far, up to `size` bytes.
pub fn request_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub fn response_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Replaces the first `size` bytes of the buffered response body (all of it, as buffered).
pub fn set_response_body(size: usize, body: &[u8]) {
    if let Err(status) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, body) {
        log::warn!("response body not replaced: {status:?}");
    }
}

pub fn property(path: Vec<&str>) -> Option<Vec<u8>> {
    hostcalls::get_property(path).ok().flatten()
}

pub fn set_property(path: Vec<&str>, value: &[u8]) {
    if let Err(status) = hostcalls::set_property(path, Some(value)) {
        log::debug!("property not set: {status:?}");
    }
}

/// A header of the answer to a dispatched call (inside its callback).
pub fn call_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

/// The body of the answer to a dispatched call (inside its callback).
pub fn call_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Dispatches an HTTP call through an Envoy cluster; its answer comes to the context that
/// was current when it was sent.
pub fn dispatch(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout)
}

pub fn resume_request() {
    if let Err(status) = hostcalls::resume_http_request() {
        log::warn!("request not resumed: {status:?}");
    }
}

pub fn resume_response() {
    if let Err(status) = hostcalls::resume_http_response() {
        log::warn!("response not resumed: {status:?}");
    }
}

/// The plugin's configuration as Envoy passes it (empty when there is none).
pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub fn set_tick_period(period: Duration) {
    if let Err(status) = hostcalls::set_tick_period(period) {
        log::error!("tick period not set: {status:?}");
    }
}
