//! Envoy's dynamic-module ABI as fhirgate uses it, and the crate's only `unsafe`.
//!
//! Written from the declarations of Envoy's `abi.h` at ABI `v0.2.0` (Envoy 1.40): the types
//! and callbacks below are the subset the pipeline needs, each with the layout the header
//! gives it; the hooks at the end are the ones Envoy resolves when it loads an HTTP filter
//! module (it refuses a module missing any of them). Every hook catches panics
//! ([`crate::guard`]) before they could cross into Envoy.
//!
//! Invariants every wrapper relies on, stated once:
//! - A [`Filter`] holds the `http_filter_envoy_ptr` Envoy passed to `on_http_filter_new`. Envoy
//!   keeps it valid until `on_http_filter_destroy`; the module only uses it inside hooks of
//!   that stream (on that stream's worker thread), before its destroy hook.
//! - A [`ConfigHandle`] holds the `http_filter_config_envoy_ptr` of `config_new`, valid until
//!   `config_destroy`; callouts through it are made on the main thread only (inside the main
//!   thread's config hooks). The scheduler it made may be committed from any thread (the
//!   header allows it) until it is deleted in `config_destroy`.
//! - Buffers Envoy returns are Envoy's, valid until the hook returns or the next mutating call;
//!   every wrapper copies what it reads before making another call.
//! - Buffers the module passes are borrowed for the duration of the call only.

#![allow(unsafe_code)]

use std::ffi::c_void;

/// Bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// Appends a copy of the bytes to `out` (none for a null buffer).
    fn append_to(self, out: &mut Vec<u8>) {
        if self.ptr.is_null() || self.length == 0 {
            return;
        }
        // SAFETY: as in `to_vec`: valid for `length` bytes until the hook returns or the next
        // mutating call; copied before either.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(self.ptr, self.length) });
    }

    /// A copy of the bytes (none for a null buffer).
    fn to_vec(self) -> Vec<u8> {
        if self.ptr.is_null() || self.length == 0 {
            return Vec::new();
        }
        // SAFETY: Envoy gave `ptr` with `length` readable bytes, valid until the hook returns
        // or the next mutating call; they are copied before either.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }.to_vec()
    }
}

/// Bytes the module lends Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// The null buffer: "no value" (a header set to it is removed).
    const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl EnvoyHeader {
    const EMPTY: EnvoyHeader = EnvoyHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };

    fn to_pair(self) -> (String, Vec<u8>) {
        let key = EnvoyBuffer {
            ptr: self.key_ptr,
            length: self.key_length,
        }
        .to_vec();
        let value = EnvoyBuffer {
            ptr: self.value_ptr,
            length: self.value_length,
        }
        .to_vec();
        (String::from_utf8_lossy(&key).into_owned(), value)
    }
}

fn module_headers(headers: &[(&str, &str)]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(k, v)| ModuleHeader {
            key_ptr: k.as_ptr(),
            key_length: k.len(),
            value_ptr: v.as_ptr(),
            value_length: v.len(),
        })
        .collect()
}

type FilterEnvoyPtr = *mut c_void;
type FilterModulePtr = *const c_void;
type ConfigEnvoyPtr = *mut c_void;
type ConfigModulePtr = *const c_void;
type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Clone, Copy)]
pub enum HeaderKind {
    Request = 0,
    Response = 2,
}

/// `envoy_dynamic_module_type_http_body_type`.
#[derive(Clone, Copy)]
pub enum BodyKind {
    ReceivedRequest = 0,
    BufferedRequest = 1,
    ReceivedResponse = 2,
    BufferedResponse = 3,
}

/// `envoy_dynamic_module_type_attribute_id`, the members used.
#[derive(Clone, Copy)]
pub enum Attribute {
    ResponseCode = 15,
    SourceAddress = 24,
    ConnectionUriSanPeerCertificate = 37,
    UpstreamAddress = 41,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// What a hook answers Envoy about iteration (the header's status enums share these values
/// where fhirgate uses them: 0 continue, 1 stop; a body's 1 is "stop and buffer").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    Continue = 0,
    Stop = 1,
}

/// `envoy_dynamic_module_type_http_callout_result`: 0 is success.
const CALLOUT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_init_result`: 0 is success.
const CALLOUT_INIT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_metrics_result`: 0 is success.
const METRICS_SUCCESS: u32 = 0;

/// Declares Envoy's callbacks. They are not linked: the module looks each one up by name when
/// Envoy loads it ([`bind_callbacks`]) and calls it through the table, so an Envoy that lacks
/// one still loads the module, which then refuses to start, naming the callback, instead of
/// failing in the dynamic loader (or crashing at the first call). The module's `.so` holds no
/// relocation against any callback (a test reads them).
macro_rules! envoy_callbacks {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        /// Envoy's callbacks, as found when the module loaded.
        #[allow(non_snake_case)]
        struct Callbacks {
            $($name: Option<unsafe extern "C" fn($($ty),*) $(-> $ret)?>,)*
        }

        static BOUND: std::sync::OnceLock<Callbacks> = std::sync::OnceLock::new();

        $(
            /// Calls Envoy's callback of this name.
            #[allow(clippy::too_many_arguments)]
            unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                match BOUND.get().and_then(|c| c.$name) {
                    Some(callback) => callback($($arg),*),
                    // Never reached: Envoy calls no hook of a module whose init refused, and
                    // init refuses unless every callback was found. Every callback returns an
                    // integer, a bool, a pointer or nothing, for which all zeroes is a valid
                    // value (a failure, null).
                    None => std::mem::zeroed(),
                }
            }
        )*

        /// Looks up every callback in the process; the first one missing, if any.
        pub fn bind_callbacks() -> Result<(), &'static str> {
            let mut missing: Option<&'static str> = None;
            let callbacks = Callbacks {
                $($name: {
                    let found = lookup(concat!(stringify!($name), "\0"));
                    if found.is_null() {
                        missing.get_or_insert(stringify!($name));
                    }
                    // SAFETY: `found` is the address of the function the ABI header declares
                    // with this signature (or null, which is `None`: `Option` of a function
                    // pointer has the pointer's layout).
                    unsafe { std::mem::transmute::<*mut c_void, Option<unsafe extern "C" fn($($ty),*) $(-> $ret)?>>(found) }
                },)*
            };
            // Bound even when one is missing, so the refusal can still be logged.
            let _ = BOUND.set(callbacks);
            match missing {
                Some(name) => Err(name),
                None => Ok(()),
            }
        }
    };
}

envoy_callbacks! {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        kind: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        kind: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        kind: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterEnvoyPtr, kind: u32)
        -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoyPtr,
        kind: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        kind: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: FilterEnvoyPtr,
        kind: u32,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: FilterEnvoyPtr,
        kind: u32,
        bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: FilterEnvoyPtr,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_response_body(
        filter: FilterEnvoyPtr,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: FilterEnvoyPtr,
        id: u32,
        result: *mut u64,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

extern "C" {
    /// glibc's `dlsym`; with `RTLD_DEFAULT` (null) it searches the process's global symbols,
    /// where the Envoy binary exports its callbacks.
    fn dlsym(handle: *mut c_void, symbol: *const std::ffi::c_char) -> *mut c_void;
}

/// The address of the process's function `name` (NUL-terminated), or null. The test build
/// (`--features test-hooks`) takes the callback named by FHIRGATE_TEST_ABI_PROBE for missing,
/// as in an Envoy of another ABI.
fn lookup(name: &str) -> *mut c_void {
    if cfg!(feature = "test-hooks")
        && std::env::var("FHIRGATE_TEST_ABI_PROBE")
            .is_ok_and(|hidden| name.trim_end_matches('\0') == hidden)
    {
        return std::ptr::null_mut();
    }
    // SAFETY: `name` is NUL-terminated; dlsym only reads it.
    unsafe { dlsym(std::ptr::null_mut(), name.as_ptr().cast()) }
}

/// Writes a log line through Envoy's logger.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the message is borrowed for the call only.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

/// One stream's handle on Envoy (see the module's invariants).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Filter(FilterEnvoyPtr);

impl Filter {
    pub fn header(self, kind: HeaderKind, name: &str) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer::EMPTY;
        let mut count = 0usize;
        // SAFETY: `self.0` is live (module invariants); `out` and `count` are valid for writes.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                kind as u32,
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                &mut count,
            )
        };
        (found && count > 0 && !out.ptr.is_null()).then(|| out.to_vec())
    }

    pub fn headers(self, kind: HeaderKind) -> Vec<(String, Vec<u8>)> {
        // SAFETY: `self.0` is live.
        let size =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, kind as u32) };
        if size == 0 {
            return Vec::new();
        }
        let mut out = vec![EnvoyHeader::EMPTY; size];
        // SAFETY: `out` holds exactly the `size` entries Envoy writes.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.0, kind as u32, out.as_mut_ptr())
        };
        if !ok {
            return Vec::new();
        }
        out.into_iter().map(EnvoyHeader::to_pair).collect()
    }

    /// Sets a header, or removes it with `None`.
    pub fn set_header(self, kind: HeaderKind, name: &str, value: Option<&str>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: `self.0` is live; the buffers are borrowed for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                kind as u32,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    pub fn send_response(self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut headers = module_headers(headers);
        // SAFETY: `self.0` is live; headers, body and details are borrowed for the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    pub fn body_size(self, kind: BodyKind) -> usize {
        // SAFETY: `self.0` is live.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, kind as u32) }
    }

    /// The body's bytes, appended to `out`.
    pub fn read_body(self, kind: BodyKind, out: &mut Vec<u8>) {
        // SAFETY: `self.0` is live.
        let chunks =
            unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, kind as u32) };
        if chunks == 0 {
            return;
        }
        let mut buffers = vec![EnvoyBuffer::EMPTY; chunks];
        // SAFETY: `buffers` holds exactly the `chunks` entries Envoy writes.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                kind as u32,
                buffers.as_mut_ptr(),
            )
        };
        if ok {
            out.reserve(buffers.iter().map(|b| b.length).sum());
            for b in buffers {
                b.append_to(out);
            }
        }
    }

    pub fn drain_body(self, kind: BodyKind, bytes: usize) -> bool {
        // SAFETY: `self.0` is live.
        unsafe { envoy_dynamic_module_callback_http_drain_body(self.0, kind as u32, bytes) }
    }

    pub fn append_body(self, kind: BodyKind, data: &[u8]) -> bool {
        // SAFETY: `self.0` is live; `data` is borrowed for the call.
        unsafe {
            envoy_dynamic_module_callback_http_append_body(
                self.0,
                kind as u32,
                ModuleBuffer::of(data),
            )
        }
    }

    /// Whether the body this hook received is an earlier filter's buffered body (then the
    /// buffered and received bodies are the same bytes).
    pub fn received_is_buffered(self, request: bool) -> bool {
        // SAFETY: `self.0` is live.
        unsafe {
            if request {
                envoy_dynamic_module_callback_http_received_buffered_request_body(self.0)
            } else {
                envoy_dynamic_module_callback_http_received_buffered_response_body(self.0)
            }
        }
    }

    pub fn continue_decoding(self) {
        // SAFETY: `self.0` is live.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    pub fn continue_encoding(self) {
        // SAFETY: `self.0` is live.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_encoding(self.0) }
    }

    pub fn clear_route_cache(self) {
        // SAFETY: `self.0` is live.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    pub fn attribute_string(self, id: Attribute) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: `self.0` is live; `out` is valid for writes.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0, id as u32, &mut out,
            )
        };
        ok.then(|| out.to_vec())
    }

    pub fn attribute_int(self, id: Attribute) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: `self.0` is live; `out` is valid for writes.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(self.0, id as u32, &mut out)
        };
        ok.then_some(out)
    }

    pub fn filter_state(self, key: &str) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: `self.0` is live; `out` is valid for writes.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                &mut out,
            )
        };
        ok.then(|| out.to_vec())
    }

    pub fn set_filter_state(self, key: &str, value: &[u8]) -> bool {
        // SAFETY: `self.0` is live; the buffers are borrowed for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Starts a call answered in this stream's `http_callout_done` hook; Envoy's callout id.
    pub fn callout(
        self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u64> {
        // SAFETY: `self.0` is live (module invariants).
        unsafe {
            callout(
                envoy_dynamic_module_callback_http_filter_http_callout,
                self.0,
                cluster,
                headers,
                body,
                timeout_ms,
            )
        }
    }

    /// Adds `value` to counter `id` (`gauge`: sets gauge `id` to it), with one value per
    /// label it was defined with.
    pub fn update_metric(self, gauge: bool, id: usize, labels: &[&str], value: u64) -> bool {
        // SAFETY: `self.0` is live (module invariants).
        unsafe { set_metric(MetricOwner::Stream, gauge, self.0, id, labels, value) }
    }
}

/// The shape Envoy's stream-level and configuration-level callouts share.
type CalloutFn = unsafe fn(
    *mut c_void,
    *mut u64,
    ModuleBuffer,
    *mut ModuleHeader,
    usize,
    ModuleBuffer,
    u64,
) -> u32;

/// Starts a call through `start` on `owner` (a stream or a configuration).
///
/// SAFETY (for callers): `owner` is live for `start`'s kind and used on its thread.
unsafe fn callout(
    start: CalloutFn,
    owner: *mut c_void,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Option<u64> {
    let mut headers = module_headers(headers);
    let mut id = 0u64;
    // Everything passed is borrowed for the call; `id` is valid for writes.
    let result = start(
        owner,
        &mut id,
        ModuleBuffer::of(cluster.as_bytes()),
        headers.as_mut_ptr(),
        headers.len(),
        ModuleBuffer::of(body),
        timeout_ms,
    );
    (result == CALLOUT_INIT_SUCCESS).then_some(id)
}

/// Label names or values as Envoy reads them (borrowed: valid while `texts` is).
fn label_buffers(texts: &[&str]) -> Vec<ModuleBuffer> {
    texts
        .iter()
        .map(|t| ModuleBuffer::of(t.as_bytes()))
        .collect()
}

/// The array Envoy reads `buffers` from: null when there are none, as the header asks.
fn buffers_ptr(buffers: &mut [ModuleBuffer]) -> *mut ModuleBuffer {
    if buffers.is_empty() {
        std::ptr::null_mut()
    } else {
        buffers.as_mut_ptr()
    }
}

/// What a metric update goes through: a stream, or a configuration (no stream).
#[derive(Clone, Copy)]
enum MetricOwner {
    Stream,
    Config,
}

/// Updates metric `id` through `owner` (a stream or a configuration, as `through` says). Envoy
/// refuses (InvalidLabels) a number of label values other than the metric was defined with.
///
/// SAFETY (for callers): `owner` is live, of the kind `through` says.
unsafe fn set_metric(
    through: MetricOwner,
    gauge: bool,
    owner: *mut c_void,
    id: usize,
    labels: &[&str],
    value: u64,
) -> bool {
    let mut values = label_buffers(labels);
    let values_ptr = buffers_ptr(&mut values);
    let update: unsafe fn(*mut c_void, usize, *mut ModuleBuffer, usize, u64) -> u32 =
        match (through, gauge) {
            (MetricOwner::Stream, false) => {
                envoy_dynamic_module_callback_http_filter_increment_counter
            }
            (MetricOwner::Stream, true) => envoy_dynamic_module_callback_http_filter_set_gauge,
            (MetricOwner::Config, false) => {
                envoy_dynamic_module_callback_http_filter_config_increment_counter
            }
            (MetricOwner::Config, true) => {
                envoy_dynamic_module_callback_http_filter_config_set_gauge
            }
        };
    // `values` and the label bytes are borrowed for the call only.
    update(owner, id, values_ptr, values.len(), value) == METRICS_SUCCESS
}

/// A filter configuration's handle on Envoy (see the module's invariants).
#[derive(Clone, Copy)]
pub struct ConfigHandle(ConfigEnvoyPtr);

// SAFETY: the handle travels inside the shared configuration, but calls through it are made
// only on the main thread, inside that configuration's hooks (module invariants).
unsafe impl Send for ConfigHandle {}
// SAFETY: as above.
unsafe impl Sync for ConfigHandle {}

impl ConfigHandle {
    /// Defines a metric, with one label or none (only while Envoy creates the
    /// configuration); its id.
    pub fn define(self, name: &str, gauge: bool, label: Option<&str>) -> Option<usize> {
        let define = if gauge {
            envoy_dynamic_module_callback_http_filter_config_define_gauge
        } else {
            envoy_dynamic_module_callback_http_filter_config_define_counter
        };
        let mut labels = label_buffers(label.as_slice());
        let labels_ptr = buffers_ptr(&mut labels);
        let mut id = 0usize;
        // SAFETY: `self.0` is live (inside config_new); the name and labels are borrowed for
        // the call (Envoy copies them into its symbol table); `id` is valid for writes.
        let r = unsafe {
            define(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                labels_ptr,
                labels.len(),
                &mut id,
            )
        };
        (r == METRICS_SUCCESS).then_some(id)
    }

    /// As [`Filter::update_metric`], outside any stream (main thread).
    pub fn update_metric(self, gauge: bool, id: usize, labels: &[&str], value: u64) -> bool {
        // SAFETY: `self.0` is live and this runs on the main thread (module invariants).
        unsafe { set_metric(MetricOwner::Config, gauge, self.0, id, labels, value) }
    }

    /// Starts a call answered in `on_http_filter_config_http_callout_done` (main thread).
    pub fn callout(
        self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u64> {
        // SAFETY: `self.0` is live and this runs on the main thread (module invariants).
        unsafe {
            callout(
                envoy_dynamic_module_callback_http_filter_config_http_callout,
                self.0,
                cluster,
                headers,
                body,
                timeout_ms,
            )
        }
    }

    pub fn scheduler(self) -> Option<Scheduler> {
        // SAFETY: `self.0` is live (inside config_new).
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }
}

/// Wakes the main thread's `on_http_filter_config_scheduled` hook; deleted when dropped.
pub struct Scheduler(SchedulerPtr);

// SAFETY: the header allows committing a config scheduler from any thread; it is deleted once,
// when the configuration that owns it is dropped.
unsafe impl Send for Scheduler {}
// SAFETY: as above; commit takes no exclusive access.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event: u64) {
        // SAFETY: the scheduler is live until dropped.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: deleted exactly once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// The lock of one worker thread's pipeline roots, which the main thread also serves while
/// the worker is idle (Envoy gives HTTP-filter modules no timer on workers): a root's due
/// ticks and its calls' answers must not wait for the worker's next request.
///
/// Re-entrant on the thread that holds it: Envoy runs hooks inside hooks (resuming a stream
/// runs the next filter's hooks at once, which may be another fhirgate filter on the same
/// worker), and an inner hook must not wait for its own thread.
pub struct ThreadLock {
    mutex: std::sync::Mutex<()>,
    /// The holding thread's number (0: none).
    holder: std::sync::atomic::AtomicU64,
}

thread_local! {
    static THREAD_NUMBER: u64 = {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

fn thread_number() -> u64 {
    THREAD_NUMBER.with(|n| *n)
}

impl Default for ThreadLock {
    fn default() -> Self {
        ThreadLock {
            mutex: std::sync::Mutex::new(()),
            holder: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl ThreadLock {
    fn held_here(&self) -> bool {
        self.holder.load(std::sync::atomic::Ordering::Acquire) == thread_number()
    }
}

/// This thread holds a [`ThreadLock`]: the holder is cleared before the guard unlocks, also
/// when the holder unwinds.
struct Held<'a>(&'a ThreadLock, Option<std::sync::MutexGuard<'a, ()>>);

impl<'a> Held<'a> {
    fn new(lock: &'a ThreadLock, guard: std::sync::MutexGuard<'a, ()>) -> Held<'a> {
        lock.holder
            .store(thread_number(), std::sync::atomic::Ordering::Release);
        Held(lock, Some(guard))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.holder.store(0, std::sync::atomic::Ordering::Release);
        drop(self.1.take());
    }
}

/// A value of a worker thread — a pipeline root, single-threaded state (`Rc`, `RefCell`)
/// shared by reference count with the contexts of that worker's streams — reachable only
/// while holding the worker thread's [`ThreadLock`].
///
/// It may cross threads because of this invariant, kept by [`crate::module`]: the root and
/// every stream context made from it are touched (used, cloned from or dropped) only inside
/// [`WorkerLock::hold`] or [`WorkerLock::try_hold`] of that worker, so the lock orders every
/// access and no two threads ever see the shared counts or cells at once. The one exception is
/// the value's own drop, wherever the last `Arc` of it goes: it is sound because no `Rc` of
/// the root's graph lives anywhere but in the root and its streams' contexts, and every
/// context is dropped (under the lock) before the stream lets go of its `Arc`.
pub struct WorkerLock<T> {
    thread: std::sync::Arc<ThreadLock>,
    value: std::cell::RefCell<T>,
}

// SAFETY: see the invariant above: the value is only reached under the thread's lock.
unsafe impl<T> Send for WorkerLock<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for WorkerLock<T> {}

impl<T> WorkerLock<T> {
    pub fn new(thread: std::sync::Arc<ThreadLock>, value: T) -> WorkerLock<T> {
        WorkerLock {
            thread,
            value: std::cell::RefCell::new(value),
        }
    }

    /// Runs `f` under the worker thread's lock (waiting while the main thread serves it).
    pub fn hold<R>(&self, f: impl FnOnce(&std::cell::RefCell<T>) -> R) -> R {
        if self.thread.held_here() {
            return f(&self.value);
        }
        let guard = self
            .thread
            .mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _held = Held::new(&self.thread, guard);
        f(&self.value)
    }

    /// Runs `f` if the worker thread's lock is free now (the main thread: a busy worker
    /// serves its own root).
    pub fn try_hold<R>(&self, f: impl FnOnce(&std::cell::RefCell<T>) -> R) -> Option<R> {
        if self.thread.held_here() {
            return Some(f(&self.value));
        }
        let guard = match self.thread.mutex.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let _held = Held::new(&self.thread, guard);
        Some(f(&self.value))
    }
}

/// A dispatched call's answer as Envoy hands it to a `callout_done` hook, copied.
fn callout_answer(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> crate::host::CallAnswer {
    if result != CALLOUT_SUCCESS {
        return crate::host::CallAnswer::default();
    }
    let headers = if headers.is_null() {
        Vec::new()
    } else {
        // SAFETY: Envoy passes `headers_size` headers, valid during the hook; copied now.
        unsafe { std::slice::from_raw_parts(headers, headers_size) }
            .iter()
            .map(|h| h.to_pair())
            .collect()
    };
    let mut body = Vec::new();
    if !chunks.is_null() {
        // SAFETY: Envoy passes `chunks_size` buffers, valid during the hook; copied now.
        for chunk in unsafe { std::slice::from_raw_parts(chunks, chunks_size) } {
            body.extend_from_slice(&chunk.to_vec());
        }
    }
    crate::host::CallAnswer { headers, body }
}

// ---- Hooks Envoy calls ----------------------------------------------------------------

/// The ABI this module was built against, `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40.
pub const ABI_VERSION: &str = "v0.2.0";
static ABI_VERSION_C: &[u8] = b"v0.2.0\0";

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    if crate::guard::catching(crate::module::program_init) == Some(true) {
        ABI_VERSION_C.as_ptr()
    } else {
        std::ptr::null()
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    let (name, config) = (name.to_vec(), config.to_vec());
    let handle = ConfigHandle(config_envoy);
    match crate::guard::catching(|| crate::module::config_new(handle, &name, &config)).flatten() {
        Some(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
        None => std::ptr::null(),
    }
}

/// The configuration behind a config module pointer.
///
/// SAFETY (for callers): `ptr` came from `config_new` above and `config_destroy` has not run.
unsafe fn config_of<'a>(ptr: ConfigModulePtr) -> Option<&'a crate::module::ConfigRef> {
    ptr.cast::<crate::module::ConfigRef>().as_ref()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(ptr: ConfigModulePtr) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` is the box `config_new` leaked; Envoy destroys it once.
    let config = unsafe { Box::from_raw(ptr.cast_mut().cast::<crate::module::ConfigRef>()) };
    crate::guard::catching(move || drop(config));
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    ptr: ConfigModulePtr,
    event: u64,
) {
    // SAFETY: the configuration outlives its scheduler's events.
    if let Some(config) = unsafe { config_of(ptr) } {
        crate::guard::catching(|| crate::module::scheduled(config, event));
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    ptr: ConfigModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    let answer = callout_answer(result, headers, headers_size, chunks, chunks_size);
    // SAFETY: the configuration outlives its calls.
    if let Some(config) = unsafe { config_of(ptr) } {
        crate::guard::catching(|| crate::module::relayed_answer(config, callout_id, answer));
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    filter: FilterEnvoyPtr,
) -> FilterModulePtr {
    // SAFETY: Envoy creates streams only for a live configuration.
    let Some(config) = (unsafe { config_of(config) }) else {
        return std::ptr::null();
    };
    let filter = Filter(filter);
    match crate::guard::catching(|| crate::module::stream_new(config, filter)).flatten() {
        Some(stream) => Box::into_raw(Box::new(stream)).cast_const().cast(),
        None => std::ptr::null(),
    }
}

/// The stream behind a filter module pointer.
///
/// SAFETY (for callers): `ptr` came from `filter_new` above and `destroy` has not run (Envoy
/// destroys a filter from its deferred-deletion list, never inside one of its hooks); hooks
/// of a stream run on one thread. Shared, because `stream_complete` may arrive inside another
/// of the stream's hooks: the stream's state is behind a `RefCell` ([`crate::module::Stream`]).
unsafe fn stream_of<'a>(ptr: FilterModulePtr) -> Option<&'a crate::module::Stream> {
    ptr.cast::<crate::module::Stream>().as_ref()
}

macro_rules! stream_hook {
    ($name:ident, $method:ident $(, $eos:ident)?) => {
        #[no_mangle]
        extern "C" fn $name(filter: FilterEnvoyPtr, ptr: FilterModulePtr $(, $eos: bool)?) -> u32 {
            // SAFETY: see `stream_of`.
            let status = match unsafe { stream_of(ptr) } {
                Some(stream) => crate::guard::catching(|| stream.$method($($eos)?)),
                // No stream (its creation failed): nothing passes.
                None => crate::guard::catching(|| crate::module::refuse_unbuilt(Filter(filter))),
            };
            status.unwrap_or(Status::Stop) as u32
        }
    };
}

stream_hook!(
    envoy_dynamic_module_on_http_filter_request_headers,
    request_headers,
    end_of_stream
);
stream_hook!(
    envoy_dynamic_module_on_http_filter_request_body,
    request_body,
    end_of_stream
);
stream_hook!(
    envoy_dynamic_module_on_http_filter_request_trailers,
    request_trailers
);
stream_hook!(
    envoy_dynamic_module_on_http_filter_response_headers,
    response_headers,
    end_of_stream
);
stream_hook!(
    envoy_dynamic_module_on_http_filter_response_body,
    response_body,
    end_of_stream
);
stream_hook!(
    envoy_dynamic_module_on_http_filter_response_trailers,
    response_trailers
);

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter: FilterEnvoyPtr,
    ptr: FilterModulePtr,
) {
    // SAFETY: see `stream_of`.
    if let Some(stream) = unsafe { stream_of(ptr) } {
        crate::guard::catching(|| stream.complete());
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(ptr: FilterModulePtr) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` is the box `filter_new` leaked; Envoy destroys it once, after its hooks.
    let stream = unsafe { Box::from_raw(ptr.cast_mut().cast::<crate::module::Stream>()) };
    crate::guard::catching(move || drop(stream));
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter: FilterEnvoyPtr,
    ptr: FilterModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    let answer = callout_answer(result, headers, headers_size, chunks, chunks_size);
    // SAFETY: see `stream_of`.
    if let Some(stream) = unsafe { stream_of(ptr) } {
        crate::guard::catching(|| stream.callout_done(callout_id, answer));
    }
}

/// Hooks Envoy requires of every HTTP filter module that fhirgate has no use for: streamed
/// callouts, per-stream schedulers and write-buffer watermarks are never started or matter
/// only to terminal filters.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: FilterEnvoyPtr,
    _ptr: FilterModulePtr,
) {
}
