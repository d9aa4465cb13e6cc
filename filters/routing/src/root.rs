//! Root context: compiles the configuration once, hands it to every request.

use crate::http::RoutingFilter;
use fhirgate_core::routing::RoutingPolicy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

pub const FILTER: &str = "fhirgate.routing";

#[derive(Default)]
pub struct RoutingRoot {
    policy: Option<Rc<RoutingPolicy>>,
}

impl Context for RoutingRoot {}

impl RootContext for RoutingRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        fhirgate_proxy::declare(FILTER, &[("routed", ""), ("denied", "")]);
        match fhirgate_proxy::load_config(self, FILTER, RoutingPolicy::from_json) {
            Some(policy) => {
                self.policy = Some(Rc::new(policy));
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RoutingFilter::new(self.policy.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
