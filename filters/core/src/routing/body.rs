//! Request body rules: which media types an interaction accepts, and what its body must say.
//!
//! Bodies are checked once, whole, after buffering: a JSON body must parse completely (serde
//! rejects duplicate keys among the fields read here and nesting deeper than 128), and a
//! resource's `resourceType` and `id` must agree with the path.

use super::{parse_query, refuse, Interaction, QueryError, RoutedRequest};
use crate::outcome::IssueType;
use crate::Rejection;
use serde::Deserialize;

/// What the body of a routed request must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body allowed (reads, searches by GET, deletes, history).
    None,
    /// A FHIR resource of this type; for updates the id must equal the path's.
    Resource {
        resource_type: &'static str,
        id: Option<String>,
    },
    /// A Bundle of type `batch` or `transaction`.
    Bundle,
    /// JSON Patch (an array) or FHIRPath Patch (a Parameters resource).
    Patch { json_patch: bool },
    /// `application/x-www-form-urlencoded` search parameters (POST `_search`).
    Form,
    /// Any JSON value, or no body (operations, CDS Hooks).
    Json,
    /// Anything, unexamined beyond its size (Binary with a non-FHIR media type, passthrough).
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    FhirJson,
    JsonPatch,
    Form,
    Xml,
    Other,
}

fn media(content_type: Option<&str>) -> Result<Option<Media>, Rejection> {
    let Some(ct) = content_type else {
        return Ok(None);
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    for param in parts {
        if let Some((k, v)) = param.split_once('=') {
            if k.trim().eq_ignore_ascii_case("charset")
                && !v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            {
                return Err(unsupported("FHIR bodies must be UTF-8"));
            }
        }
    }
    Ok(Some(match essence.as_str() {
        "application/fhir+json" | "application/json" | "application/json+fhir" => Media::FhirJson,
        "application/json-patch+json" => Media::JsonPatch,
        "application/x-www-form-urlencoded" => Media::Form,
        "application/fhir+xml" | "application/xml" | "text/xml" | "application/xml+fhir" => {
            Media::Xml
        }
        _ => Media::Other,
    }))
}

fn unsupported(why: &str) -> Rejection {
    Rejection::new(415, "unsupported-media-type", IssueType::NotSupported, why)
}

fn invalid_body(reason: &'static str, code: IssueType, why: impl Into<String>) -> Rejection {
    Rejection::new(400, reason, code, why)
}

/// Chooses the body rule for a routed request from its interaction and declared media type.
/// Refuses unsupported media types before any body is read.
pub(super) fn rule_for(
    r: &RoutedRequest,
    content_type: Option<&str>,
) -> Result<BodyRule, Rejection> {
    use Interaction as I;
    let m = media(content_type)?;
    let json_only = |rule: BodyRule| -> Result<BodyRule, Rejection> {
        match m {
            Some(Media::FhirJson) => Ok(rule),
            Some(Media::Xml) => Err(unsupported(
                "this gateway accepts FHIR JSON only (application/fhir+json)",
            )),
            None => Err(unsupported(
                "a FHIR body needs Content-Type: application/fhir+json",
            )),
            Some(_) => Err(unsupported("expected Content-Type: application/fhir+json")),
        }
    };
    Ok(match r.interaction {
        I::Create | I::ConditionalCreate | I::Update | I::ConditionalUpdate => {
            let resource_type = r.resource_type.unwrap_or("Resource");
            // Binary may carry its content raw, in its own media type.
            if resource_type == "Binary" && matches!(m, Some(Media::Other) | Some(Media::Xml)) {
                BodyRule::Opaque
            } else {
                let id = if r.interaction == I::Update {
                    r.id.clone()
                } else {
                    None
                };
                json_only(BodyRule::Resource { resource_type, id })?
            }
        }
        I::Batch | I::Transaction => json_only(BodyRule::Bundle)?,
        I::Patch | I::ConditionalPatch => match m {
            Some(Media::JsonPatch) => BodyRule::Patch { json_patch: true },
            _ => match json_only(BodyRule::Patch { json_patch: false }) {
                Ok(rule) => rule,
                Err(_) => {
                    return Err(unsupported(
                        "patch needs application/json-patch+json or application/fhir+json",
                    ))
                }
            },
        },
        I::SearchType | I::SearchSystem if content_type.is_some() => match m {
            Some(Media::Form) => BodyRule::Form,
            _ => {
                return Err(unsupported(
                    "POST _search needs application/x-www-form-urlencoded",
                ))
            }
        },
        I::OperationSystem
        | I::OperationType
        | I::OperationInstance
        | I::CdsService
        | I::CdsFeedback => match m {
            None => BodyRule::Json,
            _ => json_only(BodyRule::Json)?,
        },
        _ => BodyRule::None,
    })
}

/// Refuses a body where none belongs, and a missing one where one is required.
pub(super) fn check_presence(r: &RoutedRequest, has_body: bool) -> Result<(), Rejection> {
    let required = matches!(
        r.body,
        BodyRule::Resource { .. } | BodyRule::Bundle | BodyRule::Patch { .. }
    );
    if has_body && r.body == BodyRule::None {
        return Err(invalid_body(
            "body-not-allowed",
            IssueType::Invalid,
            format!("{} takes no request body", r.interaction.name()),
        ));
    }
    if !has_body && required {
        return Err(invalid_body(
            "body-required",
            IssueType::Required,
            format!("{} needs a request body", r.interaction.name()),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ResourceHead {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
}

#[derive(Deserialize)]
struct BundleHead {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    bundle_type: Option<String>,
    /// Only its shape: R4 `Bundle.entry` is an array of objects (absent for an empty Bundle);
    /// an object or a scalar here would let an entry escape every per-entry decision.
    #[serde(default)]
    entry: Option<Vec<std::collections::BTreeMap<String, serde::de::IgnoredAny>>>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the JSON position and the expectation, never body content.
        invalid_body(
            "invalid-json",
            IssueType::Structure,
            format!("request body is not valid FHIR JSON: {}", position_only(&e)),
        )
    })
}

/// serde_json messages may quote parts of the input (`unknown variant "..."`); keep only the
/// category and position so no body content is echoed.
fn position_only(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// Checks a whole, buffered body against the request's rule, completing the request
/// (batch vs transaction, form parameters) where the body decides.
pub(super) fn check(
    r: &mut RoutedRequest,
    body: &[u8],
    max_params: usize,
) -> Result<(), Rejection> {
    match r.body.clone() {
        BodyRule::None if !body.is_empty() => Err(invalid_body(
            "body-not-allowed",
            IssueType::Invalid,
            format!("{} takes no request body", r.interaction.name()),
        )),
        BodyRule::None | BodyRule::Opaque => Ok(()),
        _ if body.is_empty() && matches!(r.body, BodyRule::Json | BodyRule::Form) => Ok(()),
        _ if body.is_empty() => Err(invalid_body(
            "body-required",
            IssueType::Required,
            format!("{} needs a request body", r.interaction.name()),
        )),
        BodyRule::Resource { resource_type, id } => {
            let head: ResourceHead = parse(body)?;
            match head.resource_type.as_deref() {
                None => Err(invalid_body(
                    "resource-type-missing",
                    IssueType::Required,
                    "body has no resourceType",
                )),
                Some(t) if t != resource_type => Err(invalid_body(
                    "resource-type-mismatch",
                    IssueType::Invalid,
                    format!("body resourceType does not match the path's `{resource_type}`"),
                )),
                Some(_) => match (&id, &head.id) {
                    (Some(_), None) => Err(invalid_body(
                        "id-missing",
                        IssueType::Required,
                        "update body must carry the id named in the path",
                    )),
                    (Some(want), Some(got)) if want != got => Err(invalid_body(
                        "id-mismatch",
                        IssueType::Invalid,
                        "body id does not match the id in the path",
                    )),
                    _ => Ok(()),
                },
            }
        }
        BodyRule::Bundle => {
            let head: BundleHead = parse(body)?;
            if head.resource_type.as_deref() != Some("Bundle") {
                return Err(invalid_body(
                    "resource-type-mismatch",
                    IssueType::Invalid,
                    "POST to the base needs a Bundle",
                ));
            }
            let (interaction, kind) = match head.bundle_type.as_deref() {
                Some("batch") => (Interaction::Batch, "batch"),
                Some("transaction") => (Interaction::Transaction, "transaction"),
                _ => {
                    return Err(invalid_body(
                        "invalid-bundle-type",
                        IssueType::Invalid,
                        "Bundle.type must be batch or transaction",
                    ))
                }
            };
            r.interaction = interaction;
            r.bundle_type = Some(kind);
            r.bundle_entries = Some(head.entry.as_ref().map_or(0, Vec::len));
            Ok(())
        }
        BodyRule::Patch { json_patch: true } => {
            let ops: serde_json::Value = parse(body)?;
            if ops.is_array() {
                Ok(())
            } else {
                Err(invalid_body(
                    "invalid-patch",
                    IssueType::Invalid,
                    "a JSON Patch body must be an array of operations",
                ))
            }
        }
        BodyRule::Patch { json_patch: false } => {
            let head: ResourceHead = parse(body)?;
            if head.resource_type.as_deref() == Some("Parameters") {
                Ok(())
            } else {
                Err(invalid_body(
                    "invalid-patch",
                    IssueType::Invalid,
                    "a FHIRPath Patch body must be a Parameters resource",
                ))
            }
        }
        BodyRule::Json => parse::<serde::de::IgnoredAny>(body).map(|_| ()),
        BodyRule::Form => {
            let text = std::str::from_utf8(body).map_err(|_| refuse::bad_escape("form body"))?;
            let remaining = max_params.saturating_sub(r.params.len());
            let extra = parse_query(text.trim_end_matches(['\r', '\n']), remaining).map_err(
                |e| match e {
                    QueryError::Uri(_) => refuse::bad_escape("form body"),
                    QueryError::BadName => {
                        refuse::invalid_query("invalid parameter name in form body")
                    }
                    QueryError::TooMany => refuse::too_many_params(max_params),
                },
            )?;
            r.params.extend(extra);
            super::check_counts(&r.params)?;
            Ok(())
        }
    }
}
