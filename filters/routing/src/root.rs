//! Root: compiles the configuration once, hands it to every request.

use crate::http::RoutingFilter;
use fhirgate_core::pipeline::Stage;
use fhirgate_core::routing::RoutingPolicy;
use fhirgate_proxy::StageRoot;
use std::rc::Rc;

pub const FILTER: &str = "fhirgate.routing";

#[derive(Default)]
pub struct RoutingRoot {
    policy: Option<Rc<RoutingPolicy>>,
}

impl StageRoot for RoutingRoot {
    fn configure(&mut self, config: &[u8]) -> bool {
        fhirgate_proxy::declare(FILTER, &[("routed", ""), ("denied", "")]);
        match fhirgate_proxy::load_config(config, FILTER, RoutingPolicy::from_json) {
            Some(policy) => {
                self.policy = Some(Rc::new(policy));
                true
            }
            None => false,
        }
    }

    fn create(&self) -> Box<dyn Stage> {
        Box::new(RoutingFilter::new(self.policy.clone()))
    }
}
