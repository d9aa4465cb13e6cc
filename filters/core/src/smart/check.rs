//! One line of `fhirgate authz check`: a request and a grant in, a decision out, through the
//! same routing and authorization functions the Wasm filters run.
//!
//! In:  `{"method", "path" (relative to the FHIR base), "query" (raw), "scopes", "patient"?,
//!        "token"? (false: no Authorization header), "body"?, "response"?}`
//! Out: `{"decision": "allow"|"deny"|"pending", "status", "reason", "needs"? , "query"?}`;
//! A write under `patient/` scopes is "pending" with needs "current-resource" until the line
//! gives "current" (the resource as the FHIR server holds it) or "currentStatus" (404).
//! "pending" with reason "confined": forwarded (narrowed to `query`) under `patient/` scopes and
//! released only if the response, given as "response", proves to be the patient's.

use super::authz::{AuthzDecision, AuthzPolicy, Grant};
use super::scope::resource_scopes;
use crate::routing::{RequestHead, RoutedRequest, RoutingPolicy};
use crate::Rejection;
use serde_json::{json, Value};

/// Routes `method path?query` under the FHIR base, with `body` (JSON) when given.
pub fn route_relative(
    routing: &RoutingPolicy,
    method: &str,
    relative: &str,
    body: Option<&Value>,
) -> Result<(RoutedRequest, String), Rejection> {
    let slash = if relative.starts_with('/') || relative.is_empty() {
        ""
    } else {
        "/"
    };
    let full = format!("{}{slash}{relative}", routing.base_path());
    let raw_query = full
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let is_form = method == "POST"
        && full
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/_search"));
    let body_bytes = body.map(|b| match b {
        Value::String(form) if is_form => form.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    });
    // A write whose body is not given is decided on its head, as the filter first sees it.
    let writes = matches!(method, "POST" | "PUT" | "PATCH");
    let head = RequestHead {
        method,
        path: &full,
        content_type: (body_bytes.is_some() || writes).then_some(if is_form {
            "application/x-www-form-urlencoded"
        } else if method == "PATCH" && body.is_some_and(Value::is_array) {
            "application/json-patch+json"
        } else {
            "application/fhir+json"
        }),
        content_length: None,
        has_body: body_bytes.as_ref().map_or(writes, |b| !b.is_empty()),
        if_none_exist: false,
        method_override: false,
    };
    let mut routed = routing.route(&head)?;
    if let (true, Some(bytes)) = (routed.awaiting_body, &body_bytes) {
        routing.route_body(&mut routed, bytes)?;
    }
    Ok((routed, raw_query))
}

fn deny_json(r: &Rejection) -> Value {
    json!({"decision": "deny", "status": r.status, "reason": r.reason})
}

pub fn check(routing: &RoutingPolicy, authz: &AuthzPolicy, input: &Value) -> Value {
    let method = input.get("method").and_then(Value::as_str).unwrap_or("GET");
    let path = input.get("path").and_then(Value::as_str).unwrap_or("");
    let query = input.get("query").and_then(Value::as_str).unwrap_or("");
    let relative = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let body = input.get("body");
    let response = input.get("response");
    let (routed, raw_query) = match route_relative(routing, method, &relative, body) {
        Ok(x) => x,
        Err(rejection) => return deny_json(&rejection),
    };
    let grant = Grant {
        scopes: resource_scopes(input.get("scopes").and_then(Value::as_str).unwrap_or("")),
        patient: super::authz::valid_patient(input.get("patient").and_then(Value::as_str)),
    };
    let has_token = input.get("token").and_then(Value::as_bool).unwrap_or(true);
    let grant_ref = has_token.then_some(&grant);
    let mut decision = authz.decide(&routed, &raw_query, grant_ref);
    if let (AuthzDecision::Pending { needs }, Some(grant)) = (&decision, grant_ref) {
        let route = |m: &str, u: &str, b: Option<&Value>| route_relative(routing, m, u, b);
        decision = match (needs, body, response) {
            (super::authz::Needs::RequestBody, Some(b), _) => {
                authz.decide_body(&routed, grant, b, &route)
            }
            (super::authz::Needs::ResponseBody, _, Some(resp)) => {
                authz.decide_response(&routed, grant, resp)
            }
            _ => decision,
        };
    }
    // A write under patient/ scopes is decided on the resource as it is now: "current" (the
    // FHIR server's answer to GET [type]/[id]; "currentStatus" 404 when it has none).
    if let (
        AuthzDecision::Pending {
            needs: super::authz::Needs::CurrentResource,
        },
        Some(grant),
    ) = (&decision, grant_ref)
    {
        let current = input.get("current");
        let status = input
            .get("currentStatus")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(if current.is_some() { 200 } else { 0 });
        if current.is_some() || status != 0 {
            decision = authz.decide_current(&routed, grant, status, current, body);
        }
    }
    // A confined request is forwarded (narrowed when it says so) and decided on its response.
    if let (AuthzDecision::Confined { .. }, Some(grant), Some(resp)) =
        (&decision, grant_ref, response)
    {
        decision = authz.verify_confined(&routed, grant, resp);
    }
    match decision {
        AuthzDecision::Allow {
            reason,
            query: None,
        } => json!({"decision": "allow", "status": 200, "reason": reason}),
        AuthzDecision::Allow {
            reason,
            query: Some(q),
        } => json!({"decision": "allow", "status": 200, "reason": reason, "query": q}),
        AuthzDecision::Pending { needs } => {
            json!({"decision": "pending", "status": 200, "reason": "pending", "needs": needs.name()})
        }
        AuthzDecision::Confined { query: None } => {
            json!({"decision": "pending", "status": 200, "reason": "confined", "needs": "response-body"})
        }
        AuthzDecision::Confined { query: Some(q) } => {
            json!({"decision": "pending", "status": 200, "reason": "confined", "needs": "response-body", "query": q})
        }
        AuthzDecision::Deny(r) => deny_json(&r),
    }
}
