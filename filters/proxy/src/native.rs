//! Outside Wasm, the host calls go to one of two hosts: Envoy through the native dynamic
//! module (`filters/native`), which installs itself here when Envoy loads it, or, when
//! nothing is installed (the native tests, the CLI), the thread's [`crate::mock`] host.
//!
//! The functions have the signatures of proxy-wasm's `hostcalls`, so [`crate::host`] and the
//! stages are the same code in the Wasm module, in the native module and under test.

use proxy_wasm::types::{BufferType, Bytes, MapType, MetricType, Status};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

static INSTALLED: OnceLock<&'static dyn Host> = OnceLock::new();

/// Installs the process's host; false if one was installed already.
pub fn install(host: &'static dyn Host) -> bool {
    INSTALLED.set(host).is_ok()
}

macro_rules! host_calls {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;)*) => {
        /// What a host answers: the proxy-wasm host calls fhirgate makes.
        pub trait Host: Sync {
            $($(#[$doc])* fn $name(&self, $($arg: $ty),*) -> $ret;)*
        }

        $(
            $(#[$doc])*
            pub fn $name($($arg: $ty),*) -> $ret {
                match INSTALLED.get() {
                    Some(host) => host.$name($($arg),*),
                    None => crate::mock::$name($($arg),*),
                }
            }
        )*
    };
}

host_calls! {
    fn get_current_time() -> Result<SystemTime, Status>;
    fn get_map_value(map: MapType, key: &str) -> Result<Option<String>, Status>;
    /// Sets, or with `None` removes, a header.
    fn set_map_value(map: MapType, key: &str, value: Option<&str>) -> Result<(), Status>;
    fn get_map_bytes(map: MapType) -> Result<Vec<(String, Bytes)>, Status>;
    fn get_buffer(buffer: BufferType, start: usize, max_size: usize) -> Result<Option<Bytes>, Status>;
    fn set_buffer(buffer: BufferType, start: usize, size: usize, value: &[u8]) -> Result<(), Status>;
    fn get_property(path: Vec<&str>) -> Result<Option<Bytes>, Status>;
    fn set_property(path: Vec<&str>, value: Option<&[u8]>) -> Result<(), Status>;
    fn dispatch_http_call(
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        trailers: Vec<(&str, &str)>,
        timeout: Duration,
    ) -> Result<u32, Status>;
    fn resume_http_request() -> Result<(), Status>;
    fn resume_http_response() -> Result<(), Status>;
    fn set_tick_period(period: Duration) -> Result<(), Status>;
    fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status>;
    fn increment_metric(id: u32, offset: i64) -> Result<(), Status>;
    fn record_metric(id: u32, value: u64) -> Result<(), Status>;
    fn send_http_response(status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Status>;
    fn call_foreign_function(name: &str, arguments: Option<&[u8]>) -> Result<Option<Bytes>, Status>;
    fn get_shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status>;
    fn set_shared_data(key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), Status>;
}
