//! Root context: compiles the configuration once and creates the break-glass ledger.

use crate::http::RateLimitFilter;
use fhirgate_core::ratelimit::breakglass::ensure_ledger;
use fhirgate_core::ratelimit::filter::RateLimitFilterPolicy;
use fhirgate_proxy::SharedData;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

pub const FILTER: &str = "fhirgate.ratelimit";

#[derive(Default)]
pub struct RateLimitRoot {
    policy: Option<Rc<RateLimitFilterPolicy>>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        fhirgate_proxy::declare(
            FILTER,
            &[
                ("requests", ""),
                ("limited", ""),
                ("denied", ""),
                ("break_glass", "used"),
                ("break_glass", "refused"),
            ],
        );
        match fhirgate_proxy::load_config(self, FILTER, RateLimitFilterPolicy::from_json) {
            Some(policy) => {
                if policy.break_glass_header().is_some() {
                    ensure_ledger(&mut SharedData);
                }
                self.policy = Some(Rc::new(policy));
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitFilter::new(self.policy.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
