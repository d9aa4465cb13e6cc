//! The cost floor of a proxy-wasm filter in Envoy, for `make bench`: per request it sets one
//! routing header and clears the route cache, the least the routing filter must do. The
//! difference between this and the routing filter is what fhirgate's own work costs.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
}}

struct FloorRoot;
impl Context for FloorRoot {}
impl RootContext for FloorRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor;
impl Context for Floor {}
impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        fhirgate_proxy::host::set_property(vec![fhirgate_proxy::POOL_PROPERTY], b"fhir");
        fhirgate_proxy::clear_route_cache();
        Action::Continue
    }
}
