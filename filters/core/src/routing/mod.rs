//! FHIR routing: turns an HTTP request into FHIR terms (interaction, resource type, id,
//! operation, compartment, patient, pool) or refuses it with an OperationOutcome.
//!
//! Two steps, matching what a proxy sees: [`RoutingPolicy::route`] decides on the request
//! head; when the request has a body, the filter buffers it and [`RoutingPolicy::route_body`]
//! finishes the decision. Only then are the internal headers ([`RoutedRequest::headers`]) set.

mod body;
mod config;
mod patient;
mod uri;

pub use body::BodyRule;
pub use config::{PassthroughConfig, PoolConfig, RoutingConfig};
pub use uri::{decode, parse_query, Param, QueryError, UriError};

use crate::fhir;
use crate::headers;
use crate::outcome::IssueType;
use crate::Rejection;
use serde_json::{json, Value};

/// The HTTP methods FHIR R4's RESTful API uses.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// What fhirgate reads from a request head. Header values are as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Envoy's `:path`: path and query, as on the wire.
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    /// False when the request ended with its headers.
    pub has_body: bool,
    /// `If-None-Exist` is present: a POST to a type is a conditional create.
    pub if_none_exist: bool,
    /// Any `X-HTTP-Method-Override`-style header is present.
    pub method_override: bool,
}

/// The FHIR interaction a request performs, plus the non-FHIR kinds the gateway recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Read,
    Vread,
    Update,
    ConditionalUpdate,
    Patch,
    ConditionalPatch,
    Delete,
    ConditionalDelete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Create,
    ConditionalCreate,
    SearchType,
    SearchSystem,
    SearchCompartment,
    Capabilities,
    Batch,
    Transaction,
    OperationSystem,
    OperationType,
    OperationInstance,
    SmartConfiguration,
    CdsDiscovery,
    CdsService,
    CdsFeedback,
    Passthrough,
}

impl Interaction {
    pub const ALL: &'static [Interaction] = &[
        Interaction::Read,
        Interaction::Vread,
        Interaction::Update,
        Interaction::ConditionalUpdate,
        Interaction::Patch,
        Interaction::ConditionalPatch,
        Interaction::Delete,
        Interaction::ConditionalDelete,
        Interaction::HistoryInstance,
        Interaction::HistoryType,
        Interaction::HistorySystem,
        Interaction::Create,
        Interaction::ConditionalCreate,
        Interaction::SearchType,
        Interaction::SearchSystem,
        Interaction::SearchCompartment,
        Interaction::Capabilities,
        Interaction::Batch,
        Interaction::Transaction,
        Interaction::OperationSystem,
        Interaction::OperationType,
        Interaction::OperationInstance,
        Interaction::SmartConfiguration,
        Interaction::CdsDiscovery,
        Interaction::CdsService,
        Interaction::CdsFeedback,
        Interaction::Passthrough,
    ];

    /// The value of `x-fhirgate-interaction`; FHIR's own codes where FHIR has one.
    pub fn name(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::ConditionalUpdate => "conditional-update",
            Interaction::Patch => "patch",
            Interaction::ConditionalPatch => "conditional-patch",
            Interaction::Delete => "delete",
            Interaction::ConditionalDelete => "conditional-delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::ConditionalCreate => "conditional-create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::SearchCompartment => "search-compartment",
            Interaction::Capabilities => "capabilities",
            Interaction::Batch => "batch",
            Interaction::Transaction => "transaction",
            Interaction::OperationSystem => "operation-system",
            Interaction::OperationType => "operation-type",
            Interaction::OperationInstance => "operation-instance",
            Interaction::SmartConfiguration => "smart-configuration",
            Interaction::CdsDiscovery => "cds-discovery",
            Interaction::CdsService => "cds-service",
            Interaction::CdsFeedback => "cds-feedback",
            Interaction::Passthrough => "passthrough",
        }
    }

    /// The interaction a `x-fhirgate-interaction` value names ([`Self::name`]'s inverse; a
    /// match, not a scan: three filters ask it on every request).
    pub fn from_name(name: &str) -> Option<Interaction> {
        Some(match name {
            "read" => Interaction::Read,
            "vread" => Interaction::Vread,
            "update" => Interaction::Update,
            "conditional-update" => Interaction::ConditionalUpdate,
            "patch" => Interaction::Patch,
            "conditional-patch" => Interaction::ConditionalPatch,
            "delete" => Interaction::Delete,
            "conditional-delete" => Interaction::ConditionalDelete,
            "history-instance" => Interaction::HistoryInstance,
            "history-type" => Interaction::HistoryType,
            "history-system" => Interaction::HistorySystem,
            "create" => Interaction::Create,
            "conditional-create" => Interaction::ConditionalCreate,
            "search-type" => Interaction::SearchType,
            "search-system" => Interaction::SearchSystem,
            "search-compartment" => Interaction::SearchCompartment,
            "capabilities" => Interaction::Capabilities,
            "batch" => Interaction::Batch,
            "transaction" => Interaction::Transaction,
            "operation-system" => Interaction::OperationSystem,
            "operation-type" => Interaction::OperationType,
            "operation-instance" => Interaction::OperationInstance,
            "smart-configuration" => Interaction::SmartConfiguration,
            "cds-discovery" => Interaction::CdsDiscovery,
            "cds-service" => Interaction::CdsService,
            "cds-feedback" => Interaction::CdsFeedback,
            "passthrough" => Interaction::Passthrough,
            _ => return None,
        })
    }

    /// False for the non-FHIR kinds (CDS Hooks, passthrough), which have no patient or pool rule.
    pub fn is_fhir(self) -> bool {
        !matches!(
            self,
            Interaction::CdsDiscovery
                | Interaction::CdsService
                | Interaction::CdsFeedback
                | Interaction::Passthrough
        )
    }

    pub fn is_search(self) -> bool {
        matches!(
            self,
            Interaction::SearchType | Interaction::SearchSystem | Interaction::SearchCompartment
        )
    }
}

/// The compiled routing policy: built once in `on_configure`, read on every request.
#[derive(Debug, Clone)]
pub struct RoutingPolicy {
    pub(crate) base_path: String,
    pub(crate) allowed_types: Option<Vec<&'static str>>,
    pub(crate) max_path_bytes: usize,
    pub(crate) max_query_bytes: usize,
    pub(crate) max_query_params: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) cds_hooks_path: Option<String>,
    pub(crate) passthrough: Vec<Passthrough>,
    pub(crate) pools: Vec<PoolRule>,
    pub(crate) default_pool: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Passthrough {
    pub prefix: String,
    pub pool: String,
    pub methods: Vec<&'static str>,
}

#[derive(Debug, Clone)]
pub(crate) struct PoolRule {
    pub name: String,
    pub operations: Vec<String>,
    pub resource_types: Vec<&'static str>,
    pub interactions: Vec<Interaction>,
}

impl PoolRule {
    fn matches(&self, r: &RoutedRequest) -> bool {
        (self.operations.is_empty()
            || r.operation
                .as_ref()
                .is_some_and(|op| self.operations.contains(op)))
            && (self.resource_types.is_empty()
                || r.resource_type
                    .is_some_and(|t| self.resource_types.contains(&t)))
            && (self.interactions.is_empty() || self.interactions.contains(&r.interaction))
    }
}

/// A request in FHIR terms. Built by [`RoutingPolicy::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedRequest {
    pub interaction: Interaction,
    /// The type acted on; for a compartment search, the type searched (None for `*`).
    pub resource_type: Option<&'static str>,
    pub id: Option<String>,
    pub version_id: Option<String>,
    /// Operation name with its `$`, e.g. `$export`.
    pub operation: Option<String>,
    /// For compartment searches: the compartment type and id (`Patient`, `123`).
    pub compartment: Option<(&'static str, String)>,
    /// The single patient the request names, if it names exactly one.
    pub patient: Option<String>,
    pub pool: String,
    /// Decoded search parameters, from the query and (for POST `_search`) the form body.
    pub params: Vec<Param>,
    /// Set from the body of a batch or transaction.
    pub bundle_type: Option<&'static str>,
    /// How many entries that Bundle carries.
    pub bundle_entries: Option<usize>,
    pub body: BodyRule,
    /// The request has a body the filter must buffer and pass to [`RoutingPolicy::route_body`].
    pub awaiting_body: bool,
    /// The request carries a body (whether or not it has been read yet).
    pub has_body: bool,
}

impl RoutedRequest {
    fn new(interaction: Interaction) -> Self {
        RoutedRequest {
            interaction,
            resource_type: None,
            id: None,
            version_id: None,
            operation: None,
            compartment: None,
            patient: None,
            pool: String::new(),
            params: Vec::new(),
            bundle_type: None,
            bundle_entries: None,
            body: BodyRule::None,
            awaiting_body: false,
            has_body: false,
        }
    }

    /// What the routing stage tells the stages after it (see [`crate::pipeline::Facts`]).
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::with_capacity(8);
        h.push((headers::INTERACTION, self.interaction.name().to_string()));
        h.push((headers::POOL, self.pool.clone()));
        if let Some(t) = self.resource_type {
            h.push((headers::RESOURCE_TYPE, t.to_string()));
        }
        if let Some(id) = &self.id {
            h.push((headers::ID, id.clone()));
        }
        if let Some(v) = &self.version_id {
            h.push((headers::VERSION_ID, v.clone()));
        }
        if let Some(op) = &self.operation {
            h.push((headers::OPERATION, op.clone()));
        }
        if let Some((t, id)) = &self.compartment {
            h.push((headers::COMPARTMENT, format!("{t}/{id}")));
        }
        if let Some(p) = &self.patient {
            h.push((headers::PATIENT, p.clone()));
        }
        if let Some(b) = self.bundle_type {
            h.push((headers::BUNDLE_TYPE, b.to_string()));
        }
        if let Some(n) = self.bundle_entries {
            h.push((headers::BUNDLE_ENTRIES, n.to_string()));
        }
        h
    }

    /// The request as JSON, for the CLI and tests.
    pub fn to_json(&self) -> Value {
        json!({
            "interaction": self.interaction.name(),
            "resourceType": self.resource_type,
            "id": self.id,
            "versionId": self.version_id,
            "operation": self.operation,
            "compartment": self.compartment.as_ref().map(|(t, id)| format!("{t}/{id}")),
            "patient": self.patient,
            "pool": self.pool,
            "bundleType": self.bundle_type,
            "params": self.params.iter().map(|p| json!([p.name, p.value])).collect::<Vec<_>>(),
            "facts": self.facts().into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// `_count` the way FHIR servers read it: decimal digits only, at most nine. `1_000`,
/// full-width digits, a leading space (`%201000`) or twenty digits would be weighed as one
/// page by the rate limits while a lenient server reads a thousand: refused instead.
pub(crate) fn check_counts(params: &[Param]) -> Result<(), Rejection> {
    for p in params.iter().filter(|p| p.name == "_count") {
        if p.value.is_empty() || p.value.len() > 9 || !p.value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse::invalid_query(
                "_count must be a whole number of at most nine digits",
            ));
        }
    }
    Ok(())
}

/// Refusal helpers: one place for every status, reason code and issue type.
pub(crate) mod refuse {
    use super::*;

    pub fn not_fhir() -> Rejection {
        Rejection::new(
            404,
            "not-fhir-endpoint",
            IssueType::NotFound,
            "this path is not a FHIR endpoint of this gateway",
        )
    }
    // Refusals never echo what the client sent (a path segment or method may carry PHI, and
    // error bodies get logged by clients and intermediaries): they name the part, not its value.
    pub fn unknown_type() -> Rejection {
        Rejection::new(
            404,
            "unknown-resource-type",
            IssueType::NotSupported,
            "the path does not name a FHIR R4 resource type (names are case-sensitive)",
        )
    }
    pub fn type_not_allowed(name: &str) -> Rejection {
        Rejection::new(
            404,
            "resource-type-not-allowed",
            IssueType::NotSupported,
            format!("resource type `{name}` is not served by this gateway"),
        )
    }
    pub fn invalid_id() -> Rejection {
        Rejection::new(
            400,
            "invalid-id",
            IssueType::Invalid,
            "resource id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
        )
    }
    pub fn invalid_version_id() -> Rejection {
        Rejection::new(
            400,
            "invalid-version-id",
            IssueType::Invalid,
            "version id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
        )
    }
    pub fn invalid_operation() -> Rejection {
        Rejection::new(
            400,
            "invalid-operation-name",
            IssueType::Invalid,
            "operation name must be `$` followed by letters, digits, '-' or '_'",
        )
    }
    pub fn invalid_path(why: &str) -> Rejection {
        Rejection::new(
            400,
            "invalid-path",
            IssueType::Invalid,
            format!("malformed request path: {why}"),
        )
    }
    pub fn bad_escape(where_: &str) -> Rejection {
        Rejection::new(
            400,
            "bad-percent-encoding",
            IssueType::Invalid,
            format!("malformed percent-encoding in the {where_}"),
        )
    }
    pub fn invalid_query(why: &str) -> Rejection {
        Rejection::new(
            400,
            "invalid-query",
            IssueType::Invalid,
            format!("malformed query: {why}"),
        )
    }
    pub fn path_too_long(max: usize) -> Rejection {
        Rejection::new(
            414,
            "path-too-long",
            IssueType::TooLong,
            format!("request path exceeds {max} bytes"),
        )
    }
    pub fn query_too_long(max: usize) -> Rejection {
        Rejection::new(
            414,
            "query-too-long",
            IssueType::TooLong,
            format!("query string exceeds {max} bytes"),
        )
    }
    pub fn too_many_params(max: usize) -> Rejection {
        Rejection::new(
            414,
            "too-many-query-params",
            IssueType::TooLong,
            format!("more than {max} query parameters"),
        )
    }
    pub fn method_not_allowed(allow: &[&str]) -> Rejection {
        Rejection::new(
            405,
            "method-not-allowed",
            IssueType::NotSupported,
            format!(
                "this method is not allowed here; allowed: {}",
                allow.join(", ")
            ),
        )
        .with_header("allow", allow.join(", "))
    }
    pub fn method_override() -> Rejection {
        Rejection::new(
            400,
            "method-override-refused",
            IssueType::Security,
            "method override headers are not accepted; send the real HTTP method",
        )
    }
    pub fn criteria_required(what: &str) -> Rejection {
        Rejection::new(
            400,
            "conditional-criteria-required",
            IssueType::Required,
            format!("conditional {what} needs search parameters"),
        )
    }
    pub fn bad_content_length() -> Rejection {
        Rejection::new(
            400,
            "invalid-content-length",
            IssueType::Invalid,
            "content-length is not a number",
        )
    }
    pub fn body_too_large(max: usize) -> Rejection {
        Rejection::new(
            413,
            "body-too-large",
            IssueType::TooLong,
            format!("request body exceeds {max} bytes"),
        )
    }
}

impl RoutingPolicy {
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Refuses a body, or the part of it buffered so far, once it exceeds the limit.
    pub fn check_body_size(&self, size: usize) -> Result<(), Rejection> {
        if size > self.max_body_bytes {
            Err(refuse::body_too_large(self.max_body_bytes))
        } else {
            Ok(())
        }
    }

    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Decides on the request head. On `Ok`, if `awaiting_body` is set the caller must buffer
    /// the body (at most [`Self::max_body_bytes`]) and call [`Self::route_body`].
    pub fn route(&self, head: &RequestHead) -> Result<RoutedRequest, Rejection> {
        if head.method_override {
            return Err(refuse::method_override());
        }
        let (path, query) = match head.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (head.path, None),
        };
        if path.len() > self.max_path_bytes {
            return Err(refuse::path_too_long(self.max_path_bytes));
        }
        if let Some(q) = query {
            if q.len() > self.max_query_bytes {
                return Err(refuse::query_too_long(self.max_query_bytes));
            }
        }
        if path.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(refuse::invalid_path("fragment in request target"));
        }
        let body_len = match head.content_length {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| refuse::bad_content_length())?,
            ),
        };
        if body_len.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(refuse::body_too_large(self.max_body_bytes));
        }
        let has_body = head.has_body && body_len != Some(0);

        // Passthrough prefixes first: they may sit under the FHIR base (bulk status URLs).
        if let Some(p) = self
            .passthrough
            .iter()
            .find(|p| path.starts_with(&p.prefix))
        {
            if !p.methods.contains(&head.method) {
                return Err(refuse::method_not_allowed(&p.methods));
            }
            split_segments(path)?; // not FHIR, but the same path hygiene
            let mut r = RoutedRequest::new(Interaction::Passthrough);
            r.pool = p.pool.clone();
            r.body = BodyRule::Opaque;
            r.awaiting_body = has_body;
            r.has_body = has_body;
            return Ok(r);
        }
        let mut routed = if let Some(rest) = under(path, &self.base_path) {
            self.route_fhir(head, rest, query)?
        } else if let Some(rest) = self
            .cds_hooks_path
            .as_deref()
            .and_then(|cds| under(path, cds))
        {
            route_cds(head.method, rest)?
        } else {
            return Err(refuse::not_fhir());
        };

        routed.body = body::rule_for(&routed, head.content_type)?;
        body::check_presence(&routed, has_body)?;
        routed.awaiting_body = has_body;
        routed.has_body = has_body;
        if !has_body {
            self.finish(&mut routed);
        }
        Ok(routed)
    }

    /// Finishes a request whose head [`Self::route`] accepted, given its whole body.
    pub fn route_body(&self, routed: &mut RoutedRequest, body: &[u8]) -> Result<(), Rejection> {
        self.check_body_size(body.len())?;
        body::check(routed, body, self.max_query_params)?;
        routed.awaiting_body = false;
        self.finish(routed);
        Ok(())
    }

    /// The pool a `$`operation is routed to, when a pool names it (`$export` → `bulk`).
    pub fn pool_of_operation(&self, op: &str) -> Option<&str> {
        self.pools
            .iter()
            .find(|p| p.operations.iter().any(|o| o == op))
            .map(|p| p.name.as_str())
    }

    fn finish(&self, r: &mut RoutedRequest) {
        if r.interaction.is_fhir() {
            r.patient = patient::named_patient(r);
            r.pool = self
                .pools
                .iter()
                .find(|rule| rule.matches(r))
                .map_or_else(|| self.default_pool.clone(), |rule| rule.name.clone());
        }
    }

    fn check_type(&self, segment: &str) -> Result<&'static str, Rejection> {
        let t = fhir::resource_type(segment).ok_or_else(refuse::unknown_type)?;
        match &self.allowed_types {
            Some(allowed) if allowed.binary_search(&t).is_err() => Err(refuse::type_not_allowed(t)),
            _ => Ok(t),
        }
    }

    fn route_fhir(
        &self,
        head: &RequestHead,
        rest: &str,
        query: Option<&str>,
    ) -> Result<RoutedRequest, Rejection> {
        let segments = split_segments(rest)?;
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = head.method;
        use Interaction as I;

        // Each arm: the methods the path shape allows, and the interaction for each.
        let (allowed, mut routed): (&[&str], Option<RoutedRequest>) = match seg.as_slice() {
            [] => (
                &["GET", "POST"],
                match method {
                    "GET" => Some(RoutedRequest::new(I::SearchSystem)),
                    "POST" => Some(RoutedRequest::new(I::Batch)),
                    _ => None,
                },
            ),
            ["metadata"] => (
                &["GET"],
                (method == "GET").then(|| RoutedRequest::new(I::Capabilities)),
            ),
            [".well-known", "smart-configuration"] => (
                &["GET"],
                (method == "GET").then(|| RoutedRequest::new(I::SmartConfiguration)),
            ),
            ["_search"] => (
                &["GET", "POST"],
                matches!(method, "GET" | "POST").then(|| RoutedRequest::new(I::SearchSystem)),
            ),
            ["_history"] => (
                &["GET"],
                (method == "GET").then(|| RoutedRequest::new(I::HistorySystem)),
            ),
            [op] if op.starts_with('$') => {
                let op = operation(op)?;
                (
                    &["GET", "POST"],
                    matches!(method, "GET" | "POST").then(|| {
                        let mut r = RoutedRequest::new(I::OperationSystem);
                        r.operation = Some(op);
                        r
                    }),
                )
            }
            [t] => {
                let t = self.check_type(t)?;
                let interaction = match method {
                    "GET" => Some(I::SearchType),
                    "POST" if head.if_none_exist => Some(I::ConditionalCreate),
                    "POST" => Some(I::Create),
                    "PUT" => Some(I::ConditionalUpdate),
                    "PATCH" => Some(I::ConditionalPatch),
                    "DELETE" => Some(I::ConditionalDelete),
                    _ => None,
                };
                (
                    &["GET", "POST", "PUT", "PATCH", "DELETE"],
                    interaction.map(|i| typed(i, t)),
                )
            }
            [t, "_search"] => {
                let t = self.check_type(t)?;
                (
                    &["GET", "POST"],
                    matches!(method, "GET" | "POST").then(|| typed(I::SearchType, t)),
                )
            }
            [t, "_history"] => {
                let t = self.check_type(t)?;
                (
                    &["GET"],
                    (method == "GET").then(|| typed(I::HistoryType, t)),
                )
            }
            [t, op] if op.starts_with('$') => {
                let t = self.check_type(t)?;
                let op = operation(op)?;
                (
                    &["GET", "POST"],
                    matches!(method, "GET" | "POST").then(|| {
                        let mut r = typed(I::OperationType, t);
                        r.operation = Some(op);
                        r
                    }),
                )
            }
            [t, id] => {
                let t = self.check_type(t)?;
                let id = valid_id(id)?;
                let interaction = match method {
                    "GET" => Some(I::Read),
                    "PUT" => Some(I::Update),
                    "PATCH" => Some(I::Patch),
                    "DELETE" => Some(I::Delete),
                    _ => None,
                };
                (
                    &["GET", "PUT", "PATCH", "DELETE"],
                    interaction.map(|i| instance(i, t, id)),
                )
            }
            [t, id, "_history"] => {
                let t = self.check_type(t)?;
                let id = valid_id(id)?;
                (
                    &["GET"],
                    (method == "GET").then(|| instance(I::HistoryInstance, t, id)),
                )
            }
            [t, id, "_history", vid] => {
                let t = self.check_type(t)?;
                let id = valid_id(id)?;
                if !fhir::is_valid_id(vid) {
                    return Err(refuse::invalid_version_id());
                }
                (
                    &["GET"],
                    (method == "GET").then(|| {
                        let mut r = instance(I::Vread, t, id);
                        r.version_id = Some((*vid).to_string());
                        r
                    }),
                )
            }
            [t, id, op] if op.starts_with('$') => {
                let t = self.check_type(t)?;
                let id = valid_id(id)?;
                let op = operation(op)?;
                (
                    &["GET", "POST"],
                    matches!(method, "GET" | "POST").then(|| {
                        let mut r = instance(I::OperationInstance, t, id);
                        r.operation = Some(op);
                        r
                    }),
                )
            }
            [t, id, target] => {
                let t = self.check_type(t)?;
                if !fhir::is_compartment_type(t) {
                    return Err(refuse::invalid_path(&format!(
                        "`{t}` does not define a compartment"
                    )));
                }
                let id = valid_id(id)?;
                let target = if *target == "*" {
                    None
                } else {
                    Some(self.check_type(target)?)
                };
                (
                    &["GET"],
                    (method == "GET").then(|| {
                        let mut r = RoutedRequest::new(I::SearchCompartment);
                        r.resource_type = target;
                        r.compartment = Some((t, id));
                        r
                    }),
                )
            }
            [first, ..] => {
                self.check_type(first)?;
                return Err(refuse::invalid_path("unrecognised FHIR path shape"));
            }
        };
        let Some(mut r) = routed.take() else {
            return Err(refuse::method_not_allowed(allowed));
        };
        if let Some(q) = query {
            r.params = parse_query(q, self.max_query_params).map_err(|e| match e {
                QueryError::Uri(_) => refuse::bad_escape("query"),
                QueryError::BadName => refuse::invalid_query("invalid parameter name"),
                QueryError::TooMany => refuse::too_many_params(self.max_query_params),
            })?;
            check_counts(&r.params)?;
        }
        let conditional = match r.interaction {
            I::ConditionalUpdate => Some("update"),
            I::ConditionalPatch => Some("patch"),
            I::ConditionalDelete => Some("delete"),
            _ => None,
        };
        if let Some(what) = conditional {
            if r.params.is_empty() {
                return Err(refuse::criteria_required(what));
            }
        }
        Ok(r)
    }
}

fn typed(interaction: Interaction, t: &'static str) -> RoutedRequest {
    let mut r = RoutedRequest::new(interaction);
    r.resource_type = Some(t);
    r
}

fn instance(interaction: Interaction, t: &'static str, id: String) -> RoutedRequest {
    let mut r = typed(interaction, t);
    r.id = Some(id);
    r
}

fn valid_id(id: &str) -> Result<String, Rejection> {
    if fhir::is_valid_id(id) {
        Ok(id.to_string())
    } else {
        Err(refuse::invalid_id())
    }
}

fn operation(segment: &str) -> Result<String, Rejection> {
    if fhir::is_valid_operation(segment) {
        Ok(segment.to_string())
    } else {
        Err(refuse::invalid_operation())
    }
}

/// The part of `path` after `prefix` when `path` is `prefix` itself or below it.
fn under<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Splits `/a/b/c` into decoded segments. One trailing slash is tolerated; empty segments,
/// dot segments, encoded slashes and malformed escapes are refused.
fn split_segments(rest: &str) -> Result<Vec<String>, Rejection> {
    let trimmed = rest.strip_prefix('/').unwrap_or(rest);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(4);
    for raw in trimmed.split('/') {
        if raw.is_empty() {
            return Err(refuse::invalid_path("empty path segment"));
        }
        let seg = decode(raw, false).map_err(|_| refuse::bad_escape("path"))?;
        // `.`, `..`, and what servers read as them: `..;x` (Tomcat and other Java servers
        // drop path parameters), `...`. FHIR paths never carry matrix parameters.
        if seg.bytes().all(|b| b == b'.') {
            return Err(refuse::invalid_path("dot segment"));
        }
        if seg.contains(';') {
            return Err(refuse::invalid_path("matrix parameter in a path segment"));
        }
        if seg.contains(['/', '\\']) {
            return Err(refuse::invalid_path("encoded slash in a segment"));
        }
        out.push(seg);
    }
    Ok(out)
}

/// CDS Hooks 2.0: `GET /cds-services` (discovery), `POST /cds-services/{id}`,
/// `POST /cds-services/{id}/feedback`.
fn route_cds(method: &str, rest: &str) -> Result<RoutedRequest, Rejection> {
    let segments = split_segments(rest)?;
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (allowed, interaction): (&[&str], Interaction) = match seg.as_slice() {
        [] => (&["GET"], Interaction::CdsDiscovery),
        [id] => {
            valid_id(id)?;
            (&["POST"], Interaction::CdsService)
        }
        [id, "feedback"] => {
            valid_id(id)?;
            (&["POST"], Interaction::CdsFeedback)
        }
        _ => return Err(refuse::invalid_path("unrecognised CDS Hooks path")),
    };
    if !allowed.contains(&method) {
        return Err(refuse::method_not_allowed(allowed));
    }
    let mut r = RoutedRequest::new(interaction);
    r.pool = "cds-hooks".to_string();
    if let [id, ..] = seg.as_slice() {
        r.id = Some((*id).to_string());
    }
    Ok(r)
}

#[cfg(test)]
mod tests;
