//! The proxy-wasm plumbing every fhirgate stage shares, so each stage crate stays a thin
//! translation between Envoy and the core: load and compile config, send a core
//! [`Rejection`] as a local reply, and read and write request headers. All host access goes
//! through [`host`].

pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod mock;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;

use fhirgate_core::config::ConfigError;
use fhirgate_core::pipeline::{Flow, Stage};
use fhirgate_core::ratelimit::bucket::SharedStore;
use fhirgate_core::routing::RequestHead;
use fhirgate_core::{headers, Rejection};
use host::hostcalls;
use proxy_wasm::types::MetricType;
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

thread_local! {
    /// Envoy metric ids by (filter, event, detail); defined on first use.
    static METRICS: RefCell<HashMap<(&'static str, &'static str, &'static str), u32>> = RefCell::new(HashMap::new());
}

/// Counts one event as the Envoy counter `<filter>.<event>[.<detail>]`, e.g.
/// `fhirgate.authz.denied.token-expired`. Every part is a static string (a reason code, never
/// an id, token or path), so nothing from a request can become a metric name.
pub fn count(filter: &'static str, event: &'static str, detail: &'static str) {
    if let Some(id) = metric_id(filter, event, detail) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Defines a filter's counters at configuration, so every family exists (at 0) from the start
/// and dashboards and alerts never see a missing series. `(event, "")` defines the family of
/// counters whose detail is a reason code or a class.
pub fn declare(filter: &'static str, counters: &[(&'static str, &'static str)]) {
    for (event, detail) in counters {
        let _ = metric_id(filter, event, detail);
    }
}

/// The label a counter family's detail becomes in Prometheus, by the family's event: the
/// names the bootstrap's tag extractors give it (`envoy/fhirgate.yaml`, `stats_tags`), and the
/// label the native module defines its labelled counters with. Families of other events keep
/// the detail in the name (`fhirgate.authz.allowed.narrowed`) in the Wasm build and label it
/// `detail` natively.
pub fn detail_label(event: &str) -> &'static str {
    match event {
        "denied" | "withheld" | "redacted" | "report_only" | "reduced" => "reason",
        "routed" => "interaction",
        "requests" | "limited" => "class",
        "token_cache" | "consent_cache" | "jwks" | "introspection" | "break_glass" | "dropped"
        | "fail_closed" | "released" => "outcome",
        _ => "detail",
    }
}

/// Forgets the metric ids this thread cached, so the next [`declare`] defines every metric
/// again. A host that creates several configurations on one thread, each with metrics of its
/// own (the native module: every configuration on Envoy's main thread), calls it before each.
pub fn forget_metric_ids() {
    METRICS.with(|m| m.borrow_mut().clear());
    GAUGES.with(|g| g.borrow_mut().clear());
}

fn metric_id(filter: &'static str, event: &'static str, detail: &'static str) -> Option<u32> {
    METRICS.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(id) = m.get(&(filter, event, detail)) {
            return Some(*id);
        }
        let name = if detail.is_empty() {
            format!("{filter}.{event}")
        } else {
            format!("{filter}.{event}.{detail}")
        };
        let id = hostcalls::define_metric(MetricType::Counter, &name).ok()?;
        m.insert((filter, event, detail), id);
        Some(id)
    })
}

thread_local! {
    static GAUGES: RefCell<HashMap<(&'static str, &'static str), u32>> = RefCell::new(HashMap::new());
}

/// Sets the Envoy gauge `<filter>.<name>` (e.g. `fhirgate.audit.queue_depth`).
pub fn gauge(filter: &'static str, name: &'static str, value: u64) {
    let id = GAUGES.with(|g| {
        let mut g = g.borrow_mut();
        if let Some(id) = g.get(&(filter, name)) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(MetricType::Gauge, &format!("{filter}.{name}")).ok()?;
        g.insert((filter, name), id);
        Some(id)
    });
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// The state of one kind `T` that every root configured with `config` shares in this process,
/// made by `make` for the first. A host whose workers are threads of one process (the native
/// module) shares it between them (one per configuration); each Wasm VM has its own statics,
/// so there it is the worker's own. Dropped with the last root holding it.
pub fn shared_for_config<T: Send + 'static>(
    config: &[u8],
    make: impl FnOnce() -> T,
) -> Arc<Mutex<T>> {
    type Registry = Mutex<HashMap<(TypeId, Vec<u8>), Weak<dyn Any + Send + Sync>>>;
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let mut registry = REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let key = (TypeId::of::<T>(), config.to_vec());
    let found = registry
        .get(&key)
        .and_then(Weak::upgrade)
        .and_then(|shared| shared.downcast::<Mutex<T>>().ok());
    if let Some(shared) = found {
        return shared;
    }
    // Configurations gone (their roots dropped) free their entries.
    registry.retain(|_, shared| shared.strong_count() > 0);
    let shared = Arc::new(Mutex::new(make()));
    let any: Arc<dyn Any + Send + Sync> = shared.clone();
    registry.insert(key, Arc::downgrade(&any));
    shared
}

/// The host side of one pipeline stage: compiles its configuration once per worker, owns
/// what outlives a request (caches, queues, timers), and makes each request's [`Stage`].
pub trait StageRoot {
    /// Compiles the stage's section of the module configuration. On failure logs the refusal,
    /// naming the field, and returns false: Envoy then refuses the configuration.
    fn configure(&mut self, config: &[u8]) -> bool;
    /// How often the stage wants [`StageRoot::tick`], if at all.
    fn tick_period(&self) -> Option<Duration> {
        None
    }
    fn tick(&mut self) {}
    /// A call the root dispatched answered: true when it was this stage's.
    fn call_response(&mut self, _token: u32, _body_size: usize) -> bool {
        false
    }
    fn create(&self) -> Box<dyn Stage>;
}

/// Compiles a stage's configuration. On failure logs the refusal, naming the field (under the
/// stage's section, `authz.issuers[0]`), and returns None.
pub fn load_config<T>(
    bytes: &[u8],
    filter: &'static str,
    compile: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Option<T> {
    match compile(bytes) {
        Ok(policy) => {
            log::info!("{filter}: configuration accepted");
            Some(policy)
        }
        Err(err) => {
            let section = filter.strip_prefix("fhirgate.").unwrap_or(filter);
            log::error!("{filter}: {}", err.within(section));
            None
        }
    }
}

/// Answers the client with the rejection's status, headers and OperationOutcome, and stops
/// the request: nothing reaches the upstream.
pub fn reject(filter: &'static str, rejection: &Rejection) -> Flow {
    // Only the stable reason code is logged and counted: never paths, ids, tokens or bodies.
    log::debug!(
        "{filter}: refused ({} {})",
        rejection.status,
        rejection.reason
    );
    count(filter, "denied", rejection.reason);
    set_reason(rejection.reason);
    let headers = rejection.response_headers();
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = rejection.body();
    if let Err(status) =
        hostcalls::send_http_response(u32::from(rejection.status), pairs, Some(&body))
    {
        log::error!("{filter}: could not send local reply: {status:?}");
    }
    Flow::Answered
}

/// Replaces a held response with the rejection (its headers are still held, so the status
/// can change): nothing that describes the withheld answer stays, not its version, date or
/// location.
pub fn replace_response(filter: &'static str, rejection: &Rejection, body_size: usize) {
    log::debug!(
        "{filter}: response refused ({} {})",
        rejection.status,
        rejection.reason
    );
    set_reason(rejection.reason);
    host::set_response_header(":status", Some(&rejection.status.to_string()));
    drop_describing_response_headers();
    for (name, value) in rejection.response_headers() {
        host::set_response_header(name, Some(&value));
    }
    host::set_response_body(body_size, &rejection.body());
}

/// Every request header, read from Envoy in one host call. Each separate header lookup
/// costs a round trip into the VM to allocate its value, so filters read this snapshot
/// instead of asking header by header.
pub struct RequestHeaders {
    pairs: std::rc::Rc<Vec<(String, Vec<u8>)>>,
}

impl RequestHeaders {
    pub fn read() -> Self {
        RequestHeaders {
            pairs: host::request_headers(),
        }
    }

    /// The first value of `name` (lower case, as Envoy keeps them), if it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// The request head in the core's terms (`end_of_stream`: the request ended with its
    /// headers).
    pub fn head(&self, end_of_stream: bool) -> RequestHead<'_> {
        RequestHead {
            method: self.get(":method").unwrap_or_default(),
            path: self.get(":path").unwrap_or_default(),
            content_type: self.get("content-type"),
            content_length: self.get("content-length"),
            has_body: !end_of_stream,
            if_none_exist: self.contains("if-none-exist"),
            method_override: headers::METHOD_OVERRIDE.iter().any(|h| self.contains(h)),
        }
    }

    /// Removes from the request every header with the internal prefix, whatever its case:
    /// clients must never be able to speak for fhirgate. Costs host calls only when a client
    /// actually sent one.
    pub fn strip_internal(&self) {
        for (name, _) in self
            .pairs
            .iter()
            .filter(|(name, _)| headers::is_internal(name))
        {
            host::set_request_header(name, None);
        }
    }
}

/// Envoy's `clear_route_cache` foreign function. Older hosts without it clear the cache on
/// every header change, so a failure here is harmless.
pub fn clear_route_cache() {
    if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", None) {
        log::trace!("clear_route_cache unavailable: {status:?}");
    }
}

/// GET `path` through the Envoy `cluster` with this `:authority`, asking for `accept`: the
/// one shape of every call fhirgate's filters make on their own (JWKS, revocation lists,
/// current resources, Consents). Returns the call's token.
pub fn dispatch_get(
    cluster: &str,
    authority: &str,
    path: &str,
    accept: &str,
    timeout: std::time::Duration,
) -> Result<u32, proxy_wasm::types::Status> {
    let headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority),
        ("accept", accept),
    ];
    host::dispatch(cluster, headers, None, timeout)
}

/// The status and body of a finished call (`dispatch_get`'s answer).
pub fn call_answer(body_size: usize) -> (Option<u16>, Vec<u8>) {
    let status = host::call_header(":status").and_then(|s| s.parse().ok());
    (status, host::call_body(body_size))
}

/// Response headers that describe a resource (its size, encoding, version, date, location):
/// removed whenever a response's body is replaced by something else.
pub fn drop_describing_response_headers() {
    for name in [
        "content-length",
        "content-encoding",
        "etag",
        "last-modified",
        "location",
        "content-location",
    ] {
        host::set_response_header(name, None);
    }
}

/// Envoy's shared data (one store for every worker of a VM id) as the core's [`SharedStore`].
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

/// Marks the request as passed by these stages: appends their names to the filter-state
/// property `fhirgate.passed` (Envoy's key `wasm.fhirgate.passed`), which ends as
/// `routing,authz,ratelimit,consent,audit` when every stage let the request go.
///
/// Why: Envoy skips a Wasm filter whose VM could not be created or configured on a worker
/// thread (memory exhausted, say), whatever its `failure_policy` — it fails open. The shipped
/// routes match only requests whose mark names every stage (Envoy's `filter_state` route
/// matcher), so a request a filter never saw is answered 503 by Envoy itself instead of being
/// forwarded. Filter state, unlike a header, cannot come from a client. One property for all
/// stages: the fused module sets it in one call.
///
/// A routing stage is always the first to mark: it starts the mark instead of reading it.
pub fn mark_passed(stages: &[&str]) {
    let mut mark = if stages.first() == Some(&"routing") {
        Vec::new()
    } else {
        host::property(vec![PASSED_PROPERTY]).unwrap_or_default()
    };
    for stage in stages {
        if !mark.is_empty() {
            mark.push(b',');
        }
        mark.extend_from_slice(stage.as_bytes());
    }
    host::set_property(vec![PASSED_PROPERTY], &mark);
}

/// The property every stage's name is appended to as it lets a request go (see [`mark_passed`]).
pub const PASSED_PROPERTY: &str = "fhirgate.passed";

/// What the stages of one filter tell the stages of the filters after it (the core's
/// `Facts`, encoded): filter state, so no client can speak for a stage.
pub const FACTS_PROPERTY: &str = "fhirgate.facts";
/// The upstream pool the routing stage chose: the shipped routes match it (filter state
/// `wasm.fhirgate.pool`), so it never travels as a header.
pub const POOL_PROPERTY: &str = "fhirgate.pool";
/// What was asked, for Envoy's access log (`%FILTER_STATE(wasm.fhirgate.interaction:PLAIN)%`…):
/// names and types, never ids.
pub const INTERACTION_PROPERTY: &str = "fhirgate.interaction";
pub const RESOURCE_TYPE_PROPERTY: &str = "fhirgate.resource_type";
pub const OPERATION_PROPERTY: &str = "fhirgate.operation";

/// The request's filter-state property naming why a fhirgate filter refused it, for the audit
/// filter (Envoy keeps Wasm properties in the stream's filter state, shared by all filters).
pub const REASON_PROPERTY: &str = "fhirgate.reason";
/// What the consent filter did to the response: `withheld,redacted` counts.
pub const CONSENT_PROPERTY: &str = "fhirgate.consent";

pub fn set_reason(reason: &str) {
    host::set_property(vec![REASON_PROPERTY], reason.as_bytes());
}

/// Whether a fhirgate filter already refused this request or its response (its reason is
/// set): such an answer is the gateway's own and PHI-free.
pub fn refused_by_gateway() -> bool {
    host::property(vec![REASON_PROPERTY]).is_some_and(|v| !v.is_empty())
}

/// A property Envoy serialises as a little-endian 64-bit integer (`response.code`,
/// `request.time`, `request.duration`).
pub fn property_u64(path: Vec<&str>) -> Option<u64> {
    let bytes = host::property(path)?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// A property as text (`source.address`, the fhirgate properties).
pub fn property_text(path: Vec<&str>) -> Option<String> {
    String::from_utf8(host::property(path)?).ok()
}

#[cfg(test)]
mod tests {
    use super::detail_label;

    /// The bootstrap's `stats_tags` (tag name, regex), read from the shipped file.
    fn bootstrap_tags() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../envoy/fhirgate.yaml");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut tags = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if let Some(name) = line.trim().strip_prefix("- tag_name: ") {
                let regex = lines.next().unwrap_or_default().trim();
                let regex = regex.strip_prefix("regex: ").unwrap_or_default();
                tags.push((name.to_string(), regex.to_string()));
            }
        }
        tags
    }

    #[test]
    fn every_event_the_bootstrap_tags_is_labelled_alike_natively() {
        let tags = bootstrap_tags();
        assert_eq!(tags.len(), 4, "{tags:?}");
        for (label, regex) in &tags {
            // The events are the last name part before the detail: `(?:a|b)` or a literal.
            let family = regex.split("(\\.([^.]+))$").next().unwrap_or_default();
            let last = family.rsplit("\\.").next().unwrap_or_default();
            let events: Vec<&str> = last
                .trim_start_matches("(?:")
                .trim_end_matches(')')
                .split('|')
                .collect();
            assert!(!events.is_empty());
            for event in events {
                assert_eq!(detail_label(event), label, "{event} in {regex}");
            }
        }
    }

    #[test]
    fn the_bootstrap_tags_both_builds_metric_namespaces() {
        for (label, regex) in bootstrap_tags() {
            assert!(
                regex.contains("(?:wasm|dynamicmodules)custom"),
                "{label}: {regex}"
            );
        }
    }

    #[test]
    fn declaring_again_after_forgetting_defines_again() {
        let defined = || crate::mock::with(|h| h.defined_metrics());
        crate::declare("fhirgate.test", &[("events", "")]);
        let first = defined();
        crate::declare("fhirgate.test", &[("events", "")]);
        assert_eq!(defined(), first, "ids are cached per thread");
        crate::forget_metric_ids();
        crate::declare("fhirgate.test", &[("events", "")]);
        assert_eq!(
            defined(),
            first + 1,
            "a new configuration defines its metrics"
        );
    }

    #[test]
    fn roots_configured_alike_share_one_state_of_each_kind() {
        let a = crate::shared_for_config(b"config-a", || 1u32);
        let again = crate::shared_for_config(b"config-a", || 2u32);
        assert!(std::sync::Arc::ptr_eq(&a, &again));
        let other = crate::shared_for_config(b"config-b", || 3u32);
        assert_eq!(*other.lock().unwrap(), 3);
        let other_kind = crate::shared_for_config(b"config-a", || 4u64);
        assert_eq!(*other_kind.lock().unwrap(), 4);
        drop((a, again));
        let fresh = crate::shared_for_config(b"config-a", || 5u32);
        assert_eq!(*fresh.lock().unwrap(), 5, "dropped with its last root");
    }

    #[test]
    fn other_families_keep_a_neutral_label() {
        assert_eq!(detail_label("allowed"), "detail");
        assert_eq!(detail_label("reduced"), "reason");
    }
}
