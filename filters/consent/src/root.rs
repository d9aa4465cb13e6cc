//! Root context: compiles the configuration once; owns the worker's Consent cache.

use crate::http::ConsentFilter;
use fhirgate_core::consent::cache::ConsentCache;
use fhirgate_core::consent::ConsentPolicy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;

pub const FILTER: &str = "fhirgate.consent";

pub struct Shared {
    pub policy: ConsentPolicy,
    pub cache: RefCell<ConsentCache>,
}

#[derive(Default)]
pub struct ConsentRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for ConsentRoot {}

impl RootContext for ConsentRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        fhirgate_proxy::declare(
            FILTER,
            &[
                ("withheld", ""),
                ("redacted", ""),
                ("denied", ""),
                ("part2_labelled", ""),
                ("break_glass_released", ""),
                ("released", "unparsed"),
                ("consent_cache", "hit"),
                ("consent_cache", "miss"),
                ("consent_cache", "fetch_failed"),
                ("consent_cache", "fetch_retried"),
            ],
        );
        match fhirgate_proxy::load_config(self, FILTER, ConsentPolicy::from_json) {
            Some(policy) => {
                let (size, ttl) = policy
                    .config
                    .consents
                    .as_ref()
                    .map_or((1, 0), |c| (c.cache_size, c.cache_seconds));
                self.shared = Some(Rc::new(Shared {
                    policy,
                    cache: RefCell::new(ConsentCache::new(size, ttl)),
                }));
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ConsentFilter::new(self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
