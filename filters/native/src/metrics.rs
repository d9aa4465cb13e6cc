//! Metrics for a host that may define them only while Envoy creates a configuration.
//!
//! The pipeline names a metric when it first counts it (`fhirgate.authz.denied.token-expired`),
//! as proxy-wasm allows at any time. Envoy's dynamic modules freeze a configuration's metrics
//! once it is created, so each family the stages declare with a variable detail
//! (`fhirgate.authz.denied`) is also defined as a labelled counter, the label named as the
//! bootstrap's tag extractors name it for the Wasm module ([`fhirgate_proxy::detail_label`]).
//! A name first seen at request time is then its family's counter with the detail as the label
//! value: Prometheus scrapes `fhirgate_authz_denied{reason="token-expired"}` from either build.
//!
//! Ids handed to the pipeline are process-wide (its id cache is per thread, not per
//! configuration); each configuration resolves them to its own Envoy metrics.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// What an id counts in one configuration: an Envoy metric, with the label value when it is a
/// family's labelled counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub envoy_id: usize,
    pub gauge: bool,
    /// Shared: every count of this id clones the target.
    pub label_value: Option<std::sync::Arc<str>>,
}

/// Defines metrics in Envoy while it creates a configuration: (name, gauge, label) → id.
pub trait Define {
    fn define(&self, name: &str, gauge: bool, label: Option<&str>) -> Option<usize>;
}

/// A configuration's metrics: defined while Envoy created it, resolved by id afterwards.
#[derive(Default)]
pub struct Metrics {
    /// Labelled counters by family name, defined with the configuration.
    families: Mutex<HashMap<String, usize>>,
    resolved: Mutex<HashMap<u32, Option<Target>>>,
}

/// Metric names by process-wide id.
#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

fn names<R>(f: impl FnOnce(&mut Names) -> R) -> R {
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    f(&mut names)
}

/// The process-wide id of `name`.
fn id_of(name: &str) -> u32 {
    names(|n| {
        if let Some(id) = n.ids.get(name) {
            return *id;
        }
        let id = n.names.len() as u32;
        n.names.push(name.to_string());
        n.ids.insert(name.to_string(), id);
        id
    })
}

fn name_of(id: u32) -> Option<String> {
    names(|n| n.names.get(id as usize).cloned())
}

impl Metrics {
    /// Defines `name` while Envoy creates the configuration (`config`), or later finds what it
    /// counts; its id. None when it can be neither.
    pub fn define(&self, config: Option<&dyn Define>, name: &str, gauge: bool) -> Option<u32> {
        let id = id_of(name);
        let Some(config) = config else {
            return self.target(id).map(|_| id);
        };
        let envoy_id = config.define(name, gauge, None)?;
        self.remember(
            id,
            Some(Target {
                envoy_id,
                gauge,
                label_value: None,
            }),
        );
        if let Some(label) = family_label(name).filter(|_| !gauge) {
            if let Some(family) = config.define(name, false, Some(label)) {
                self.families
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_string(), family);
            }
        }
        Some(id)
    }

    fn remember(&self, id: u32, target: Option<Target>) {
        self.resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, target);
    }

    /// What `id` counts here: defined with the configuration, or the labelled counter of the
    /// family its name extends by one detail. Remembered either way.
    pub fn target(&self, id: u32) -> Option<Target> {
        if let Some(known) = self
            .resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return known.clone();
        }
        let target = name_of(id).and_then(|name| {
            let (family, detail) = name.rsplit_once('.')?;
            let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
            families.get(family).map(|envoy_id| Target {
                envoy_id: *envoy_id,
                gauge: false,
                label_value: Some(detail.into()),
            })
        });
        self.remember(id, target.clone());
        target
    }
}

/// The label of a family name `<prefix>.<stage>.<event>` whose counters carry a detail.
fn family_label(name: &str) -> Option<&'static str> {
    let (_, event) = name.rsplit_once('.')?;
    Some(fhirgate_proxy::detail_label(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_with_a_detail_are_labelled_as_the_bootstrap_tags_them() {
        assert_eq!(family_label("fhirgate.authz.denied"), Some("reason"));
        assert_eq!(family_label("fhirgate.routing.routed"), Some("interaction"));
        assert_eq!(family_label("fhirgate.ratelimit.requests"), Some("class"));
        assert_eq!(family_label("fhirgate.authz.token_cache"), Some("outcome"));
    }

    #[test]
    fn ids_are_the_same_for_a_name_in_every_configuration() {
        let a = id_of("fhirgate.test.same");
        assert_eq!(id_of("fhirgate.test.same"), a);
        assert_ne!(id_of("fhirgate.test.other"), a);
        assert_eq!(name_of(a).as_deref(), Some("fhirgate.test.same"));
    }

    #[test]
    fn a_name_neither_defined_nor_in_a_family_counts_nothing() {
        let metrics = Metrics::default();
        assert_eq!(
            metrics.define(None, "fhirgate.test.undeclared.x", false),
            None
        );
    }

    /// Envoy's side, recording what was defined.
    #[derive(Default)]
    struct Envoy(std::cell::RefCell<Vec<(String, bool, Option<String>)>>);

    impl Define for Envoy {
        fn define(&self, name: &str, gauge: bool, label: Option<&str>) -> Option<usize> {
            let mut defined = self.0.borrow_mut();
            defined.push((name.to_string(), gauge, label.map(str::to_string)));
            Some(defined.len() - 1)
        }
    }

    #[test]
    fn a_family_is_defined_plain_and_labelled_at_configuration() {
        let (envoy, metrics) = (Envoy::default(), Metrics::default());
        let id = metrics.define(Some(&envoy), "fhirgate.t1.denied", false);
        assert_eq!(
            *envoy.0.borrow(),
            vec![
                ("fhirgate.t1.denied".to_string(), false, None),
                (
                    "fhirgate.t1.denied".to_string(),
                    false,
                    Some("reason".to_string())
                ),
            ]
        );
        let plain = id.and_then(|id| metrics.target(id));
        assert_eq!(plain.map(|t| (t.envoy_id, t.label_value)), Some((0, None)));
        // At request time (no Envoy to define with) a detail counts in the labelled family.
        let detail = metrics.define(None, "fhirgate.t1.denied.token-expired", false);
        let target = detail.and_then(|id| metrics.target(id));
        assert_eq!(
            target,
            Some(Target {
                envoy_id: 1,
                gauge: false,
                label_value: Some("token-expired".into())
            })
        );
    }

    #[test]
    fn gauges_are_never_labelled() {
        let (envoy, metrics) = (Envoy::default(), Metrics::default());
        let id = metrics.define(Some(&envoy), "fhirgate.t2.queue_depth", true);
        assert_eq!(envoy.0.borrow().len(), 1);
        assert!(id
            .and_then(|id| metrics.target(id))
            .is_some_and(|t| t.gauge));
        assert_eq!(
            metrics.define(None, "fhirgate.t2.queue_depth.x", false),
            None
        );
    }

    #[test]
    fn configurations_resolve_one_id_to_their_own_metrics() {
        let (first, second) = (Envoy::default(), Envoy::default());
        let (a, b) = (Metrics::default(), Metrics::default());
        second.define("padding", false, None);
        let in_a = a.define(Some(&first), "fhirgate.t3.events", false);
        let in_b = b.define(Some(&second), "fhirgate.t3.events", false);
        assert_eq!(in_a, in_b);
        let id = in_a.unwrap_or_default();
        assert_eq!(a.target(id).map(|t| t.envoy_id), Some(0));
        assert_eq!(b.target(id).map(|t| t.envoy_id), Some(1));
    }

    #[test]
    fn a_detail_first_seen_at_request_time_counts_in_its_family() {
        let metrics = Metrics::default();
        metrics
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert("fhirgate.test.denied".to_string(), 7);
        let id = metrics.define(None, "fhirgate.test.denied.token-expired", false);
        let target = id.and_then(|id| metrics.target(id));
        assert_eq!(target.as_ref().map(|t| t.envoy_id), Some(7));
        assert_eq!(
            target.and_then(|t| t.label_value).as_deref(),
            Some("token-expired")
        );
    }
}
