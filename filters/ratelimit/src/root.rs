//! Root: compiles the configuration once and creates the break-glass ledger.

use crate::http::RateLimitFilter;
use fhirgate_core::pipeline::Stage;
use fhirgate_core::ratelimit::breakglass::ensure_ledger;
use fhirgate_core::ratelimit::filter::RateLimitFilterPolicy;
use fhirgate_proxy::{SharedData, StageRoot};
use std::rc::Rc;

pub const FILTER: &str = "fhirgate.ratelimit";

#[derive(Default)]
pub struct RateLimitRoot {
    policy: Option<Rc<RateLimitFilterPolicy>>,
}

impl StageRoot for RateLimitRoot {
    fn configure(&mut self, config: &[u8]) -> bool {
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
        match fhirgate_proxy::load_config(config, FILTER, RateLimitFilterPolicy::from_json) {
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

    fn create(&self) -> Box<dyn Stage> {
        Box::new(RateLimitFilter::new(self.policy.clone()))
    }
}
