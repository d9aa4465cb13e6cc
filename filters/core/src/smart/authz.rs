//! The SMART authorization decision: does a token's grant allow a routed FHIR request?
//!
//! Pure decisions over the routing result, no I/O. Union semantics: a request is allowed
//! when any one resource scope allows it. The order of preference:
//! 1. an unconstrained `user/` or `system/` scope for the type and permission allows it;
//! 2. else an unconstrained `patient/` scope allows it confined to the launch patient:
//!    searches are narrowed to the patient (or refused, by config), paths naming another
//!    patient are refused, instance reads and writes of other compartment types wait for the
//!    response or request body to prove the resource is the patient's;
//! 3. else a granular scope (`?category=…`) allows a search narrowed to its constraints;
//! 4. else the request is refused with 403.
//!
//! Decisions made here, documented in docs/authorization.md:
//! - `patient/` scopes are unusable without a launch patient in the token.
//! - `user/` scopes beside a patient context are not confined to that patient (the user's
//!   own access rights are the FHIR server's to enforce); SMART v1 and v2 scopes mix freely.
//! - `patient/` scopes for types outside the Patient compartment (Medication, Practitioner)
//!   allow those types: they hold no patient's data.
//! - History and system-wide searches cannot be confined to a patient: refused under
//!   `patient/` scopes.
//! - `_include`, `_revinclude`, `_has` and chains reach the types their reference parameters
//!   point to (R4 SearchParameter targets): each reached type needs a scope (read for what is
//!   returned, search for what filters). Under `patient/` scopes only forward `_include`s are
//!   allowed, to types outside the patient compartment (never `Group`, whose members are other
//!   patients) or to `Patient` through the parameter that names the patient. `:iterate` and
//!   `_contained` cannot be bounded: they need an unconstrained `user/*.rs` or `system/*.rs`.

use super::scope::{Context, Permissions, ResourceScope};
use crate::fhir;
use crate::outcome::IssueType;
use crate::routing::{Interaction, RoutedRequest};
use crate::Rejection;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::Value;

/// Turns a Bundle entry's method, url and resource into a routed request and its raw query.
pub type EntryRouter<'a> =
    dyn Fn(&str, &str, Option<&Value>) -> Result<(RoutedRequest, String), Rejection> + 'a;

/// What a verified token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Vec<ResourceScope>,
    /// The launch patient (`patient` claim, or as configured).
    pub patient: Option<String>,
}

impl Grant {
    /// The resource scopes and launch patient of a verified token.
    /// A patient claim that is not a FHIR id (`""`, `"123,456"`, `"Patient/1"`) is never
    /// used: `patient/` scopes then have no patient and are refused.
    pub fn of(token: &super::token::VerifiedToken) -> Grant {
        Grant {
            scopes: super::scope::resource_scopes(&token.scopes),
            patient: valid_patient(token.patient.as_deref()),
        }
    }
}

/// The launch patient when it is a FHIR id, else None.
pub fn valid_patient(claim: Option<&str>) -> Option<String> {
    claim.filter(|p| fhir::is_valid_id(p)).map(str::to_string)
}

/// The refusal of a bulk job URL this client may not use.
pub fn deny_bulk_job() -> Rejection {
    deny::bulk_job()
}

/// The refusal when the resource a write changes cannot be read (for hosts).
pub fn current_unavailable() -> Rejection {
    deny::current_unavailable()
}

/// What the filter still needs before it can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    RequestBody,
    ResponseBody,
    /// The resource as it is now on the FHIR server (GET `[type]/[id]`), for a write under
    /// `patient/` scopes: see [`AuthzPolicy::decide_current`].
    CurrentResource,
}

impl Needs {
    pub fn name(self) -> &'static str {
        match self {
            Needs::RequestBody => "request-body",
            Needs::ResponseBody => "response-body",
            Needs::CurrentResource => "current-resource",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzDecision {
    /// Allowed; `query` is the rewritten raw query when the request was narrowed.
    Allow {
        reason: &'static str,
        query: Option<String>,
    },
    /// Allowed under `patient/` scopes: forward (with `query` when narrowed) and release the
    /// response only when [`AuthzPolicy::verify_confined`] proves it the patient's.
    Confined {
        query: Option<String>,
    },
    Pending {
        needs: Needs,
    },
    Deny(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientSearch {
    /// Add the patient constraint to a search that lacks it.
    Narrow,
    /// Refuse a search that does not name the patient itself.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceCheck {
    /// Decide on the response (reads) or request body (writes).
    Body,
    /// Refuse instance access to compartment types other than Patient under `patient/` scopes.
    Deny,
}

/// The compiled authorization policy (the part that is not token verification).
#[derive(Debug, Clone)]
pub struct AuthzPolicy {
    pub patient_search: PatientSearch,
    pub instance_check: InstanceCheck,
    pub public: Vec<Interaction>,
    /// Operations a token may call, with the permissions they need on the request's type
    /// (on every type when `all_types`). Any other operation is refused.
    pub operations: Vec<OperationRule>,
    /// The current resource can be fetched (`currentResource`): updates, patches and deletes
    /// under `patient/` scopes are decided on it. Without it they are refused.
    pub read_before_write: bool,
}

#[derive(Debug, Clone)]
pub struct OperationRule {
    pub name: String,
    pub permissions: Permissions,
    pub all_types: bool,
}

impl Default for AuthzPolicy {
    fn default() -> Self {
        let rs = Permissions::R.union(Permissions::S);
        let op = |name: &str, permissions, all_types| OperationRule {
            name: name.into(),
            permissions,
            all_types,
        };
        AuthzPolicy {
            patient_search: PatientSearch::Narrow,
            instance_check: InstanceCheck::Body,
            public: vec![Interaction::Capabilities, Interaction::SmartConfiguration],
            operations: vec![
                op("$everything", rs, true),
                op("$lastn", Permissions::S, false),
                op("$validate", Permissions::C, false),
            ],
            read_before_write: true,
        }
    }
}

pub(crate) mod deny {
    use super::*;

    pub fn missing_token() -> Rejection {
        Rejection::new(
            401,
            "missing-token",
            IssueType::Login,
            "a bearer token is required",
        )
        .with_header("www-authenticate", r#"Bearer realm="fhir""#)
    }
    pub fn forbidden(reason: &'static str, why: &str) -> Rejection {
        Rejection::new(403, reason, IssueType::Forbidden, why).with_header(
            "www-authenticate",
            r#"Bearer realm="fhir", error="insufficient_scope""#,
        )
    }
    pub fn insufficient_scope() -> Rejection {
        forbidden(
            "insufficient-scope",
            "the token's scopes do not allow this request",
        )
    }
    pub fn patient_mismatch() -> Rejection {
        forbidden(
            "patient-mismatch",
            "the request names a patient other than the token's",
        )
    }
    pub fn patient_context_missing() -> Rejection {
        forbidden(
            "patient-context-missing",
            "patient/ scopes need a launch patient in the token",
        )
    }
    pub fn not_confinable() -> Rejection {
        forbidden(
            "not-confinable",
            "this request cannot be confined to the token's patient",
        )
    }
    pub fn query_shape() -> Rejection {
        forbidden("query-shape-not-permitted", "an include, reverse include, chain or _has reaches types the token's scopes do not allow")
    }
    pub fn operation_not_confinable() -> Rejection {
        forbidden(
            "operation-not-confinable",
            "this operation cannot be confined to the token's patient",
        )
    }
    pub fn operation() -> Rejection {
        forbidden(
            "operation-not-permitted",
            "this operation is not permitted through the gateway",
        )
    }
    pub fn bulk_body() -> Rejection {
        forbidden(
            "bulk-parameters-invalid",
            "the $export Parameters body could not be read",
        )
    }
    pub fn bulk_job() -> Rejection {
        forbidden(
            "bulk-job-forbidden",
            "this bulk export job was not started by this client, or its scopes no longer cover it",
        )
    }
    pub fn bulk() -> Rejection {
        forbidden(
            "bulk-requires-system-scope",
            "bulk export needs unconstrained system/ read and search scopes on every exported type",
        )
    }
    pub fn granular() -> Rejection {
        forbidden(
            "granular-not-narrowable",
            "the request cannot be narrowed to the token's granular scopes",
        )
    }
    pub fn not_patients() -> Rejection {
        forbidden(
            "not-in-patient-compartment",
            "the resource does not belong to the token's patient",
        )
    }
    pub fn current_unavailable() -> Rejection {
        Rejection::new(
            503,
            "current-resource-unavailable",
            IssueType::Transient,
            "the resource could not be read to check the write against the token's patient",
        )
        .with_header("retry-after", "2")
    }
    pub fn patch_refused() -> Rejection {
        forbidden(
            "patch-not-applicable",
            "the patch cannot be applied to a resource the token may change",
        )
    }
    pub fn unverifiable() -> Rejection {
        Rejection::new(
            502,
            "unverifiable-response",
            IssueType::Exception,
            "the upstream response could not be checked against the token's patient",
        )
    }
}

/// The permissions an interaction needs, per SMART App Launch 2.x: create c; read, vread,
/// instance history r; update, patch u; delete d; search and type/system history s.
/// Conditional interactions also search; a conditional update may create.
pub fn required_permissions(interaction: Interaction) -> Option<Permissions> {
    use Interaction as I;
    use Permissions as P;
    Some(match interaction {
        I::Read | I::Vread | I::HistoryInstance => P::R,
        I::Update | I::Patch => P::U,
        I::Delete => P::D,
        I::Create => P::C,
        I::ConditionalCreate => P::C.union(P::S),
        I::ConditionalUpdate => P::C.union(P::U).union(P::S),
        I::ConditionalPatch => P::U.union(P::S),
        I::ConditionalDelete => P::D.union(P::S),
        I::SearchType
        | I::SearchSystem
        | I::SearchCompartment
        | I::HistoryType
        | I::HistorySystem => P::S,
        _ => return None,
    })
}

/// Query parameters that can reach resource types the scopes do not name.
fn reaches_other_types(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    matches!(
        base,
        "_include" | "_revinclude" | "_has" | "_contained" | "_containedType"
    ) || name.contains('.')
}

const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'#')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b'%')
    .add(b'"')
    .add(b'<')
    .add(b'>');

fn append_param(raw_query: &str, name: &str, value: &str) -> String {
    let pair = format!("{name}={}", utf8_percent_encode(value, QUERY_VALUE));
    if raw_query.is_empty() {
        pair
    } else {
        format!("{raw_query}&{pair}")
    }
}

/// What one value of a reference search parameter names, as far as patients go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SearchRef<'a> {
    /// `Patient/123`, or `123` where the parameter can only mean a Patient.
    Patient(&'a str),
    /// `Practitioner/9`: a resource of another type on this server, never a patient.
    OtherType,
    /// Anything else: a bare id that could be a patient, an absolute URL, a Group, garbage.
    Unknown,
}

fn search_value_patient(value: &str, only_patients: bool) -> SearchRef<'_> {
    match value.split_once('/') {
        None if fhir::is_valid_id(value) && only_patients => SearchRef::Patient(value),
        None => SearchRef::Unknown,
        Some(("Patient", id)) if fhir::is_valid_id(id) => SearchRef::Patient(id),
        // A Group or List stands for patients; a Patient-shaped value that is not a valid id
        // is not proof of anything.
        Some(("Group" | "List" | "Patient", _)) => SearchRef::Unknown,
        Some((t, id)) if fhir::resource_type(t).is_some() && fhir::is_valid_id(id) => {
            SearchRef::OtherType
        }
        Some(_) => SearchRef::Unknown,
    }
}

impl AuthzPolicy {
    /// Decides on the request head. `raw_query` is the query as on the wire (for narrowing).
    pub fn decide(
        &self,
        r: &RoutedRequest,
        raw_query: &str,
        grant: Option<&Grant>,
    ) -> AuthzDecision {
        if self.public.contains(&r.interaction) {
            return AuthzDecision::Allow {
                reason: "public",
                query: None,
            };
        }
        let Some(grant) = grant else {
            return AuthzDecision::Deny(deny::missing_token());
        };
        match r.interaction {
            Interaction::Batch | Interaction::Transaction => {
                return AuthzDecision::Pending {
                    needs: Needs::RequestBody,
                }
            }
            Interaction::OperationSystem
            | Interaction::OperationType
            | Interaction::OperationInstance => return self.decide_operation(r, raw_query, grant),
            Interaction::Passthrough => {
                return AuthzDecision::Allow {
                    reason: "authenticated",
                    query: None,
                }
            }
            _ => {}
        }
        let Some(needed) = required_permissions(r.interaction) else {
            return AuthzDecision::Deny(deny::insufficient_scope());
        };
        if r.interaction == Interaction::SearchSystem || r.interaction == Interaction::HistorySystem
        {
            return self.decide_system_wide(r, grant, needed);
        }
        let types: Vec<&'static str> = match r.resource_type {
            Some(t) => vec![t],
            None => vec![], // compartment search of `*`
        };
        self.decide_typed(r, raw_query, grant, &types, needed)
    }

    fn decide_system_wide(
        &self,
        r: &RoutedRequest,
        grant: &Grant,
        needed: Permissions,
    ) -> AuthzDecision {
        // `_type` lists what a system search can return; without it, everything.
        let listed: Vec<&str> = r
            .params
            .iter()
            .filter(|p| p.name == "_type")
            .flat_map(|p| p.value.split(','))
            .collect();
        let covered = |t: Option<&str>| {
            grant.scopes.iter().any(|s| {
                s.context != Context::Patient
                    && s.params.is_empty()
                    && s.permissions.contains(needed)
                    && t.map_or(s.resource.is_none(), |t| s.covers_type(t))
            })
        };
        if r.params.iter().any(|p| reaches_other_types(&p.name)) && !self.has_wildcard_read(grant) {
            return AuthzDecision::Deny(deny::query_shape());
        }
        let ok = if r.interaction == Interaction::SearchSystem && !listed.is_empty() {
            listed
                .iter()
                .all(|t| fhir::resource_type(t).is_some() && covered(Some(t)))
        } else {
            covered(None)
        };
        if ok {
            AuthzDecision::Allow {
                reason: "scope",
                query: None,
            }
        } else if grant.scopes.iter().any(|s| s.context == Context::Patient) {
            AuthzDecision::Deny(deny::not_confinable())
        } else {
            AuthzDecision::Deny(deny::insufficient_scope())
        }
    }

    /// Can every type the request's includes, reverse includes, `_has` and chains reach be
    /// read (or searched) under the grant? See the module notes for the rules.
    fn shape_allowed(&self, r: &RoutedRequest, grant: &Grant, under_patient: bool) -> bool {
        if !under_patient && self.has_wildcard_read(grant) {
            return true;
        }
        let Some(searched) = r.resource_type else {
            return false;
        };
        let covered = |t: &str, perm: Permissions, patient_ok: bool| {
            grant.scopes.iter().any(|s| {
                s.params.is_empty()
                    && s.permissions.contains(perm)
                    && s.covers_type(t)
                    && (patient_ok || s.context != Context::Patient)
            })
        };
        for p in &r.params {
            let mut name_parts = p.name.split(':');
            let base = name_parts.next().unwrap_or("");
            let modifier = name_parts.next();
            let reached: Vec<(&str, Permissions)> = match base {
                "_include" | "_revinclude" if modifier.is_some() => return false, // :iterate
                "_include" => {
                    let mut v = p.value.split(':');
                    let (Some(source), Some(param)) = (v.next(), v.next()) else {
                        return false;
                    };
                    if source != searched {
                        return false;
                    }
                    let Some(targets) = fhir::reference_targets(source, param) else {
                        return false;
                    };
                    let wanted = v.next();
                    if wanted.is_some_and(|w| !targets.contains(&w)) {
                        return false;
                    }
                    // Under patient/ scopes what an include reaches is verified on the
                    // response like every other entry (`verify_confined`).
                    targets
                        .iter()
                        .copied()
                        .filter(|t| wanted.is_none_or(|w| w == *t))
                        .map(|t| (t, Permissions::R))
                        .collect()
                }
                _ if under_patient
                    && (base == "_has"
                        || p.name.contains('.')
                        || base.starts_with("_contained")) =>
                {
                    return false
                }
                "_revinclude" => {
                    let mut v = p.value.split(':');
                    let (Some(source), Some(param)) = (v.next(), v.next()) else {
                        return false;
                    };
                    match fhir::reference_targets(source, param) {
                        Some(targets)
                            if targets.contains(&searched)
                                && fhir::resource_type(source).is_some() =>
                        {
                            vec![(source, Permissions::R)]
                        }
                        _ => return false,
                    }
                }
                "_has" => match (modifier, fhir::resource_type(modifier.unwrap_or(""))) {
                    (Some(_), Some(t)) => vec![(t, Permissions::S)],
                    _ => return false,
                },
                "_contained" | "_containedType" => return false,
                _ if p.name.contains('.') => {
                    // A chain `param.x` or `param:Type.x`: it searches the referenced type(s).
                    let head = p.name.split('.').next().unwrap_or("");
                    let (param, typed) = match head.split_once(':') {
                        Some((param, t)) => (param, Some(t)),
                        None => (head, None),
                    };
                    let Some(targets) = fhir::reference_targets(searched, param) else {
                        return false;
                    };
                    match typed {
                        Some(t) if targets.contains(&t) => vec![(t, Permissions::S)],
                        Some(_) => return false,
                        None => targets.iter().map(|t| (*t, Permissions::S)).collect(),
                    }
                }
                _ => continue,
            };
            if !reached
                .iter()
                .all(|(t, perm)| covered(t, *perm, under_patient))
            {
                return false;
            }
        }
        true
    }

    fn has_wildcard_read(&self, grant: &Grant) -> bool {
        grant.scopes.iter().any(|s| {
            s.context != Context::Patient
                && s.resource.is_none()
                && s.params.is_empty()
                && s.permissions.contains(Permissions::R.union(Permissions::S))
        })
    }

    /// `types` empty means every type (compartment search of `*`, `$everything`).
    fn decide_typed(
        &self,
        r: &RoutedRequest,
        raw_query: &str,
        grant: &Grant,
        types: &[&str],
        needed: Permissions,
    ) -> AuthzDecision {
        let matches = |s: &&ResourceScope| {
            s.permissions.contains(needed)
                && if types.is_empty() {
                    s.resource.is_none()
                } else {
                    types.iter().all(|t| s.covers_type(t))
                }
        };
        let candidates: Vec<&ResourceScope> = grant.scopes.iter().filter(matches).collect();
        if candidates.is_empty() {
            return AuthzDecision::Deny(deny::insufficient_scope());
        }
        let shape_risky = r.params.iter().any(|p| reaches_other_types(&p.name));
        // 1. Unconstrained user/ or system/ scopes.
        if candidates
            .iter()
            .any(|s| s.context != Context::Patient && s.params.is_empty())
        {
            if shape_risky && !self.shape_allowed(r, grant, false) {
                return AuthzDecision::Deny(deny::query_shape());
            }
            return AuthzDecision::Allow {
                reason: "scope",
                query: None,
            };
        }
        // 2. Unconstrained patient/ scopes, confined to the launch patient.
        let granular: Vec<&ResourceScope> = candidates
            .iter()
            .copied()
            .filter(|s| !s.params.is_empty())
            .collect();
        if candidates
            .iter()
            .any(|s| s.context == Context::Patient && s.params.is_empty())
        {
            let Some(patient) = grant.patient.as_deref() else {
                return AuthzDecision::Deny(deny::patient_context_missing());
            };
            let decision = if shape_risky && !self.shape_allowed(r, grant, true) {
                AuthzDecision::Deny(deny::query_shape())
            } else {
                confined(self.confine_to_patient(r, raw_query, patient, types))
            };
            // Union: a granular scope may still allow what the patient scope does not.
            return match decision {
                AuthzDecision::Deny(_) if !granular.is_empty() && !shape_risky => {
                    match self.narrow_granular(r, raw_query, grant, &granular, types) {
                        allowed @ (AuthzDecision::Allow { .. }
                        | AuthzDecision::Confined { .. }
                        | AuthzDecision::Pending { .. }) => allowed,
                        AuthzDecision::Deny(_) => decision,
                    }
                }
                other => other,
            };
        }
        // 3. Granular scopes: narrow a search to one scope's constraints.
        if shape_risky {
            return AuthzDecision::Deny(deny::query_shape());
        }
        self.narrow_granular(r, raw_query, grant, &candidates, types)
    }

    fn confine_to_patient(
        &self,
        r: &RoutedRequest,
        raw_query: &str,
        patient: &str,
        types: &[&str],
    ) -> AuthzDecision {
        use Interaction as I;
        let allow = |query| AuthzDecision::Allow {
            reason: "scope",
            query,
        };
        // A compartment search names its compartment in the path.
        if let Some((ctype, cid)) = &r.compartment {
            if *ctype == "Patient" {
                return if cid == patient {
                    self.check_named_patients(r, patient, raw_query, types, false)
                } else {
                    AuthzDecision::Deny(deny::patient_mismatch())
                };
            }
            return self.check_named_patients(r, patient, raw_query, types, true);
        }
        let Some(t) = types.first().copied() else {
            return AuthzDecision::Deny(deny::not_confinable());
        };
        if t == "Patient" {
            return match r.interaction {
                I::SearchType => self.narrow_patient_search(r, raw_query, patient),
                I::Read | I::Vread | I::HistoryInstance | I::Update | I::Patch | I::Delete => {
                    if r.id.as_deref() == Some(patient) {
                        allow(None)
                    } else {
                        AuthzDecision::Deny(deny::patient_mismatch())
                    }
                }
                I::Create
                | I::ConditionalCreate
                | I::ConditionalUpdate
                | I::ConditionalPatch
                | I::ConditionalDelete
                | I::HistoryType => AuthzDecision::Deny(deny::not_confinable()),
                _ => AuthzDecision::Deny(deny::insufficient_scope()),
            };
        }
        if fhir::patient_data(t) == fhir::PatientData::None {
            // No element of the type can reference a patient (Medication, Practitioner, …);
            // the response is still verified (a contained Patient, an extension).
            return allow(None);
        }
        match r.interaction {
            I::SearchType => self.check_named_patients(r, patient, raw_query, types, true),
            I::Read | I::Vread | I::HistoryInstance => match self.instance_check {
                InstanceCheck::Body => AuthzDecision::Pending {
                    needs: Needs::ResponseBody,
                },
                InstanceCheck::Deny => AuthzDecision::Deny(deny::not_confinable()),
            },
            I::Create | I::Update | I::Patch | I::Delete => {
                match (self.instance_check, r.interaction) {
                    (InstanceCheck::Body, I::Create) => AuthzDecision::Pending {
                        needs: Needs::RequestBody,
                    },
                    // What is overwritten, patched or deleted must be the patient's as it is
                    // now, not only as the body says: read before write.
                    (InstanceCheck::Body, _) if self.read_before_write => AuthzDecision::Pending {
                        needs: Needs::CurrentResource,
                    },
                    _ => AuthzDecision::Deny(deny::not_confinable()),
                }
            }
            _ => AuthzDecision::Deny(deny::not_confinable()),
        }
    }

    /// `Patient?…` under a patient scope: `_id` must be the patient, or is added.
    fn narrow_patient_search(
        &self,
        r: &RoutedRequest,
        raw_query: &str,
        patient: &str,
    ) -> AuthzDecision {
        let ids: Vec<&str> = r
            .params
            .iter()
            .filter(|p| p.name == "_id")
            .flat_map(|p| p.value.split(','))
            .collect();
        if !ids.is_empty() {
            return if ids.iter().all(|id| *id == patient) {
                AuthzDecision::Allow {
                    reason: "scope",
                    query: None,
                }
            } else {
                AuthzDecision::Deny(deny::patient_mismatch())
            };
        }
        match self.patient_search {
            PatientSearch::Narrow => AuthzDecision::Allow {
                reason: "narrowed",
                query: Some(append_param(raw_query, "_id", patient)),
            },
            PatientSearch::Refuse => AuthzDecision::Deny(deny::not_confinable()),
        }
    }

    /// A search of compartment type(s) under a patient scope: every patient reference among the
    /// type's compartment parameters must be the patient; with none, the search is narrowed.
    fn check_named_patients(
        &self,
        r: &RoutedRequest,
        patient: &str,
        raw_query: &str,
        types: &[&str],
        must_name: bool,
    ) -> AuthzDecision {
        let Some(t) = types.first().copied() else {
            // `Patient/{id}/*` is confined by its path; other compartments of `*` cannot be.
            return if must_name {
                AuthzDecision::Deny(deny::not_confinable())
            } else {
                AuthzDecision::Allow {
                    reason: "scope",
                    query: None,
                }
            };
        };
        let params: &[&str] = match fhir::patient_data(t) {
            fhir::PatientData::Linked { params, .. } => params,
            fhir::PatientData::None => {
                return AuthzDecision::Allow {
                    reason: "scope",
                    query: None,
                }
            }
            fhir::PatientData::Own => return AuthzDecision::Deny(deny::not_confinable()),
        };
        if params.is_empty() {
            // Binary, Bundle, Parameters, …: patient data with no parameter to confine a search.
            return AuthzDecision::Deny(deny::not_confinable());
        }
        // Parameters that confine a search to a patient: the compartment's (or, outside the
        // compartment, those that can target Patient), and `patient` where R4 defines it for
        // the type (a server ignoring an unknown parameter would otherwise return every
        // patient's data).
        let has_patient = fhir::has_patient_search_param(t) || params.contains(&"patient");
        let confines = |base: &str| params.contains(&base) || (has_patient && base == "patient");
        let mut named = false;
        for p in &r.params {
            let (base, modifier) = match p.name.split_once(':') {
                Some((b, m)) => (b, Some(m)),
                None => (p.name.as_str(), None),
            };
            if !confines(base) || modifier.is_some_and(|m| m != "Patient") {
                continue;
            }
            // A bare id names a patient only where the parameter can target nothing else, or
            // with the `:Patient` modifier; on `performer=123` it is ambiguous.
            let only_patients = modifier == Some("Patient")
                || fhir::reference_targets(t, base).is_some_and(|ts| ts == ["Patient"]);
            for value in p.value.split(',') {
                match search_value_patient(value, only_patients) {
                    SearchRef::Patient(id) if id == patient => named = true,
                    // Another type (`performer=Practitioner/9`) filters, it does not widen.
                    SearchRef::OtherType => {}
                    // Another patient, a value that may be one (a bare id on a parameter with
                    // several targets, an absolute URL, a Group): refuse rather than guess.
                    _ => return AuthzDecision::Deny(deny::patient_mismatch()),
                }
            }
        }
        if named || !must_name {
            return AuthzDecision::Allow {
                reason: "scope",
                query: None,
            };
        }
        match self.patient_search {
            PatientSearch::Refuse => AuthzDecision::Deny(deny::not_confinable()),
            PatientSearch::Narrow => {
                let param = if has_patient {
                    "patient"
                } else {
                    ["subject", "beneficiary"]
                        .into_iter()
                        .find(|p| params.contains(p))
                        .unwrap_or(params[0])
                };
                AuthzDecision::Allow {
                    reason: "narrowed",
                    query: Some(append_param(
                        raw_query,
                        param,
                        &format!("Patient/{patient}"),
                    )),
                }
            }
        }
    }

    /// Only granular scopes match: a search is narrowed to the constraints of one of them
    /// (several scopes with the same single parameter combine as an OR-list); instance
    /// reads wait for the response.
    fn narrow_granular(
        &self,
        r: &RoutedRequest,
        raw_query: &str,
        grant: &Grant,
        candidates: &[&ResourceScope],
        types: &[&str],
    ) -> AuthzDecision {
        // Granular patient/ scopes are still confined to the patient.
        if candidates.iter().any(|s| s.context == Context::Patient) && grant.patient.is_none() {
            return AuthzDecision::Deny(deny::patient_context_missing());
        }
        if !r.interaction.is_search() {
            return if matches!(
                r.interaction,
                Interaction::Read | Interaction::Vread | Interaction::HistoryInstance
            ) {
                AuthzDecision::Pending {
                    needs: Needs::ResponseBody,
                }
            } else {
                AuthzDecision::Deny(deny::granular())
            };
        }
        // Already constrained by the request itself?
        let satisfied = |s: &&ResourceScope| {
            s.params
                .iter()
                .all(|(n, v)| r.params.iter().any(|p| &p.name == n && &p.value == v))
        };
        let mut query = raw_query.to_string();
        let mut narrowed = false;
        if !candidates.iter().any(satisfied) {
            let single: Vec<&(String, String)> = candidates
                .iter()
                .filter(|s| s.params.len() == 1)
                .map(|s| &s.params[0])
                .collect();
            let same_name =
                single.len() == candidates.len() && single.windows(2).all(|w| w[0].0 == w[1].0);
            if !same_name {
                return AuthzDecision::Deny(deny::granular());
            }
            if r.params.iter().any(|p| p.name == single[0].0) {
                // The request constrains the same parameter differently: refuse, not guess.
                return AuthzDecision::Deny(deny::granular());
            }
            let values: Vec<&str> = single.iter().map(|(_, v)| v.as_str()).collect();
            query = append_param(&query, &single[0].0, &values.join(","));
            narrowed = true;
        }
        if candidates.iter().any(|s| s.context == Context::Patient) {
            if let Some(patient) = grant.patient.as_deref() {
                let mut confined = r.clone();
                confined
                    .params
                    .extend(crate::routing::parse_query(&query, usize::MAX).unwrap_or_default());
                return match self.confine_to_patient(&confined, &query, patient, types) {
                    AuthzDecision::Allow { query: Some(q), .. } => {
                        AuthzDecision::Confined { query: Some(q) }
                    }
                    AuthzDecision::Allow { query: None, .. } if narrowed => {
                        AuthzDecision::Confined { query: Some(query) }
                    }
                    AuthzDecision::Allow { query: None, .. } => {
                        AuthzDecision::Confined { query: None }
                    }
                    other => other,
                };
            }
        }
        if narrowed {
            AuthzDecision::Allow {
                reason: "narrowed",
                query: Some(query),
            }
        } else {
            AuthzDecision::Allow {
                reason: "scope",
                query: None,
            }
        }
    }

    fn decide_operation(&self, r: &RoutedRequest, raw_query: &str, grant: &Grant) -> AuthzDecision {
        let Some(op) = r.operation.as_deref() else {
            return AuthzDecision::Deny(deny::operation());
        };
        if op == "$export" {
            // A POST kick-off names its types in a Parameters body.
            if r.has_body {
                return AuthzDecision::Pending {
                    needs: Needs::RequestBody,
                };
            }
            return decide_export(r, grant, &[]);
        }
        let Some(rule) = self.operations.iter().find(|o| o.name == op) else {
            return AuthzDecision::Deny(deny::operation());
        };
        let types: Vec<&str> = if rule.all_types {
            vec![]
        } else {
            r.resource_type.into_iter().collect()
        };
        if rule.all_types && r.resource_type == Some("Patient") {
            // Patient/{id}/$everything: a patient scope must be for that patient.
            if let (Some(id), Some(patient)) = (r.id.as_deref(), grant.patient.as_deref()) {
                let only_patient_scopes = !grant.scopes.iter().any(|s| {
                    s.context != Context::Patient
                        && s.permissions.contains(rule.permissions)
                        && s.resource.is_none()
                        && s.params.is_empty()
                });
                if only_patient_scopes && id != patient {
                    return AuthzDecision::Deny(deny::patient_mismatch());
                }
            }
        }
        let mut as_read = r.clone();
        as_read.interaction = if r.id.is_some() {
            Interaction::Read
        } else {
            Interaction::SearchType
        };
        let decision = match self.decide_typed(&as_read, raw_query, grant, &types, rule.permissions)
        {
            // `$everything` on the patient's own record is confined by its path.
            AuthzDecision::Deny(d)
                if d.reason == "not-confinable"
                    && rule.all_types
                    && r.id.is_some()
                    && r.id == grant.patient =>
            {
                AuthzDecision::Confined { query: None }
            }
            AuthzDecision::Pending { .. }
                if rule.all_types && r.id.is_some() && r.id == grant.patient =>
            {
                AuthzDecision::Confined { query: None }
            }
            other => other,
        };
        match decision {
            AuthzDecision::Confined { .. } | AuthzDecision::Pending { .. } => {
                confine_operation(r, op, decision)
            }
            other => other,
        }
    }
}

/// Operations allowed under `patient/` scopes: those whose whole input is the URL fhirgate
/// confined and whose answer it verifies — `Patient/{id}/$everything` on the patient's own
/// record, and a `$lastn` search sent without a body. Any other operation (`$submit`,
/// `$inquire`, `$validate`, custom ones) takes a body fhirgate does not read as FHIR
/// parameters naming patients: refused, never narrowed.
fn confine_operation(r: &RoutedRequest, op: &str, decision: AuthzDecision) -> AuthzDecision {
    let allowed = match op {
        "$everything" => r.resource_type == Some("Patient") && r.id.is_some() && !r.has_body,
        "$lastn" => r.interaction == Interaction::OperationType && !r.has_body,
        _ => false,
    };
    if allowed {
        decision
    } else {
        AuthzDecision::Deny(deny::operation_not_confinable())
    }
}

/// The `_type` values of a POST `$export` kick-off's Parameters body (Bulk Data IG 2.0:
/// `valueString`, comma-separated, repeatable); None for a body that is not such Parameters.
pub fn export_body_types(body: &Value) -> Option<Vec<&str>> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return None;
    }
    let mut types = Vec::new();
    for p in body.get("parameter").and_then(Value::as_array)?.iter() {
        if p.get("name").and_then(Value::as_str) == Some("_type") {
            let v = p.get("valueString").and_then(Value::as_str)?;
            types.extend(v.split(',').map(str::trim));
        }
    }
    Some(types)
}

/// A decision reached under a `patient/` scope: what it lets through is verified on the
/// response (reads wait for theirs anyway).
fn confined(decision: AuthzDecision) -> AuthzDecision {
    match decision {
        AuthzDecision::Allow { query, .. } => AuthzDecision::Confined { query },
        AuthzDecision::Pending {
            needs: Needs::ResponseBody,
        } => AuthzDecision::Confined { query: None },
        other => other,
    }
}

/// Bulk Data `$export` (system, Patient, Group): unconstrained `system/` scopes with read and
/// search on every exported type (`_type`, or every type without it). Patient and granular
/// scopes never authorize an export.
/// Do the grant's unconstrained `system/` scopes with read and search cover every one of
/// `types` (empty: every type, a `system/*` scope)?
pub fn export_covered(grant: &Grant, types: &[&str]) -> bool {
    let rs = Permissions::R.union(Permissions::S);
    let system: Vec<&ResourceScope> = grant
        .scopes
        .iter()
        .filter(|s| {
            s.context == Context::System && s.params.is_empty() && s.permissions.contains(rs)
        })
        .collect();
    if types.is_empty() {
        system.iter().any(|s| s.resource.is_none())
    } else {
        types
            .iter()
            .all(|t| fhir::resource_type(t).is_some() && system.iter().any(|s| s.covers_type(t)))
    }
}

/// The types a `$export` kick-off asks for (`_type` in the query and the Parameters body).
pub fn export_types<'a>(r: &'a RoutedRequest, body_types: &[&'a str]) -> Vec<&'a str> {
    r.params
        .iter()
        .filter(|p| p.name == "_type")
        .flat_map(|p| p.value.split(','))
        .chain(body_types.iter().copied())
        .collect()
}

fn decide_export(r: &RoutedRequest, grant: &Grant, body_types: &[&str]) -> AuthzDecision {
    if !matches!(r.resource_type, None | Some("Patient") | Some("Group"))
        || (r.resource_type == Some("Patient") && r.id.is_some())
    {
        return AuthzDecision::Deny(deny::operation());
    }
    if export_covered(grant, &export_types(r, body_types)) {
        AuthzDecision::Allow {
            reason: "scope",
            query: None,
        }
    } else {
        AuthzDecision::Deny(deny::bulk())
    }
}

/// Is `resource` the patient's: tied to the patient through the elements R4 defines for its
/// type (Patient by id), and mentioning no other patient? Types that hold no patient data
/// qualify. See [`super::confine`].
pub fn belongs_to_patient(resource: &Value, patient: &str) -> bool {
    super::confine::releasable(resource, patient)
}

pub use super::confine::patients_of;

/// Does `resource` meet a granular constraint `name=value` (`system|code`, `|code` or `code`)
/// on a coded element of that name?
fn meets_constraint(resource: &Value, name: &str, value: &str) -> bool {
    let (system, code) = match value.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, value),
    };
    let concepts: Vec<&Value> = match resource.get(name) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => return false,
    };
    concepts.iter().any(|c| {
        let codings: Vec<&Value> = match c.get("coding") {
            Some(Value::Array(items)) => items.iter().collect(),
            _ => vec![*c],
        };
        codings.iter().any(|coding| {
            coding.get("code").and_then(Value::as_str) == Some(code)
                && system.is_none_or(|s| {
                    s.is_empty() || coding.get("system").and_then(Value::as_str) == Some(s)
                })
        })
    })
}

impl AuthzPolicy {
    /// Finishes a `Pending { needs: ResponseBody }` decision on the upstream's response.
    pub fn decide_response(
        &self,
        r: &RoutedRequest,
        grant: &Grant,
        response: &Value,
    ) -> AuthzDecision {
        let types: Vec<&str> = r.resource_type.into_iter().collect();
        let Some(needed) = required_permissions(r.interaction) else {
            return AuthzDecision::Deny(deny::insufficient_scope());
        };
        let scopes: Vec<&ResourceScope> = grant
            .scopes
            .iter()
            .filter(|s| s.permissions.contains(needed) && types.iter().all(|t| s.covers_type(t)))
            .collect();
        let allowed = scopes.iter().any(|s| {
            let patient_ok = s.context != Context::Patient
                || grant
                    .patient
                    .as_deref()
                    .is_some_and(|p| belongs_to_patient(response, p));
            patient_ok
                && s.params
                    .iter()
                    .all(|(n, v)| v.split(',').any(|v| meets_constraint(response, n, v)))
        });
        if allowed {
            AuthzDecision::Allow {
                reason: "scope",
                query: None,
            }
        } else if scopes
            .iter()
            .any(|s| s.context == Context::Patient && s.params.is_empty())
        {
            AuthzDecision::Deny(deny::not_patients())
        } else {
            AuthzDecision::Deny(deny::insufficient_scope())
        }
    }

    /// A Subscription written under `patient/` scopes: its criteria, decided as the search it
    /// is, must be confined to the patient without narrowing; its channel may not carry a
    /// payload anywhere but a rest-hook over https or a websocket.
    fn decide_subscription(
        &self,
        grant: &Grant,
        body: &Value,
        route: &EntryRouter,
    ) -> AuthzDecision {
        let Some(criteria) = body.get("criteria").and_then(Value::as_str) else {
            return AuthzDecision::Deny(deny::not_confinable());
        };
        let (routed, raw_query) = match route("GET", criteria, None) {
            Ok(x) => x,
            Err(_) => return AuthzDecision::Deny(deny::not_confinable()),
        };
        if !routed.interaction.is_search() {
            return AuthzDecision::Deny(deny::not_confinable());
        }
        match self.decide(&routed, &raw_query, Some(grant)) {
            AuthzDecision::Confined { query: None } => {}
            AuthzDecision::Deny(d) => return AuthzDecision::Deny(d),
            _ => return AuthzDecision::Deny(deny::not_confinable()),
        }
        let channel = body.get("channel");
        let kind = channel.and_then(|c| c.get("type")).and_then(Value::as_str);
        let endpoint = channel
            .and_then(|c| c.get("endpoint"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let channel_ok = match kind {
            Some("rest-hook") => endpoint.starts_with("https://"),
            Some("websocket") => true,
            _ => false,
        };
        if !channel_ok {
            return AuthzDecision::Deny(deny::not_confinable());
        }
        AuthzDecision::Allow {
            reason: "scope",
            query: None,
        }
    }

    /// Finishes a `Confined` decision on the upstream's (2xx) response: every resource in it
    /// must be the launch patient's or hold no patient data (see [`super::confine`]), and a
    /// single resource read under granular scopes must meet their constraints.
    pub fn verify_confined(
        &self,
        r: &RoutedRequest,
        grant: &Grant,
        response: &Value,
    ) -> AuthzDecision {
        let Some(patient) = grant.patient.as_deref() else {
            return AuthzDecision::Deny(deny::patient_context_missing());
        };
        let revincludes: Vec<(&str, &str)> = r
            .params
            .iter()
            .filter(|p| p.name == "_revinclude")
            .filter_map(|p| {
                let mut v = p.value.split(':');
                Some((v.next()?, v.next()?))
            })
            .collect();
        match super::confine::verify_response(response, patient, &revincludes) {
            Ok(()) => {}
            Err(super::confine::Unconfined::NotPatients) => {
                return AuthzDecision::Deny(deny::not_patients())
            }
            Err(super::confine::Unconfined::Unverifiable) => {
                return AuthzDecision::Deny(deny::unverifiable())
            }
        }
        // Granular constraints on an instance read are checked on the resource itself.
        let single = matches!(r.interaction, Interaction::Read | Interaction::Vread)
            && response.get("resourceType").and_then(Value::as_str) == r.resource_type;
        if single {
            let needed = required_permissions(r.interaction).unwrap_or(Permissions::R);
            let meets = grant.scopes.iter().any(|s| {
                s.permissions.contains(needed)
                    && r.resource_type.is_some_and(|t| s.covers_type(t))
                    && s.params
                        .iter()
                        .all(|(n, v)| v.split(',').any(|v| meets_constraint(response, n, v)))
            });
            if !meets {
                return AuthzDecision::Deny(deny::insufficient_scope());
            }
        }
        AuthzDecision::Allow {
            reason: "scope",
            query: None,
        }
    }

    /// Finishes a `Pending { needs: CurrentResource }` decision (an update, patch or delete
    /// of a patient-data resource under `patient/` scopes) on the resource as the FHIR server
    /// holds it now (`status` and body of GET `[type]/[id]`) and the request's body:
    /// - the current resource must be the patient's (a missing one is refused alike: no write
    ///   may tell which ids exist);
    /// - an update's body must be the patient's;
    /// - a JSON Patch is applied to the current resource and the result must be the patient's
    ///   and keep its type and id; a FHIRPath Patch cannot be judged and is refused.
    pub fn decide_current(
        &self,
        r: &RoutedRequest,
        grant: &Grant,
        status: u16,
        current: Option<&Value>,
        body: Option<&Value>,
    ) -> AuthzDecision {
        let Some(patient) = grant.patient.as_deref() else {
            return AuthzDecision::Deny(deny::patient_context_missing());
        };
        let current = match (status, current) {
            (200, Some(c)) => c,
            (404 | 410, _) => return AuthzDecision::Deny(deny::not_patients()),
            _ => return AuthzDecision::Deny(deny::current_unavailable()),
        };
        let same_resource = current.get("resourceType").and_then(Value::as_str) == r.resource_type
            && current.get("id").and_then(Value::as_str) == r.id.as_deref();
        if !same_resource {
            return AuthzDecision::Deny(deny::current_unavailable());
        }
        if !belongs_to_patient(current, patient) {
            return AuthzDecision::Deny(deny::not_patients());
        }
        let allow = AuthzDecision::Allow {
            reason: "scope",
            query: None,
        };
        match r.interaction {
            Interaction::Delete => allow,
            Interaction::Update => match body {
                Some(b) if belongs_to_patient(b, patient) => allow,
                _ => AuthzDecision::Deny(deny::not_patients()),
            },
            Interaction::Patch => {
                let Some(Value::Array(_)) = body else {
                    return AuthzDecision::Deny(deny::not_confinable());
                };
                let Some(patch) =
                    body.and_then(|b| serde_json::from_value::<json_patch::Patch>(b.clone()).ok())
                else {
                    return AuthzDecision::Deny(deny::not_confinable());
                };
                let Some(patched) = crate::fhir::patched(current, &patch) else {
                    // A failed `test` or a bad path: the server would refuse it too, but its
                    // answer could tell a value; fhirgate answers alike for every failure.
                    return AuthzDecision::Deny(deny::patch_refused());
                };
                let keeps_identity = patched.get("resourceType") == current.get("resourceType")
                    && patched.get("id") == current.get("id");
                if keeps_identity && belongs_to_patient(&patched, patient) {
                    allow
                } else {
                    AuthzDecision::Deny(deny::not_patients())
                }
            }
            _ => AuthzDecision::Deny(deny::not_confinable()),
        }
    }

    /// Finishes a `Pending { needs: RequestBody }` decision: a created or updated resource must
    /// be the patient's; a batch or transaction is decided entry by entry with `route`, which
    /// turns an entry's method and url into a routed request.
    pub fn decide_body(
        &self,
        r: &RoutedRequest,
        grant: &Grant,
        body: &Value,
        route: &EntryRouter,
    ) -> AuthzDecision {
        match r.interaction {
            Interaction::Batch | Interaction::Transaction => {
                let entries = body
                    .get("entry")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let mut confined_entries = false;
                for entry in entries {
                    let request = entry.get("request");
                    let method = request
                        .and_then(|q| q.get("method"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let url = request
                        .and_then(|q| q.get("url"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let resource = entry.get("resource");
                    // An entry's own conditions (`ifNoneExist` is a search, `ifMatch` and the
                    // others answer about a resource) are not in its url: under patient/
                    // scopes they cannot be confined, so such an entry is refused.
                    let conditional = ["ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince"]
                        .iter()
                        .any(|k| request.and_then(|q| q.get(*k)).is_some());
                    if conditional
                        && grant.scopes.iter().any(|s| s.context == Context::Patient)
                        && !grant.scopes.iter().any(|s| s.context != Context::Patient)
                    {
                        return AuthzDecision::Deny(deny::not_confinable());
                    }
                    let (routed, raw_query) = match route(method, url, resource) {
                        Ok(x) => x,
                        Err(rejection) => return AuthzDecision::Deny(rejection),
                    };
                    let decision = match self.decide(&routed, &raw_query, Some(grant)) {
                        AuthzDecision::Pending {
                            needs: Needs::RequestBody,
                        } => match resource {
                            Some(res) => self.decide_body(&routed, grant, res, route),
                            None => AuthzDecision::Deny(deny::not_confinable()),
                        },
                        // An entry cannot be narrowed, nor checked on a response of its own.
                        AuthzDecision::Allow { query: Some(_), .. }
                        | AuthzDecision::Confined { query: Some(_) }
                        | AuthzDecision::Pending { .. } => {
                            AuthzDecision::Deny(deny::not_confinable())
                        }
                        other => other,
                    };
                    match decision {
                        AuthzDecision::Deny(_) => return decision,
                        // Verified in the batch's response Bundle, entry by entry.
                        AuthzDecision::Confined { .. } => confined_entries = true,
                        _ => {}
                    }
                }
                if confined_entries {
                    AuthzDecision::Confined { query: None }
                } else {
                    AuthzDecision::Allow {
                        reason: "scope",
                        query: None,
                    }
                }
            }
            _ if r.operation.as_deref() == Some("$export") => match export_body_types(body) {
                Some(types) => decide_export(r, grant, &types),
                None => AuthzDecision::Deny(deny::bulk_body()),
            },
            _ => {
                let Some(needed) = required_permissions(r.interaction) else {
                    return AuthzDecision::Deny(deny::insufficient_scope());
                };
                // A Subscription's criteria is a search: under patient/ scopes it must name
                // the patient itself (a narrowed search would not be the one notified on).
                if body.get("resourceType").and_then(Value::as_str) == Some("Subscription")
                    && !grant.scopes.iter().any(|s| {
                        s.context != Context::Patient
                            && s.permissions.contains(needed)
                            && s.covers_type("Subscription")
                    })
                {
                    return self.decide_subscription(grant, body, route);
                }
                let ok = grant.scopes.iter().any(|s| {
                    s.permissions.contains(needed)
                        && r.resource_type.is_some_and(|t| s.covers_type(t))
                        && (s.context != Context::Patient
                            || grant
                                .patient
                                .as_deref()
                                .is_some_and(|p| belongs_to_patient(body, p)))
                        && s.params
                            .iter()
                            .all(|(n, v)| v.split(',').any(|v| meets_constraint(body, n, v)))
                });
                if ok {
                    AuthzDecision::Allow {
                        reason: "scope",
                        query: None,
                    }
                } else {
                    AuthzDecision::Deny(deny::not_patients())
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
