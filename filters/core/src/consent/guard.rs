//! Requests that act on what the caller may not see, decided before the FHIR server acts
//! (issue 15, class 5): a write, a delete or an operation on a resource is at least a read of
//! it, so the current resource must be released whole to the caller first; a write that changes
//! the resource's labels or the patient it belongs to needs an explicit privilege; a
//! conditional write (its search is an oracle and its target unknown) and every entry of a
//! batch or transaction are decided like the requests they stand for.

use super::config::ConditionalWritesPolicy;
use super::{Caller, ConsentPolicy, Consents, Treatment};
use crate::outcome::IssueType;
use crate::routing::{Interaction, RoutedRequest};
use crate::smart::authz::patients_of;
use crate::Rejection;
use serde_json::Value;

/// The request as the routing filter classified it.
#[derive(Debug, Clone, Copy)]
pub struct Acting<'a> {
    pub interaction: &'a str,
    pub operation: Option<&'a str>,
    pub resource_type: Option<&'a str>,
    pub id: Option<&'a str>,
    /// The query as sent.
    pub raw_query: &'a str,
}

/// What must be known before the request may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCheck {
    Pass,
    Refuse(Rejection),
    /// A batch or transaction: its body, to decide each entry ([`ConsentPolicy::check_bundle`]).
    Body,
    /// The current resource (GET `path`), and the request body when `body` is set; then
    /// [`ConsentPolicy::patients_of_current`] and [`ConsentPolicy::decide_current`].
    Current {
        path: String,
        body: bool,
    },
}

/// Instance operations whose answer the response filter judges resource by resource: the
/// instance is one of the resources it returns.
const FILTERED_OPERATIONS: &[&str] = &["$everything", "$document"];

/// Instance operations that change the resource's labels.
const RELABELLING_OPERATIONS: &[&str] = &["$meta-add", "$meta-delete"];

fn forbidden(reason: &'static str, why: &str) -> Rejection {
    Rejection::new(403, reason, IssueType::Forbidden, why)
}

fn relabel_refused() -> Rejection {
    forbidden(
        "relabel-not-permitted",
        "changing a resource's security labels or the patient it belongs to needs the relabelling privilege (relabelClients)",
    )
}

fn entry_refused(why: &str) -> Rejection {
    forbidden("bundle-entry-not-checkable", why)
}

impl ConsentPolicy {
    /// Do any policies withhold anything from anyone?
    pub fn restricting(&self) -> bool {
        !self.config.labels.is_empty() || self.config.consents.is_some()
    }

    fn may_relabel(&self, caller: &Caller) -> bool {
        caller
            .client_id
            .is_some_and(|c| self.config.relabel_clients.iter().any(|a| a == c))
    }

    /// Decides what a request needs before it may reach the FHIR server: the refusals of
    /// [`Self::request_refusal`], then the checks of writes, deletes, instance operations,
    /// conditional writes and bundles under restricting policies.
    pub fn check_request(&self, acting: &Acting, caller: &Caller) -> RequestCheck {
        if let Some(rejection) = self.request_refusal(
            acting.interaction,
            acting.operation,
            acting.raw_query,
            caller,
        ) {
            return RequestCheck::Refuse(rejection);
        }
        if !self.restricting() {
            return RequestCheck::Pass;
        }
        let needs_current = |body: bool| {
            match (
            &self.config.current_resource,
            acting.resource_type,
            acting.id,
        ) {
            (Some(source), Some(t), Some(id)) => RequestCheck::Current {
                path: format!("{}/{t}/{id}", source.path),
                body,
            },
            _ => RequestCheck::Refuse(forbidden(
                "write-not-checkable",
                "this gateway cannot read the resource first (currentResource), so a write to it is refused under its consent policies",
            )),
        }
        };
        let conditional_allowed = self.config.conditional_writes == ConditionalWritesPolicy::Allow;
        match Interaction::from_name(acting.interaction) {
            Some(
                Interaction::ConditionalCreate
                | Interaction::ConditionalUpdate
                | Interaction::ConditionalPatch
                | Interaction::ConditionalDelete,
            ) if conditional_allowed => RequestCheck::Pass,
            Some(
                Interaction::ConditionalCreate
                | Interaction::ConditionalUpdate
                | Interaction::ConditionalPatch
                | Interaction::ConditionalDelete,
            ) => RequestCheck::Refuse(forbidden(
                "conditional-write-not-checkable",
                "a conditional write searches for what it changes: its answer and its target cannot be checked against the consent policies; write to the resource's id",
            )),
            Some(Interaction::Batch | Interaction::Transaction) => RequestCheck::Body,
            Some(Interaction::Update | Interaction::Patch) => needs_current(true),
            Some(Interaction::Delete) => needs_current(false),
            Some(Interaction::OperationInstance) => {
                let op = acting.operation.unwrap_or_default();
                if RELABELLING_OPERATIONS.contains(&op) && !self.may_relabel(caller) {
                    RequestCheck::Refuse(relabel_refused())
                } else if FILTERED_OPERATIONS.contains(&op) {
                    RequestCheck::Pass
                } else {
                    needs_current(false)
                }
            }
            // `$meta` on a type or the system lists every label in use: whether withheld data
            // exists, as a label search would tell.
            Some(Interaction::OperationType | Interaction::OperationSystem)
                if acting.operation == Some("$meta") =>
            {
                RequestCheck::Refuse(forbidden(
                    "label-search-not-permitted",
                    "the labels in use include those of resources the consent policies withhold",
                ))
            }
            _ => RequestCheck::Pass,
        }
    }

    /// Decides a batch or transaction entry by entry, each like the request it stands for:
    /// reads and searches as [`Self::request_refusal`] decides them, creates as they are;
    /// an entry that would need its current resource or is conditional (`ifNoneExist`, a
    /// search URL) cannot be checked inline and is refused. An entry's method and URL are
    /// classified by the routing rules.
    pub fn check_bundle(&self, body: &[u8], caller: &Caller) -> Result<(), Rejection> {
        let route = |method: &str, url: &str| -> Result<(RoutedRequest, String), Rejection> {
            crate::smart::check::route_relative(&self.entry_routing, method, url, None)
        };
        let bundle: Value = serde_json::from_slice(body)
            .map_err(|_| entry_refused("the Bundle could not be read"))?;
        let entries = match bundle.get("entry") {
            None => return Ok(()),
            Some(Value::Array(entries)) => entries,
            Some(_) => return Err(entry_refused("Bundle.entry is not a list")),
        };
        for entry in entries {
            let request = entry.get("request");
            let method = request
                .and_then(|r| r.get("method"))
                .and_then(Value::as_str);
            let url = request.and_then(|r| r.get("url")).and_then(Value::as_str);
            let (Some(method), Some(url)) = (method, url) else {
                return Err(entry_refused("an entry has no request method and url"));
            };
            let conditional = ["ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince"]
                .iter()
                .any(|k| request.and_then(|r| r.get(*k)).is_some());
            if conditional && self.config.conditional_writes == ConditionalWritesPolicy::Refuse {
                return Err(entry_refused(
                    "an entry's condition is a search whose answer the consent policies cannot check",
                ));
            }
            let (routed, raw_query) = route(method, url)?;
            let acting = Acting {
                interaction: routed.interaction.name(),
                operation: routed.operation.as_deref(),
                resource_type: routed.resource_type,
                id: routed.id.as_deref(),
                raw_query: &raw_query,
            };
            match self.check_request(&acting, caller) {
                RequestCheck::Pass => {}
                RequestCheck::Refuse(rejection) => return Err(rejection),
                RequestCheck::Body | RequestCheck::Current { .. } => {
                    return Err(entry_refused(
                        "an entry that changes or acts on an existing resource is checked only as a request of its own",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The current resource as fetched: what [`Self::decide_current`] judges (None: not
    /// there, or not the resource asked for).
    pub fn read_current(&self, acting: &Acting, status: u16, body: &[u8]) -> Option<Value> {
        if status != 200 {
            return None;
        }
        let current: Value = serde_json::from_slice(body).ok()?;
        let same = current.get("resourceType").and_then(Value::as_str) == acting.resource_type
            && current.get("id").and_then(Value::as_str) == acting.id;
        same.then_some(current)
    }

    /// The patients whose Consents judging the current resource needs.
    pub fn patients_of_current(&self, current: &Value) -> Vec<String> {
        if self.config.consents.is_none() {
            return Vec::new();
        }
        patients_of(current)
    }

    /// Decides a write, delete or instance operation on the fetched current resource
    /// (`status` 0 when the fetch failed) and, for an update or patch, the request body.
    /// `Ok(Some(version))`: go on, and make the update, patch or delete conditional on that
    /// version (`If-Match`) so that what the server changes is what was checked.
    pub fn decide_current<'c>(
        &self,
        acting: &Acting,
        status: u16,
        current: Option<Value>,
        write: Option<(&[u8], &str)>,
        caller: &Caller,
        consents: &dyn Fn(&str) -> Consents<'c>,
    ) -> Result<Option<String>, Rejection> {
        let interaction = Interaction::from_name(acting.interaction);
        let Some(mut current) = current else {
            return match status {
                // Nothing there: an update creates it (the response filter judges the echo);
                // anything else the server answers 404 itself.
                404 | 410 => Ok(None),
                _ => Err(Rejection::new(
                    503,
                    "current-resource-unavailable",
                    IssueType::Transient,
                    "the resource could not be read to check the request against the consent policies",
                )),
            };
        };
        // As stored: the judging below may label or redact its copy.
        let before = current.clone();
        // Only a change is pinned to the version checked; an operation is a read of it.
        let changes = matches!(
            interaction,
            Some(Interaction::Update | Interaction::Patch | Interaction::Delete)
        );
        let version = current
            .get("meta")
            .and_then(|m| m.get("versionId"))
            .and_then(Value::as_str)
            .filter(|_| changes)
            .map(str::to_string);
        let mut report = super::Report::default();
        // A Binary's context is not read before a write: it is withheld, so not changed.
        let known = super::Known {
            consents,
            contexts: &|_| super::SecurityContext::Unavailable,
        };
        match self.treat(&mut current, caller, &known, &mut report) {
            Treatment::Release => {}
            Treatment::Withhold(_) => return Err(self.refusal(true)),
            // Part of it is hidden from the caller: a write could erase or probe it.
            Treatment::Redact(..) => {
                return Err(forbidden(
                    "write-needs-full-read",
                    "the caller may not read the whole resource, so it may not change it",
                ))
            }
        }
        if self.may_relabel(caller) {
            return Ok(version);
        }
        let after = match (interaction, write) {
            (Some(Interaction::Update), Some((body, _))) => {
                serde_json::from_slice::<Value>(body).ok()
            }
            (Some(Interaction::Patch), Some((body, content_type)))
                if content_type.to_ascii_lowercase().contains("json-patch") =>
            {
                let patch: Option<json_patch::Patch> = serde_json::from_slice(body).ok();
                match patch {
                    Some(patch) => match crate::fhir::patched(&before, &patch) {
                        Some(patched) => Some(patched),
                        // It does not apply to what the caller may see whole: the server
                        // refuses it too, and its answer reveals nothing withheld.
                        None => return Ok(version),
                    },
                    None => None,
                }
            }
            (Some(Interaction::Update | Interaction::Patch), _) => None,
            _ => return Ok(version),
        };
        let Some(after) = after else {
            return Err(forbidden(
                "write-not-checkable",
                "the write's body could not be read to see whether it changes the resource's labels or patient (JSON and JSON Patch are read)",
            ));
        };
        if guarded(&after) != guarded(&before) {
            return Err(relabel_refused());
        }
        Ok(version)
    }
}

/// What a write may change only with the relabelling privilege: the labels (own and
/// contained, as the filter judges them) and the patients the resource belongs to, sorted.
fn guarded(resource: &Value) -> (Vec<(Option<String>, String)>, Vec<String>) {
    let mut labels: Vec<(Option<String>, String)> = super::labels_with_contained(resource)
        .into_iter()
        .map(|l| (l.system, l.code))
        .collect();
    labels.sort();
    labels.dedup();
    let mut patients = patients_of(resource);
    patients.sort();
    patients.dedup();
    // A patient named in a way no lookup follows counts as a change of patient too.
    if crate::smart::confine::unresolved_patient(resource) {
        patients.push(String::from("\u{0}unresolved"));
    }
    (labels, patients)
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
